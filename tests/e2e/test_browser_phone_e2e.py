"""A real browser phone on a real sipd: JsSIP in headless Chromium over wss.

The phone is JsSIP's browser bundle in a page, tests/browser/phone.html,
that this module serves from 127.0.0.1 and drives: the page asks the
test's HTTP server for its next step and posts back every JsSIP event.
JsSIP comes from npm, pinned in tests/browser/package.json and its lock
file to 3.12.0, the newest release that ships dist/jssip.min.js (3.13
ships only the CommonJS sources); :func:`jssip_bundle` installs it into
the checkout's ignored build/ folder.
What is asserted is what JsSIP reported ('registered', 'confirmed',
'newRTCSession', 'ended'), and what sipd and the sipp on the other end saw.

Chromium runs headless as Debian builds it, with a profile and a HOME of
its own, fake media devices and none of its background connections to
Google's services (the closed network refuses them). It trusts
the test's CA the way a user's browser would be made to: the CA is added
to the NSS database in that HOME (certutil, libnss3-tools), which Chromium
on Linux reads for locally added roots; no certificate error is ignored,
so a certificate sipd presents wrongly fails the test.

The other phone is a sipp over UDP, registered as bob, answering (or
calling) with the SDP a WebRTC browser accepts (tests/sipp/*webrtc.xml).
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests import REPO, TESTS
from tests.e2e.test_baresip import bindings
from tests.e2e.test_proxy_e2e import Calls, ok
from tests.sipclient import Daemon, running_sipd, stop_process, wait_for
from tests.tlshelper import Certs, free_ports, make_certs
from tests.unixusers import FakeUnix, give_passwords

pytestmark = [pytest.mark.slow, pytest.mark.sipp]

REALM = "test.invalid"
PAGE = TESTS / "browser"
#: Where npm installs JsSIP: ignored by git, kept between runs, rebuilt when
#: tests/browser/package-lock.json changes.
CACHE = REPO / "build" / "browser-phone"
BUNDLE = Path("node_modules") / "jssip" / "dist" / "jssip.min.js"
#: Seconds for one step of the phone (registration, a call's answer, its end).
STEP = 20.0

#: Chromium as root in a closed network: no sandbox (root), no GPU, and none
#: of its own connections to Google's services, which the network refuses.
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    # getUserMedia answered at once, from a generated tone and picture.
    "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
)


def need(program: str, package: str, *, skip: bool = False) -> str:
    """``program``'s path; without it the test fails, or with ``skip`` is skipped, loudly."""
    path = shutil.which(program)
    if path is None:
        why = f"{program} is missing (Debian package {package}: run 'make setup')"
        if skip:
            pytest.skip(f"BROWSER PHONE NOT TESTED: {why}")
        pytest.fail(why)
    return path


def jssip_bundle() -> Path:
    """JsSIP's browser bundle, installed with ``npm ci`` under build/ once per lock file."""
    lock = (PAGE / "package-lock.json").read_bytes()
    stamp = CACHE / "package-lock.json"
    if (CACHE / BUNDLE).is_file() and stamp.is_file() and stamp.read_bytes() == lock:
        return CACHE / BUNDLE
    npm = need("npm", "npm", skip=True)
    CACHE.parent.mkdir(exist_ok=True)
    # Installed beside the cache, then renamed over it: an interrupted
    # install never passes for a finished one.
    work = Path(tempfile.mkdtemp(prefix=".browser-phone-", dir=CACHE.parent))
    try:
        for name in ("package.json", "package-lock.json"):
            shutil.copy(PAGE / name, work / name)
        r = subprocess.run([npm, "ci", "--omit=dev", "--ignore-scripts", "--no-audit",
                            "--no-fund"], cwd=work, capture_output=True, text=True,
                           timeout=300, stdin=subprocess.DEVNULL)
        assert r.returncode == 0, f"npm ci of tests/browser failed:\n{r.stdout}\n{r.stderr}"
        assert (work / BUNDLE).is_file(), f"the jssip package has no {BUNDLE}"
        shutil.rmtree(CACHE, ignore_errors=True)
        work.rename(CACHE)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return CACHE / BUNDLE


# ------------------------------------------------------------------ the page


