"""Two phones behind two real NATs talk, audio both ways, through rtpengine.

Two NATs of tests/netns.py side by side: alice's phone in LAN A
(192.168.213.2), bob's in LAN B (192.168.214.2), each LAN behind an
iptables MASQUERADE router of its own. sipd listens on this host's
address on A's side, which B reaches through its router's default route,
with its built-in defaults plus ``rtpengine`` (``media_relay`` stays
``nat``); a userspace rtpengine has its media ports on that same address.
Both phones are sipp processes inside their LANs (``ip netns exec``), with
their private addresses in Contact, Via and SDP, registered with digest
passwords. bob calls alice; each streams PCMU once the call is up (a NAT
lets in only what its phone opened, so both send, as phones do) until bob
hangs up.

What must hold: each phone sees rtpengine's address and port in the
other's SDP, never the other phone's private or public address; rtpengine
gets RTP from both sides (its ng ``query``); RTP from rtpengine gets
through each NAT to its phone's sipp (iptables rules inside each LAN count
what arrived, and what no socket took); the BYE crosses both NATs;
rtpengine forgets the call after it (its ng ``list``). Every process is
stopped and both NATs are gone afterwards, namespaces, interfaces and
rules (the host's nat table as it was), also when the test fails.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from tests import netns
from tests.e2e.test_rtpengine_e2e import (
    REALM,
    SIPP,
    Phones,
    connection,
    media_port,
    two_phone_users,
)
from tests.rtpengine import Rtpengine, running_rtpengine
from tests.sipclient import Daemon, free_port, running_sipd, wait_for
from tests.unixusers import FakeUnix, give_passwords

pytestmark = [
    pytest.mark.sipp,
    pytest.mark.slow,
    pytest.mark.skipif(netns.missing() is not None, reason=str(netns.missing())),
]

#: How long bob talks, milliseconds (sipp's -d).
TALK_MS = 2500
#: Where the phones listen for SIP and RTP inside their LANs.
SIP_PORT = 5060
MEDIA_PORT = 7078


@pytest.fixture(scope="module")
def unix() -> Iterator[FakeUnix]:
    with two_phone_users() as u:
        yield u


@pytest.fixture(scope="module")
def passwords(unix: FakeUnix) -> dict[str, str]:
    return give_passwords(unix, REALM, ("alice", "bob"))


@pytest.fixture
def nats() -> Iterator[tuple[netns.Nat, netns.Nat]]:
    """NAT A and NAT B, up at once; afterwards nothing of either is left."""
    tags: list[str] = []
    host_nat = host_nat_table()
    with netns.masquerade(lan=213) as a, netns.masquerade(lan=214) as b:
        tags += [a.tag, b.tag]
        assert a.host_address != b.host_address
        yield a, b
    assert netns.leftovers(tags) == []
    # The rules were the routers' own: the host's nat table is as it was.
    assert host_nat_table() == host_nat


def host_nat_table() -> str:
    return subprocess.run(["iptables", "-t", "nat", "-S"], check=True, capture_output=True,
                          text=True, timeout=10).stdout


def bound_in(proc: subprocess.Popen[str], port: int) -> bool:
    """Whether a UDP socket is bound to ``port`` in ``proc``'s network namespace."""
    try:
        rows = Path(f"/proc/{proc.pid}/net/udp").read_text().splitlines()[1:]
    except OSError:
        return False
    return any(int(row.split()[1].rsplit(":", 1)[1], 16) == port for row in rows)


class NattedPhones(Phones):
    """sipp phones inside the LANs of NATs, talking to sipd at ``server``."""

    def __init__(self, daemon: Daemon, passwords: dict[str, str], tmp: Path,
                 server: str) -> None:
        super().__init__(daemon, passwords, tmp)
        self.target = f"{server}:{daemon.port}"

    def _sipp(self, nat: netns.Nat, args: list[str], who: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            nat.in_lan("sipp", *args, "-t", "u1", "-i", nat.phone_address,
                       "-p", str(SIP_PORT), "-trace_msg", "-message_file",
                       str(self.tmp / f"{who}.msg"), "-trace_err", "-error_file",
                       str(self.tmp / f"{who}.err")),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=self.tmp,
            stdin=subprocess.DEVNULL)
        self.procs.append(proc)
        return proc

    def received_message(self, who: str, first_line: str) -> str:
        """The first message ``who`` received that starts with ``first_line``."""
        path = self.tmp / f"{who}.msg"
        text = path.read_text(errors="replace") if path.exists() else ""
        for block in re.split(r"-{5,}.*\n", text):
            start = block.find(first_line)
            if "message received" in block and start >= 0:
                return block[start:]
        raise AssertionError(f"{who} received no {first_line!r}:\n{text[-3000:]}")

    def register(self, nat: netns.Nat, user: str) -> None:
        """``user``'s phone registers its private Contact from inside ``nat``."""
        proc = self._sipp(nat, [self.target, "-sf", str(SIPP / "register.xml"),
                                "-inf", str(self._inf(user, self._auth(user))),
                                "-key", "domain", REALM, "-key", "expires", "600",
                                "-m", "1", "-timeout", "10s", "-timeout_error",
                                "-recv_timeout", "3000", "-nostdin"], f"register-{user}")
        self.finished(proc, f"register {user}")

    def callee(self, nat: netns.Nat, user: str) -> subprocess.Popen[str]:
        """``user``'s phone answering a call and streaming until the BYE; no -m,
        as a keep-alive probe would count as a call."""
        proc = self._sipp(nat, ["-sf", str(SIPP / "uas_rtp.xml"), "-mi", nat.phone_address,
                                "-mp", str(MEDIA_PORT), "-timeout", "40s", "-nostdin"], user)
        wait_for(lambda: proc.poll() is not None or bound_in(proc, SIP_PORT),
                 f"{user}'s sipp to listen")
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        return proc

    def caller(self, nat: netns.Nat, user: str, callee: str) -> subprocess.Popen[str]:
        """``user``'s phone calling ``callee``, streaming for TALK_MS, then hanging up."""
        inf = self._inf(callee, user, self._auth(user), REALM)
        return self._sipp(nat, [self.target, "-sf", str(SIPP / "uac_rtp.xml"),
                                "-oocsf", str(SIPP / "ooc_options.xml"),
                                "-mi", nat.phone_address, "-mp", str(MEDIA_PORT),
                                "-inf", str(inf), "-key", "domain", REALM,
                                "-key", "address", nat.phone_address, "-d", str(TALK_MS),
                                "-m", "1", "-timeout", "40s", "-timeout_error",
                                "-recv_timeout", "30000", "-nostdin"], user)


