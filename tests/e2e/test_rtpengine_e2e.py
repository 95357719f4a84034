"""Calls relayed through a real rtpengine: SDP rewritten both ways, RTP through it, deleted at BYE.

rtpengine (Debian's rtpengine-daemon) runs in userspace on 127.0.0.1 with
a window of media ports of its own; sipd is told ``rtpengine =
udp:127.0.0.1:<its ng port>``. bob is a sipp UAS that echoes the RTP it
gets (``-rtp_echo``); alice is a sipp UAC that streams PCMU for three
seconds after the answer, then hangs up. rtpengine's own ng ``list`` and
``query`` say which calls it holds and how many packets it got from each
side. rtpengine, sipd and every sipp are killed at the end of each test,
whatever happened.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests import TESTS
from tests.rtpengine import Rtpengine, rtpengine_binary, running_rtpengine
from tests.sipclient import Daemon, free_port, listening, running_sipd, stop_process, wait_for
from tests.unixusers import FakeUnix, UserSpec, fake_unix, give_passwords

REALM = "test.invalid"
SIPP = TESTS / "sipp"
#: How long alice talks, milliseconds (sipp's -d).
TALK_MS = 3000

pytestmark = [pytest.mark.sipp, pytest.mark.slow]


@contextmanager
def two_phone_users() -> Iterator[FakeUnix]:
    """alice and bob in the SIP group, once sipp and rtpengine are known to be here."""
    if shutil.which("sipp") is None:
        pytest.fail("sipp is not installed: run 'make setup' (Debian package sip-tester)")
    if rtpengine_binary() is None:
        pytest.skip("RTPENGINE IS NOT INSTALLED: the media relay is untested here; install "
                    "Debian's rtpengine-daemon (make setup does)")
    with fake_unix((UserSpec("alice", groups=("sip",)), UserSpec("bob", groups=("sip",)))) as u:
        yield u


@pytest.fixture(scope="module")
def unix() -> Iterator[FakeUnix]:
    with two_phone_users() as u:
        yield u


@pytest.fixture(scope="module")
def passwords(unix: FakeUnix) -> dict[str, str]:
    return give_passwords(unix, REALM, ("alice", "bob"))


@pytest.fixture
def engine(tmp_path: Path, unix: FakeUnix) -> Iterator[Rtpengine]:
    with running_rtpengine(tmp_path) as e:
        yield e


class Phones:
    """alice and bob as sipp processes around one sipd."""

    def __init__(self, daemon: Daemon, passwords: dict[str, str], tmp: Path) -> None:
        self.daemon = daemon
        self.passwords = passwords
        self.tmp = tmp
        self.procs: list[subprocess.Popen[str]] = []
        # One second of PCMU for sipp's rtp_stream to loop over.
        (tmp / "audio.ulaw").write_bytes(bytes((i * 7) & 0x7F | 0x80 for i in range(8000)))

    def _inf(self, *fields: str) -> Path:
        path = self.tmp / f"inf-{secrets.token_hex(3)}.inf"
        path.write_text("SEQUENTIAL\n" + ";".join(fields) + ";\n")
        return path

    def _auth(self, user: str) -> str:
        return f"[authentication username={user} password={self.passwords[user]}]"

    def _start(self, args: list[str]) -> subprocess.Popen[str]:
        proc = subprocess.Popen(["sipp", *args], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, cwd=self.tmp,
                                stdin=subprocess.DEVNULL)
        self.procs.append(proc)
        return proc

    def bob(self, contact: str = "127.0.0.1") -> tuple[int, int]:
        """bob registered with his contact at ``contact``, answering one call and echoing
        its RTP: (SIP port, media port). Another address than 127.0.0.1, where his
        REGISTER comes from, puts him behind a NAT."""
        port, media = free_port(), free_port()
        scenario = self.tmp / "register.xml"
        scenario.write_text((SIPP / "register.xml").read_text().replace(
            "Contact: <sip:[field0]@[local_ip]:", f"Contact: <sip:[field0]@{contact}:"))
        r = subprocess.run(
            ["sipp", f"127.0.0.1:{self.daemon.port}", "-sf", str(scenario),
             "-t", "u1", "-i", "127.0.0.1", "-p", str(port),
             "-inf", str(self._inf("bob", self._auth("bob"))), "-key", "domain", REALM,
             "-key", "expires", "600", "-m", "1", "-timeout", "10s", "-timeout_error",
             "-recv_timeout", "3000"],
            capture_output=True, text=True, timeout=30, cwd=self.tmp, stdin=subprocess.DEVNULL)
        assert r.returncode == 0, f"register bob: {r.stdout[-1500:]}"
        proc = self._start(["-sf", str(SIPP / "uas_answer.xml"), "-t", "u1", "-i", "127.0.0.1",
                            "-p", str(port), "-mi", "127.0.0.1", "-mp", str(media), "-rtp_echo",
                            "-m", "1", "-timeout", "40s", "-timeout_error",
                            "-trace_msg", "-message_file", str(self.tmp / "bob.msg")])
        wait_for(lambda: proc.poll() is not None or listening(port), "bob's sipp to listen")
        return port, media

    def alice(self, address: str = "127.0.0.1") -> tuple[subprocess.Popen[str], int]:
        """alice calling bob, her Via and Contact naming ``address``: (sipp, media port)."""
        media = free_port()
        inf = self._inf("bob", "alice", self._auth("alice"), REALM)
        proc = self._start([f"127.0.0.1:{self.daemon.port}", "-sf", str(SIPP / "uac_rtp.xml"),
                            "-t", "u1", "-i", "127.0.0.1", "-p", str(free_port()),
                            "-mi", "127.0.0.1", "-mp", str(media), "-inf", str(inf),
                            "-key", "domain", REALM, "-key", "address", address,
                            "-d", str(TALK_MS), "-m", "1", "-timeout", "40s",
                            "-timeout_error", "-recv_timeout", "30000",
                            "-trace_msg", "-message_file", str(self.tmp / "alice.msg"),
                            "-trace_err", "-error_file", str(self.tmp / "alice.err")])
        return proc, media

    def finished(self, proc: subprocess.Popen[str], what: str) -> None:
        try:
            code = proc.wait(TALK_MS / 1000 + 30)
        except subprocess.TimeoutExpired:
            code = -1
        out = proc.stdout.read() if proc.stdout is not None and code != -1 else ""
        assert code == 0, (f"{what}: sipp exit {code}\n{out[-2500:]}\n"
                           f"sipd log:\n{self.daemon.log[-3000:]}")

    def received(self, who: str, first_line: str) -> str:
        """The SDP of the first message ``who`` received that starts with ``first_line``."""
        path = self.tmp / f"{who}.msg"
        text = path.read_text(errors="replace") if path.exists() else ""
        for block in re.split(r"-{5,}.*\n", text):
            if "message received" not in block:
                continue
            start = block.find(first_line)
            if start >= 0:
                message = block[start:]
                return message.partition("\n\n")[2] or message.partition("\r\n\r\n")[2]
        raise AssertionError(f"{who} received no {first_line!r}:\n{text[-3000:]}")

    def stop_all(self) -> None:
        for proc in self.procs:
            stop_process(proc)
            if proc.stdout is not None:
                proc.stdout.close()


def media_port(sdp: str) -> int:
    found = re.search(r"^m=audio (\d+) ", sdp, re.M)
    assert found, sdp
    return int(found.group(1))


def connection(sdp: str) -> str:
    found = re.search(r"^c=IN IP[46] (\S+)", sdp, re.M)
    assert found, sdp
    return found.group(1)


@contextmanager
def phones(tmp: Path, unix: FakeUnix, passwords: dict[str, str], config: str,
           mnt: Path | None = None) -> Iterator[Phones]:
    conf = tmp / "sipd.toml"
    conf.write_text(config + (f'mount = "{mnt}"\n' if mnt is not None else ""))
    try:
        with running_sipd(tmp, "-v", "-c", str(conf), unix=unix,
                          mount=mnt is not None) as daemon:
            p = Phones(daemon, passwords, tmp)
            try:
                yield p
            finally:
                p.stop_all()
            assert daemon.alive(), daemon.log
            assert "Traceback" not in daemon.log, daemon.log
    finally:
        for name in ("alice", "bob"):
            for leftover in ("usrloc", "acc"):
                (unix[name].home / ".sr" / leftover).unlink(missing_ok=True)


def relay_config(engine: Rtpengine, mode: str) -> str:
    return f'rtpengine = "{engine.address}"\nmedia_relay = "{mode}"\n'


def relayed_call(p: Phones, engine: Rtpengine, address: str = "127.0.0.1",
                 contact: str = "127.0.0.1") -> None:
    """A call alice to bob that must go through ``engine``, checked all the way."""
    _, bob_media = p.bob(contact)
    alice, alice_media = p.alice(address)
    wait_for(lambda: alice.poll() is not None or engine.calls(), "rtpengine to hold the call")
    calls = engine.calls()
    assert len(calls) == 1, calls
    call_id = calls[0]

    def both_ways() -> bool:
        counts = engine.packets(call_id)
        return alice.poll() is not None or (len(counts) == 2 and min(counts.values()) > 0)

    # alice's RTP reaches rtpengine, bob's echo of it reaches rtpengine:
    # media flows through it both ways.
    wait_for(both_ways, "RTP through rtpengine both ways", timeout=TALK_MS / 1000)
    counts = engine.packets(call_id)
    assert len(counts) == 2 and min(counts.values()) > 0, counts
    p.finished(alice, "alice")
    # The BYE ended the call: its session is gone from rtpengine.
    wait_for(lambda: not engine.calls(), "rtpengine to forget the call after BYE")

    offer = p.received("bob", "INVITE sip:")
    answer = p.received("alice", "SIP/2.0 200 OK")
    # Each side sees rtpengine's port, never the other phone's.
    assert media_port(offer) in engine.ports and media_port(offer) != alice_media, offer
    assert media_port(answer) in engine.ports and media_port(answer) != bob_media, answer
    assert connection(offer) == connection(answer) == "127.0.0.1"
    assert "a=ice-" not in offer


def test_always_relays_the_call_both_ways_and_deletes_it_at_bye(
        tmp_path: Path, unix: FakeUnix, passwords: dict[str, str], engine: Rtpengine) -> None:
    with phones(tmp_path, unix, passwords, relay_config(engine, "always")) as p:
        relayed_call(p, engine)
        assert "rtpengine at " + engine.address + " answers" in p.daemon.log
    assert "Received command 'delete'" in engine.log


@pytest.mark.skipif(not os.path.exists("/dev/fuse") or os.geteuid() != 0,
                    reason="needs /dev/fuse and root to mount the state filesystem")
def test_the_metrics_count_what_was_asked_and_promtool_passes_them(
        tmp_path: Path, unix: FakeUnix, passwords: dict[str, str], engine: Rtpengine,
        mnt: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is not installed: run 'make setup' (Debian package prometheus)")
    with phones(tmp_path, unix, passwords, relay_config(engine, "always"), mnt) as p:
        wait_for(lambda: (mnt / "metrics").exists(), "the mount")
        relayed_call(p, engine)
        text = (mnt / "metrics").read_text()
        # The delete went out with the BYE; its reply may still be on its way.
        wait_for(lambda: 'sipd_media_relay_requests_total{command="delete"} 1' in
                 (mnt / "metrics").read_text(), "the delete in the metrics")
    r = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                       text=True, timeout=30)
    assert (r.returncode, r.stdout + r.stderr) == (0, ""), text
    lines = set(text.splitlines())
    for line in ('sipd_media_relay_requests_total{command="offer"} 1',
                 'sipd_media_relay_requests_total{command="answer"} 1',
                 'sipd_media_relay_failures_total{command="offer"} 0',
                 'sipd_media_relay_failures_total{command="answer"} 0',
                 "sipd_media_relay_sessions 0"):
        assert line in lines, text


def test_nat_relays_a_caller_behind_a_nat(
        tmp_path: Path, unix: FakeUnix, passwords: dict[str, str], engine: Rtpengine) -> None:
    # alice's Via names 127.0.0.5 while she sends from 127.0.0.1: a NAT was on the way.
    with phones(tmp_path, unix, passwords, relay_config(engine, "nat")) as p:
        relayed_call(p, engine, address="127.0.0.5")
    # The offer told rtpengine to send her media where her SIP came from.
    assert re.search(r"Dump for .offer.*SIP-source-address", engine.log), engine.log[-3000:]


def test_nat_relays_a_callee_behind_a_nat(
        tmp_path: Path, unix: FakeUnix, passwords: dict[str, str], engine: Rtpengine) -> None:
    # bob registers a contact at 127.0.0.6 from 127.0.0.1: a NAT was on the way.
    with phones(tmp_path, unix, passwords, relay_config(engine, "nat")) as p:
        relayed_call(p, engine, contact="127.0.0.6")
    # The answer told rtpengine to send his media where his SIP came from.
    assert re.search(r"Dump for .answer.*SIP-source-address", engine.log), engine.log[-3000:]
    assert not re.search(r"Dump for .offer.*SIP-source-address", engine.log)


def test_nat_leaves_a_call_without_nat_alone(
        tmp_path: Path, unix: FakeUnix, passwords: dict[str, str], engine: Rtpengine) -> None:
    with phones(tmp_path, unix, passwords, relay_config(engine, "nat")) as p:
        _, bob_media = p.bob()
        alice, alice_media = p.alice()
        p.finished(alice, "alice")
        offer = p.received("bob", "INVITE sip:")
        answer = p.received("alice", "SIP/2.0 200 OK")
    assert media_port(offer) == alice_media, offer
    assert media_port(answer) == bob_media, answer
    assert "Received command 'offer'" not in engine.log


def test_without_rtpengine_the_call_goes_on_unrelayed(
        tmp_path: Path, unix: FakeUnix, passwords: dict[str, str], engine: Rtpengine) -> None:
    address = engine.address
    stop_process(engine.proc)
    with phones(tmp_path, unix, passwords, f'rtpengine = "{address}"\n'
                f'media_relay = "always"\n') as p:
        _, bob_media = p.bob()
        alice, alice_media = p.alice()
        p.finished(alice, "alice")
        offer = p.received("bob", "INVITE sip:")
        answer = p.received("alice", "SIP/2.0 200 OK")
        log = p.daemon.log
    assert media_port(offer) == alice_media, offer
    assert media_port(answer) == bob_media, answer
    assert f"rtpengine at {address} does not answer" in log, log
    failed = [line for line in log.splitlines()
              if f"rtpengine at {address} failed the offer" in line]
    assert len(failed) == 1 and "the call goes on unrelayed" in failed[0], log

