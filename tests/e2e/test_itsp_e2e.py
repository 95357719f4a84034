"""The ITSP recipes end to end: sipp plays the phones, the PBX and the gateway.

A real sipd on 127.0.0.1 with an alias map and a trunks file; the trusted
PBX speaks from 127.0.0.2 (any 127/8 address is the host's own).
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.test_proxy_e2e import (  # noqa: F401  (fixtures)
    REALM,
    SIPP,
    Calls,
    _calls,
    ok,
    passwords,
    unix,
    wait_until_listening,
)
from tests.sipclient import free_port, wait_for
from tests.unixusers import FakeUnix

pytestmark = pytest.mark.sipp

PBX_IP = "127.0.0.2"
DID = "+441727238471"


@pytest.fixture
def itsp(tmp_path: Path, unix: FakeUnix, passwords: dict[str, str]) -> Iterator[Calls]:  # noqa: F811
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "aliases").write_text(f"1003: alice\n01727221221: alice\n{DID}: carol\n")
    (etc / "trunks").write_text(f"carol: {PBX_IP}/32\n")
    for name in ("aliases", "trunks"):
        (etc / name).chmod(0o644)
    config = f'aliases = "{etc / "aliases"}"\ntrunks = "{etc / "trunks"}"\n'
    with _calls(tmp_path, unix, passwords, config) as calls:
        yield calls


def trusted_call(calls: Calls, callee: str, caller: str, extra: str = "X-Note: none",
                 source: str = PBX_IP, from_domain: str = REALM) -> subprocess.CompletedProcess[str]:
    """A call with no credentials at all (uac_trusted.xml), as a PBX makes it."""
    inf = calls.tmp / f"trusted-{secrets.token_hex(3)}.inf"
    inf.write_text(f"SEQUENTIAL\n{callee};{caller};{extra};{REALM};\n")
    return subprocess.run(
        ["sipp", f"127.0.0.1:{calls.daemon.port}", "-sf", str(SIPP / "uac_trusted.xml"),
         "-t", "u1", "-i", source, "-p", str(free_port()), "-inf", str(inf),
         "-key", "domain", from_domain, "-m", "1", "-timeout", "20s", "-timeout_error",
         "-trace_err", "-error_file", str(calls.tmp / "trusted.err"),
         "-recv_timeout", "10000"],
        capture_output=True, text=True, timeout=40, cwd=calls.tmp, stdin=subprocess.DEVNULL,
    )


def invite_seen(calls: Calls, port: int) -> str:
    """The INVITE the UAS on ``port`` received, start line and headers."""

    def found() -> re.Match[str] | None:
        return re.search(r"(INVITE sip:.*?)\r?\n\r?\n", calls.received(port), re.S)

    wait_for(found, f"the INVITE in the trace of the UAS on port {port}", timeout=5)
    m = found()
    assert m is not None
    return m.group(1)


def test_a_multi_line_phone_registers_two_numbers_with_one_auth_id(itsp: Calls) -> None:
    line1 = itsp.uas("uas_answer.xml", "alice", aor="1003")
    itsp.register("alice", free_port(), aor="01727221221")
    usrloc = (itsp.unix["alice"].home / ".sr" / "usrloc").read_text()
    assert "aor=1003" in usrloc and "aor=01727221221" in usrloc
    # A call to line 1 rings line 1, with the number it was registered as.
    ok(itsp.call("uac_answer.xml", "1003", caller="bob"), "caller", itsp)
    assert itsp.finished(line1) == 0
    assert invite_seen(itsp, itsp.uas_ports[0]).startswith("INVITE sip:1003@127.0.0.1:")


def test_an_address_the_phone_does_not_own_is_refused(itsp: Calls) -> None:
    # register.xml expects a 200; sipd answers 403, so sipp fails.
    with pytest.raises(AssertionError, match="register alice"):
        itsp.register("alice", free_port(), aor=DID)
    assert "Not allowed to register this address" in itsp.daemon.log or \
        "may not register" in itsp.daemon.log
    usrloc = itsp.unix["alice"].home / ".sr" / "usrloc"
    assert not usrloc.exists() or DID not in usrloc.read_text()


def test_a_did_call_reaches_the_trunk_with_the_did_in_the_request_uri(itsp: Calls) -> None:
    pbx = itsp.uas("uas_answer.xml", "carol")  # the PBX registers once, as its user
    ok(itsp.call("uac_answer.xml", DID, caller="alice"), "caller", itsp)
    assert itsp.finished(pbx) == 0
    invite = invite_seen(itsp, itsp.uas_ports[0])
    assert invite.startswith(f"INVITE sip:{DID}@127.0.0.1:"), invite
    assert f"To: <sip:{DID}@{REALM}>" in invite
    # The caller is asserted to the callee.
    assert f"P-Asserted-Identity: <sip:alice@{REALM}>" in invite


def test_a_trusted_trunk_calls_without_auth_and_a_spoofed_source_is_challenged(
    itsp: Calls,
) -> None:
    bob = itsp.uas("uas_answer.xml", "bob")
    ok(trusted_call(itsp, "bob", DID), "trusted pbx", itsp)
    assert itsp.finished(bob) == 0
    invite = invite_seen(itsp, itsp.uas_ports[0])
    assert f"P-Asserted-Identity: <sip:{DID}@{REALM}>" in invite
    # The same call from any other address needs credentials.
    spoofed = trusted_call(itsp, "bob", DID, source="127.0.0.1")
    assert spoofed.returncode != 0
    assert "SIP/2.0 407 Proxy Authentication Required" in (itsp.tmp / "trusted.err").read_text()


def test_asserted_identity_follows_privacy_and_trust(itsp: Calls) -> None:
    bob = itsp.uas("uas_answer.xml", "bob")
    ok(trusted_call(itsp, "bob", DID, extra="Privacy: id"), "private call", itsp)
    assert itsp.finished(bob) == 0
    invite = invite_seen(itsp, itsp.uas_ports[0])
    assert "P-Asserted-Identity" not in invite  # hidden from the local callee
    assert "Privacy: id" in invite
    # A PAI from an untrusted source never reaches a phone.
    carol = itsp.uas("uas_answer.xml", "carol")
    ok(trusted_call(itsp, "carol", "zed", extra="P-Asserted-Identity: <sip:ceo@example.com>",
                    source="127.0.0.1", from_domain="example.com"), "untrusted", itsp)
    assert itsp.finished(carol) == 0
    assert "ceo@example.com" not in invite_seen(itsp, itsp.uas_ports[1])


@pytest.mark.skipif(not os.path.exists("/dev/fuse") or os.geteuid() != 0,
                    reason="needs /dev/fuse and root to mount the state filesystem")
def test_recipe_pbx_with_a_static_contact_trusted_by_address(
    tmp_path: Path, unix: FakeUnix, passwords: dict[str, str], mnt: Path  # noqa: F811
) -> None:
    """sipd-aliases(5): the static-contact and trusted-address recipes, as written."""
    etc = tmp_path / "etc"
    etc.mkdir()
    for name in ("aliases", "trunks"):
        (etc / name).write_text("")
        (etc / name).chmod(0o644)
    config = (f'aliases = "{etc / "aliases"}"\ntrunks = "{etc / "trunks"}"\n'
              f'mount = "{mnt}"\nmount_enabled = true\n')
    with _calls(tmp_path, unix, passwords, config, mount=True) as calls:
        wait_for(lambda: (mnt / "carol").exists(), "the mount")
        pbx_port = free_port()
        for cmd in (f"echo '{DID}: carol' >> {mnt}/aliases",
                    f"echo 'sip:pbx@{PBX_IP}:{pbx_port}' >> {mnt}/carol/contacts",
                    f"echo 'carol: {PBX_IP}/32' >> {etc}/trunks"):
            r = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True)
            assert r.returncode == 0, (cmd, r.stderr)
        assert "expires=never" in (mnt / "carol" / "contacts").read_text()
        # Inbound: the DID reaches the static contact with the number it was dialled as.
        pbx = subprocess.Popen(
            ["sipp", "-sf", str(SIPP / "uas_answer.xml"), "-t", "u1", "-i", PBX_IP,
             "-p", str(pbx_port), "-m", "1", "-timeout", "30s", "-timeout_error",
             "-trace_msg", "-message_file", str(tmp_path / f"uas-{pbx_port}.msg")],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path,
            stdin=subprocess.DEVNULL,
        )
        calls.procs.append(pbx)
        wait_until_listening(pbx, pbx_port)
        ok(calls.call("uac_answer.xml", DID, caller="alice"), "caller", calls)
        assert calls.finished(pbx) == 0
        assert invite_seen(calls, pbx_port).startswith(f"INVITE sip:{DID}@{PBX_IP}:{pbx_port}")
        # Outbound: the PBX calls bob from its address with no credentials,
        # once sipd has re-read the trunks file (within two seconds of the edit).
        bob = calls.uas("uas_answer.xml", "bob")
        wait_for(lambda: "trusted trunks: 1 network(s)" in calls.daemon.log,
                 "the edited trunks file in force")
        ok(trusted_call(calls, "bob", DID), "trusted pbx", calls)
        assert calls.finished(bob) == 0