def test_two_phones_behind_two_nats_talk_both_ways_through_rtpengine(
        tmp_path: Path, unix: FakeUnix, passwords: dict[str, str],
        nats: tuple[netns.Nat, netns.Nat]) -> None:
    a, b = nats
    server = a.host_address
    conf = tmp_path / "sipd.toml"
    try:
        with ExitStack() as stack:
            engine: Rtpengine = stack.enter_context(running_rtpengine(tmp_path, server))
            conf.write_text(f'rtpengine = "{engine.address}"\n')
            port = free_port()
            daemon = stack.enter_context(running_sipd(
                tmp_path, "-v", "-c", str(conf), "-l", f"udp:{server}:{port}", unix=unix,
                port=port))
            p = NattedPhones(daemon, passwords, tmp_path, server)
            stack.callback(p.stop_all)
            p.register(a, "alice")
            p.register(b, "bob")
            for nat in (a, b):
                nat.count_arrivals(engine.interface, engine.ports)
            callee = p.callee(a, "alice")
            caller = p.caller(b, "bob", "alice")

            wait_for(lambda: caller.poll() is not None or engine.calls(),
                     "rtpengine to hold the call")
            calls = engine.calls()
            assert len(calls) == 1, (calls, daemon.log[-3000:])
            call_id = calls[0]

            def both_ways() -> bool:
                counts = engine.packets(call_id)
                return caller.poll() is not None or (
                    len(counts) == 2 and min(counts.values()) > 0
                    and a.arrivals() > 0 and b.arrivals() > 0)

            # Each phone's RTP reaches rtpengine, and rtpengine's gets through
            # each NAT to its phone: audio both ways.
            wait_for(both_ways, "RTP through rtpengine and both NATs both ways",
                     timeout=TALK_MS / 1000)
            counts = engine.packets(call_id)
            assert len(counts) == 2 and min(counts.values()) > 0, counts
            assert a.arrivals() > 0 and b.arrivals() > 0, (a.arrivals(), b.arrivals())
            # And each packet that got through a NAT found its phone's sipp
            # listening: none was refused with an ICMP port unreachable.
            assert (a.refusals(), b.refusals()) == (0, 0)
            # bob hangs up: his BYE crosses NAT B, then NAT A to alice, and her
            # 200 comes back the same way (sipp exits 0 only then).
            p.finished(caller, "bob's call")
            wait_for(lambda: not engine.calls(), "rtpengine to forget the call after BYE")
            assert callee.poll() is None, "alice's phone left before the end"

            offer = p.received("alice", "INVITE sip:")
            answer = p.received("bob", "SIP/2.0 200 OK")
            bye = p.received_message("alice", "BYE sip:")
            assert daemon.alive()
            log = daemon.log
        # alice sees rtpengine where bob's media is, bob where alice's is.
        for sdp, other in ((offer, b), (answer, a)):
            assert connection(sdp) == engine.interface, sdp
            assert media_port(sdp) in engine.ports, sdp
            assert other.phone_address not in sdp and other.public_address not in sdp, sdp
            assert "a=ice-" not in sdp, sdp
            c_lines = re.findall(r"^c=.*$", sdp, re.M)
            assert c_lines and all(engine.interface in line for line in c_lines), sdp
        # The BYE reached alice's private Contact, through NAT A.
        assert bye.startswith(f"BYE sip:{a.phone_address}:{SIP_PORT}"), bye
        # Both sides were seen behind their NATs: rtpengine was told to send
        # each one's media where its SIP came from, the offer bob's NAT B, the
        # answer alice's NAT A, until it hears their RTP.
        dumps = engine.log
        for command, nat in (("offer", b), ("answer", a)):
            dump = re.search(rf"Dump for '{command}'.*", dumps)
            assert dump is not None, dumps[-3000:]
            assert '"SIP-source-address"' in dump[0], dump[0]
            assert f'"received-from": [ "IP4", "{nat.public_address}" ]' in dump[0], dump[0]
        assert "Received command 'delete'" in dumps
        assert "Traceback" not in log, log
    finally:
        for name in ("alice", "bob"):
            for leftover in ("usrloc", "acc"):
                (unix[name].home / ".sr" / leftover).unlink(missing_ok=True)
