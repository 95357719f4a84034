"""An ITSP customer's real PBX: Kamailio registers its DID with uac_reg and relays calls.

The set-up of the issue this covers: Kamailio (tests/pbx/kamailio-uacreg.cfg)
at 127.0.0.2 registers the DID ``01727221221`` with the Auth-ID ``acme``
and is acme's trusted trunk, with ``present=any``; sipp plays the PBX's
extension (127.0.0.2), the callers and the carrier behind
``outbound_proxy`` (127.0.0.3). sipd runs with the German number plan.

- A call for the DID in E.164 or ``tel:`` form reaches the PBX, which
  hands it to its extension with the DID as the alias map writes it.
- An outside call the PBX forwards keeps its From; sipd asserts acme's
  number and adds Diversion toward the carrier.
- Locking acme's account stops both: the PBX's next REGISTER is refused,
  its relayed call is challenged.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests import TESTS
from tests.e2e.test_proxy_e2e import wait_until_listening
from tests.phone import REALM
from tests.sipclient import Daemon, free_port, running_sipd, stop_process, wait_for
from tests.unixusers import FakeUnix, UserSpec, fake_unix, give_passwords

pytestmark = [pytest.mark.sipp, pytest.mark.slow]

SIPP = TESTS / "sipp"
PBX_CONFIG = TESTS / "pbx" / "kamailio-uacreg.cfg"
PBX_IP = "127.0.0.2"
CARRIER_IP = "127.0.0.3"
DID = "01727221221"
USERS = (UserSpec("acme", groups=("sip",)), UserSpec("bob", groups=("sip",)))


@pytest.fixture(scope="module")
def unix() -> Iterator[FakeUnix]:
    for tool, package in (("kamailio", "kamailio"), ("sipp", "sip-tester")):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed: run 'make setup' (Debian package {package})")
    with fake_unix(USERS) as u:
        yield u


@pytest.fixture(scope="module")
def passwords(unix: FakeUnix) -> dict[str, str]:
    return give_passwords(unix, REALM, ("acme", "bob"))


@dataclass
class Site:
    daemon: Daemon
    unix: FakeUnix
    tmp: Path
    pbx: subprocess.Popen[str]
    pbx_port: int
    ext_port: int
    carrier_port: int
    procs: list[subprocess.Popen[str]]

    def pbx_log(self) -> str:
        path = self.tmp / "kamailio.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def uas(self, ip: str, port: int) -> subprocess.Popen[str]:
        """A sipp answering one call at ``ip:port``, its messages traced."""
        proc = subprocess.Popen(
            ["sipp", "-sf", str(SIPP / "uas_answer.xml"), "-t", "u1", "-i", ip, "-p", str(port),
             "-m", "1", "-timeout", "30s", "-timeout_error",
             "-trace_msg", "-message_file", str(self.tmp / f"uas-{port}.msg")],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=self.tmp,
            stdin=subprocess.DEVNULL,
        )
        self.procs.append(proc)
        wait_until_listening(proc, port)
        return proc

    def invite_at(self, port: int) -> str:
        """The INVITE the sipp on ``port`` received, start line and headers."""
        path = self.tmp / f"uas-{port}.msg"

        def found() -> re.Match[str] | None:
            text = path.read_text(errors="replace") if path.exists() else ""
            return re.search(r"(INVITE \S+ SIP/2\.0.*?)\r?\n\r?\n", text, re.S)

        wait_for(found, f"the INVITE at port {port}", timeout=10)
        m = found()
        assert m is not None
        return m.group(1)

    def call(self, to: tuple[str, int], ruri: str, from_uri: str,
             extra: str = "X-Note: none") -> subprocess.CompletedProcess[str]:
        """A call with whole URIs (uac_uri.xml) sent to ``to``."""
        return subprocess.run(
            ["sipp", f"{to[0]}:{to[1]}", "-sf", str(SIPP / "uac_uri.xml"), "-t", "u1",
             "-i", "127.0.0.1", "-p", str(free_port()), "-key", "ruri", ruri,
             "-key", "from_uri", from_uri, "-key", "extra", extra, "-m", "1",
             "-timeout", "20s", "-timeout_error", "-recv_timeout", "10000",
             "-trace_err", "-error_file", str(self.tmp / "uac.err")],
            capture_output=True, text=True, timeout=40, cwd=self.tmp, stdin=subprocess.DEVNULL,
        )

    def registered(self) -> bool:
        return f'registered: aor "{DID}"' in self.daemon.log


def start_pbx(tmp: Path, sipd_port: int, pbx_port: int, ext_port: int,
              password: str) -> subprocess.Popen[str]:
    db = tmp / "pbx-db"
    db.mkdir()
    (db / "version").write_text("table_name(string) table_version(int) \nuacreg:5\n")
    # Kamailio's db_text uacreg table (version 5), the empty columns nullable.
    header = ("id(int,auto) l_uuid(string) l_username(string) l_domain(string) "
              "r_username(string) r_domain(string) realm(string) auth_username(string) "
              "auth_password(string) auth_ha1(string,null) auth_proxy(string) expires(int) "
              "flags(int) reg_delay(int) contact_addr(string,null) socket(string,null) \n")
    row = ":".join(["1", "acme", DID, REALM, DID, REALM, REALM, "acme", password, "",
                    f"sip\\:127.0.0.1\\:{sipd_port}", "10", "0", "0", "", ""])
    (db / "uacreg").write_text(header.rstrip("\n") + "\n" + row + "\n")
    config = PBX_CONFIG.read_text()
    for name, value in (("PBX_IP", PBX_IP), ("PBX_PORT", str(pbx_port)),
                        ("EXT_IP", PBX_IP), ("EXT_PORT", str(ext_port)),
                        ("SIPD_IP", "127.0.0.1"), ("SIPD_PORT", str(sipd_port)),
                        ("DB_DIR", str(db))):
        config = config.replace(f"@{name}@", value)
    assert not re.search(r"@(PBX|EXT|SIPD|DB)_\w+@", config), "a placeholder left"
    cfg = tmp / "kamailio.cfg"
    cfg.write_text(config)
    log = open(tmp / "kamailio.log", "w")  # noqa: SIM115  (handed to the child)
    try:
        return subprocess.Popen(["kamailio", "-f", str(cfg), "-DD", "-E", "-Y", str(tmp)],
                                stdout=log, stderr=subprocess.STDOUT, text=True, cwd=tmp,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    finally:
        log.close()


@contextmanager
def site(tmp: Path, unix: FakeUnix, passwords: dict[str, str]) -> Iterator[Site]:
    etc = tmp / "etc"
    etc.mkdir()
    (etc / "aliases").write_text(f"{DID}: acme\n")
    (etc / "trunks").write_text(f"acme: {PBX_IP}/32 present=any\n")
    for name in ("aliases", "trunks"):
        (etc / name).chmod(0o644)
    carrier_port = free_port()
    conf = tmp / "sipd.toml"
    conf.write_text(f'aliases = "{etc / "aliases"}"\ntrunks = "{etc / "trunks"}"\n'
                    f'outbound_proxy = "sip:{CARRIER_IP}:{carrier_port}"\n'
                    'country_code = "49"\nnational_prefix = "0"\n'
                    # The PBX registers for 10 s, so it comes back often.
                    'min_expires = 10\n')
    procs: list[subprocess.Popen[str]] = []
    try:
        with running_sipd(tmp, "-v", "-c", str(conf), unix=unix) as daemon:
            pbx_port, ext_port = free_port(), free_port()
            pbx = start_pbx(tmp, daemon.port, pbx_port, ext_port, passwords["acme"])
            procs.append(pbx)
            s = Site(daemon, unix, tmp, pbx, pbx_port, ext_port, carrier_port, procs)
            wait_for(lambda: s.registered() or pbx.poll() is not None,
                     "the PBX's registration", timeout=20)
            assert s.registered(), f"PBX exited {pbx.poll()}:\n{s.pbx_log()[-3000:]}"
            yield s
            assert daemon.alive(), daemon.log
            assert "Traceback" not in daemon.log, daemon.log
    finally:
        for proc in procs:
            stop_process(proc)
            if proc.stdout is not None:
                proc.stdout.close()
        if procs:
            # Kamailio's own children, should its main process have died first.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(procs[0].pid, signal.SIGKILL)
        for name in ("acme", "bob"):
            for leftover in ("usrloc", "acc"):
                (unix[name].home / ".sr" / leftover).unlink(missing_ok=True)
        unix.set_shadow("acme")


def ok(r: subprocess.CompletedProcess[str], what: str, s: Site) -> None:
    assert r.returncode == 0, (
        f"{what}: sipp exit {r.returncode}\n{r.stdout[-2000:]}\n"
        f"sipd log:\n{s.daemon.log[-3000:]}\nPBX log:\n{s.pbx_log()[-3000:]}")


@pytest.mark.parametrize("dialled", ["tel:+49-1727-221221", f"tel:{DID}",
                                     f"sip:+49%201727%20221221@{REALM};user=phone"])
def test_the_did_in_any_spelling_reaches_the_pbx_and_its_extension(
    tmp_path: Path, unix: FakeUnix, passwords: dict[str, str], dialled: str,
) -> None:
    with site(tmp_path, unix, passwords) as s:
        ext = s.uas(PBX_IP, s.ext_port)
        ok(s.call(("127.0.0.1", s.daemon.port), dialled, "sip:+4930123456@carrier.example"),
           "caller", s)
        assert ext.wait(15) == 0
        invite = s.invite_at(s.ext_port)
        # sipd sent the call to the contact the DID registered (uac_reg's
        # sip:acme@PBX), which the PBX maps back to the DID.
        assert invite.startswith(f"INVITE sip:{DID}@{REALM} "), invite
        assert f"pbx: inbound {DID} to the extension" in s.pbx_log()


def test_a_forwarded_outside_call_keeps_its_from_with_the_customers_identity(
    tmp_path: Path, unix: FakeUnix, passwords: dict[str, str],
) -> None:
    with site(tmp_path, unix, passwords) as s:
        carrier = s.uas(CARRIER_IP, s.carrier_port)
        # What the PBX forwards to a mobile: the original caller in From.
        ok(s.call((PBX_IP, s.pbx_port), "sip:+491701234567@carrier.example",
                  "sip:+4930123456@carrier.example"), "pbx", s)
        assert carrier.wait(15) == 0
        invite = s.invite_at(s.carrier_port)
        assert re.search(r"^From: <sip:\+4930123456@carrier\.example>;tag=", invite, re.M), invite
        assert f"P-Asserted-Identity: <sip:{DID}@{REALM}>" in invite
        assert f"Diversion: <sip:{DID}@{REALM}>;reason=unknown;counter=1" in invite


def test_locking_the_customer_stops_the_pbx(
    tmp_path: Path, unix: FakeUnix, passwords: dict[str, str],
) -> None:
    with site(tmp_path, unix, passwords) as s:
        unix.set_shadow("acme", "!$6$salt$hash")  # usermod -L acme
        # The PBX re-registers every few seconds (expires 10).
        wait_for(lambda: 'auth failed: user "acme" from 127.0.0.2' in s.daemon.log,
                 "the PBX's REGISTER refused", timeout=20)
        # The forwarded call is a stranger's now: no relaying to the carrier.
        r = s.call((PBX_IP, s.pbx_port), "sip:+491701234567@carrier.example",
                   "sip:+4930123456@carrier.example")
        assert r.returncode != 0
        assert "SIP/2.0 403 Relaying denied" in (tmp_path / "uac.err").read_text()
        assert 'trunk of "acme" at 127.0.0.2 not trusted: password locked' in s.daemon.log
        # And a call as the customer's own number is challenged.
        r = s.call((PBX_IP, s.pbx_port), "sip:+491701234567@carrier.example",
                   f"sip:{DID}@{REALM}")
        assert r.returncode != 0
        assert "SIP/2.0 407 Proxy Authentication Required" in (tmp_path / "uac.err").read_text()