class PhonePage:
    """The test's HTTP server: the page, JsSIP, the page's steps and its events."""

    def __init__(self, bundle: Path) -> None:
        self.steps: queue.Queue[dict[str, Any]] = queue.Queue()
        self.events: list[dict[str, Any]] = []
        self.changed = threading.Condition()
        self.seen = 0
        files = {"/": (PAGE / "phone.html", "text/html"),
                 "/jssip.min.js": (bundle, "text/javascript")}
        page = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                if self.path == "/command":
                    try:
                        step = page.steps.get(timeout=5)
                    except queue.Empty:
                        self._reply(204, b"", "text/plain")
                        return
                    self._reply(200, json.dumps(step).encode(), "application/json")
                elif self.path in files:
                    path, kind = files[self.path]
                    self._reply(200, path.read_bytes(), kind)
                else:
                    self._reply(404, b"not here", "text/plain")

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.path != "/event":
                    self._reply(404, b"not here", "text/plain")
                    return
                with page.changed:
                    page.events.append(json.loads(body))
                    page.changed.notify_all()
                self._reply(204, b"", "text/plain")

            def _reply(self, status: int, body: bytes, kind: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def send(self, **step: Any) -> None:
        self.steps.put(step)

    def wait(self, event: str, timeout: float = STEP, **fields: Any) -> dict[str, Any]:
        """The next ``event`` with ``fields``, after the ones an earlier wait returned.

        A JsSIP failure or an error in the page ends the wait at once, with
        everything the page reported.
        """
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                for i in range(self.seen, len(self.events)):
                    e = self.events[i]
                    if e["event"] == event and all(e.get(k) == v for k, v in fields.items()):
                        self.seen = i + 1
                        return e
                    if e["event"] in ("page-error", "registrationFailed", "failed") \
                            and e["event"] != event:
                        raise AssertionError(f"waiting for {event}, the page reported {e}; "
                                             f"all events: {self.events}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out waiting for {event} {fields or ''}; "
                                         f"the page reported: {self.events}")
                self.changed.wait(left)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


# ------------------------------------------------------------------ the browser


def trust_in_nss(home: Path, ca_file: Path) -> None:
    """``ca_file`` as a trusted root in the NSS database Chromium reads from ``home``."""
    certutil = need("certutil", "libnss3-tools")
    db = home / ".pki" / "nssdb"
    db.mkdir(parents=True)
    for args in (["-N", "--empty-password"],
                 ["-A", "-n", "sipd test CA", "-t", "C,,", "-i", str(ca_file)]):
        r = subprocess.run([certutil, "-d", f"sql:{db}", *args], capture_output=True,
                           text=True, timeout=30, stdin=subprocess.DEVNULL)
        assert r.returncode == 0, f"certutil {args[0]}: {r.stderr}"


def in_group(pgid: int) -> list[int]:
    """The processes still in process group ``pgid``."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


@contextmanager
def chromium(url: str, home: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Headless Chromium on ``url``; it and every process it started are gone after."""
    exe = need("chromium", "chromium", skip=True)
    # Its temporary files (TMPDIR) and libpulse's runtime directory
    # (XDG_RUNTIME_DIR) in the test's own directory: left to themselves
    # they are /tmp/org.chromium.Chromium.* and /tmp/pulse-*, never removed.
    tmp, runtime = home / "tmp", home / "run"
    for d in (tmp, runtime):
        d.mkdir(mode=0o700, exist_ok=True)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home),
           "LANG": "C.UTF-8", "TMPDIR": str(tmp), "XDG_RUNTIME_DIR": str(runtime)}
    before = _chromium_leftovers()
    log = home / "chromium.log"
    with open(log, "wb") as out:
        # A process group of its own: its renderers, GPU and network
        # processes and crashpad handler are killed with it.
        proc = subprocess.Popen([exe, *CHROMIUM_FLAGS, f"--user-data-dir={home / 'profile'}",
                                 url], env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        yield proc
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                wait_for(lambda: not in_group(proc.pid), "Chromium to exit", timeout=5)
                break
            except AssertionError:
                continue
        stop_process(proc, 1)
    left = _chromium_leftovers() - before
    assert not left, f"Chromium left {sorted(left)} in /tmp"


def _chromium_leftovers() -> set[str]:
    return {p.name for p in Path("/tmp").iterdir()
            if p.name.startswith(("org.chromium.Chromium.", "pulse-"))}


# ------------------------------------------------------------------ fixtures


@dataclass
class Phone:
    """sipd, the page the browser phone runs in, and sipp's side of the calls."""

    daemon: Daemon
    wss_port: int
    page: PhonePage
    calls: Calls
    browser: subprocess.Popen[bytes]
    home: Path
    #: JsSIP's 'registered' event.
    registered: dict[str, Any]


@pytest.fixture(scope="module")
def passwords(unix: FakeUnix) -> dict[str, str]:
    return give_passwords(unix, REALM, ("alice", "bob"))


@pytest.fixture(scope="module")
def phone(tmp_path_factory: pytest.TempPathFactory, unix: FakeUnix,
          passwords: dict[str, str]) -> Iterator[Phone]:
    """alice's browser phone, registered over wss, and a sipd with a wss listener."""
    need("chromium", "chromium", skip=True)
    need("sipp", "sip-tester")
    bundle = jssip_bundle()
    tmp = tmp_path_factory.mktemp("browser-sipd")
    certs: Certs = make_certs(tmp / "certs")
    # Chromium's own HOME, not under pytest's tmp (removed at once, not kept
    # for three runs: a profile is tens of megabytes).
    home = Path(tempfile.mkdtemp(prefix="browser-phone-"))
    page = PhonePage(bundle)
    try:
        trust_in_nss(home, certs.ca_file)
        conf = tmp / "sipd.toml"
        # As a deployment would: only the page's own origin may connect.
        conf.write_text(certs.conf(f'ws_allowed_origins = ["{page.origin}"]\n'))
        (wss,) = free_ports(1)
        with running_sipd(tmp, "-v", "-c", str(conf), "-l", f"wss:127.0.0.1:{wss}",
                          unix=unix) as daemon:
            calls = Calls(daemon, unix, passwords, tmp)
            try:
                with chromium(page.origin + "/", home) as browser:
                    try:
                        loaded = page.wait("loaded", timeout=30)
                        print(f"browser phone: JsSIP {loaded['jssip']}, {loaded['userAgent']}")
                        page.send(op="register", ws=f"wss://127.0.0.1:{wss}",
                                  uri=f"sip:alice@{REALM}", password=passwords["alice"])
                        registered = page.wait("registered")
                    except AssertionError as e:
                        raise AssertionError(f"{e}\nsipd: {daemon.log[-3000:]}\n"
                                             f"Chromium: {browser_log(home)}") from None
                    yield Phone(daemon, wss, page, calls, browser, home, registered)
                    page.send(op="stop")
                    page.wait("unregistered")
            finally:
                calls.stop_all()
            assert daemon.alive(), daemon.log
            assert "Traceback" not in daemon.log, daemon.log
    finally:
        page.close()
        shutil.rmtree(home, ignore_errors=True)
        for name in ("alice", "bob"):
            (unix[name].home / ".sr" / "usrloc").unlink(missing_ok=True)


def browser_log(home: Path) -> str:
    path = home / "chromium.log"
    return path.read_text(errors="replace")[-3000:] if path.exists() else ""


# ------------------------------------------------------------------ tests


def test_the_browser_phone_registers_over_wss_with_digest(phone: Phone, unix: FakeUnix) -> None:
    registered = phone.registered
    assert registered["status"] == 200
    # JsSIP's contact: a random .invalid host that only its WebSocket reaches.
    contact = registered["contact"]
    assert ".invalid" in contact and "transport=ws" in contact, contact

    def over_wss() -> list[Any]:
        return [b for b in bindings(unix, "alice") if b.transport == "ws"
                and b.attrs.get("received", "").startswith("wss:127.0.0.1:")]

    wait_for(over_wss, "alice's binding over wss in ~/.sr/usrloc")
    uri = contact.strip("<>")
    assert f'registered: aor "alice" contact "{uri}" from wss:127.0.0.1:' in phone.daemon.log


def test_the_browser_phone_with_a_wrong_password_is_refused(phone: Phone,
                                                            passwords: dict[str, str]) -> None:
    # The 200 above was earned: sipd checks the digest JsSIP computes.
    phone.page.send(op="probe", ws=f"wss://127.0.0.1:{phone.wss_port}",
                    uri=f"sip:alice@{REALM}", password=passwords["alice"] + "x")
    refused = phone.page.wait("probe-failed")
    assert (refused["status"], refused["cause"]) == (401, "Authentication Error"), refused


def test_the_browser_phone_calls_a_udp_phone_and_hangs_up(phone: Phone) -> None:
    bob = phone.calls.uas("uas_answer_webrtc.xml", "bob")
    bob_port = phone.calls.uas_ports[-1]
    phone.page.send(op="call", target=f"sip:bob@{REALM}")
    assert phone.page.wait("newRTCSession")["direction"] == "outgoing"
    phone.page.wait("confirmed")
    phone.page.send(op="hangup")
    ended = phone.page.wait("ended")
    assert (ended["originator"], ended["cause"]) == ("local", "Terminated"), ended
    # sipp finishes its scenario only once the BYE came and was answered.
    assert phone.calls.finished(bob) == 0, phone.calls.received(bob_port)
    assert "BYE sip:" in phone.calls.received(bob_port)


def test_a_udp_phone_calls_the_browser_phone_which_answers(phone: Phone) -> None:
    phone.page.send(op="incoming", answer=True)
    phone.page.wait("done", op="incoming")
    r = phone.calls.call("uac_webrtc.xml", "alice", caller="bob")
    ok(r, "bob calling the browser", phone.calls)
    new = phone.page.wait("newRTCSession")
    assert new["direction"] == "incoming" and new["from"] == f"sip:bob@{REALM}", new
    phone.page.wait("confirmed")
    ended = phone.page.wait("ended")
    assert (ended["originator"], ended["cause"]) == ("remote", "Terminated"), ended


def test_the_browser_phone_rejects_a_call(phone: Phone) -> None:
    phone.page.send(op="incoming", answer=False)
    phone.page.wait("done", op="incoming")
    r = phone.calls.call("uac_reject.xml", "alice", caller="bob", status=486)
    ok(r, "bob calling the browser", phone.calls)
    assert phone.page.wait("newRTCSession")["direction"] == "incoming"
    # The page's 486, as JsSIP reports a call it turned down.
    failed = phone.page.wait("failed")
    assert (failed["originator"], failed["cause"]) == ("local", "Rejected"), failed
