"""linphone-daemon, a real Linphone (liblinphone 5.1), driven headless for tests.

``running_linphone()`` starts ``linphone-daemon`` (Debian's linphone-cli, a
required test dependency: ``make setup``) with a configuration file, a HOME
and a SIP port of its own on 127.0.0.1, for one transport (UDP or TCP),
and stops it whatever happens: ``quit`` on its control socket, then
SIGINT, then SIGKILL, and its control socket is removed in any case.

Facts about linphone-daemon 5.1 these helpers rely on:

- It is controlled through a UNIX socket ``/tmp/NAME`` (``--pipe NAME``)
  that takes one client at a time; each command gets one response,
  written at once, in the form ``Status: Ok|Error``, ``Reason: ...``,
  then a blank line and ``Key: value`` lines. While a client is connected,
  call events are queued for ``pop-event`` instead of printed.
- The core never starts, silently (no SIP port, no REGISTER), unless its
  database directory ``$HOME/.local/share/linphone`` exists.
- A transport port of -1 in ``[sip]`` means a random port, 0 means off.
- Without a sound card (no ALSA device, no PulseAudio) calls still run:
  the audio graph goes to no device.
- It sends ``User-Agent: Unknown`` unless ``[sip] user_agent`` names it:
  the Linphone applications name themselves (linphonec says
  ``Linphonec/5.1.65``), linphone-daemon leaves that to its user.
- Its digest answers depend on the password it holds: a clear-text
  password (an account without a realm, as the applications create one)
  answers the first challenge of a 401/407 (SHA-256 when offered first)
  and from then on keeps to that algorithm, whose HA1 replaces the
  password; the ``register`` command with a realm hashes the password
  with MD5 at once, and that account answers MD5 only.
- Over TCP its Contact carries the local port of its connection to the
  registrar, not its listening port.
- ``--log FILE`` writes every SIP message it sends and receives.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.sipclient import free_port

#: Seconds to wait for one step (start, registration, a call state, quit).
STEP_TIMEOUT = 10.0
POLL = 0.05
#: Registration interval the account asks for (sipd allows 60..3600 by default).
REG_EXPIRES = 600
#: The daemon's id of the account of the configuration file.
ACCOUNT = "1"
#: Call states after which a call never runs again.
CALL_OVER = ("LinphoneCallError", "LinphoneCallEnd", "LinphoneCallReleased")
PIPE_DIR = Path("/tmp")

#: A log line of its own; the SIP message a line announces runs up to the next one.
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d:\d+ ", re.MULTILINE)
#: The log lines that announce a message sent (>) or received (<).
MESSAGE = re.compile(r"\]: (?:(?P<sent>message sent to)|received \[\d+\] new bytes from) "
                     r"\[[^\]]*\](?:, size: \[\d+\] bytes)?:?\n")
#: The start line of a SIP message: what one read from a TCP stream may hold several of.
START_LINE = re.compile(r"^(?=SIP/2\.0 \d{3} |[A-Z]+ \S+ SIP/2\.0$)", re.MULTILINE)

CONFIG = """\
# linphone-daemon for the sipd tests: one transport on 127.0.0.1, no video,
# no echo canceller (there is no sound card), nothing published.
[sip]
sip_port={udp_port}
sip_tcp_port={tcp_port}
sip_tls_port={tls_port}
bind_address=127.0.0.1
{user_agent}
{tls}
[rtp]
# -1: linphone takes a free port (and the next, for RTCP) itself
audio_rtp_port=-1
video_rtp_port=-1
[video]
capture=0
display=0
[sound]
echocancellation=0
[proxy_0]
reg_identity=sip:{user}@{domain}
reg_proxy=<sip:{server_host}:{server};transport={transport}>
reg_route=<sip:{server_host}:{server};transport={transport};lr>
reg_expires={expires}
reg_sendregister=1
publish=0
[auth_info_0]
username={user}
{secret}
"""


def md5_hex(text: str) -> str:
    return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()


def linphone_daemon() -> str:
    """The linphone-daemon executable; fails the test when missing."""
    exe = shutil.which("linphone-daemon")
    if exe is None:
        pytest.fail(
            "linphone-daemon is not installed: run 'make setup' (Debian package linphone-cli, "
            "a required test dependency)"
        )
    return exe


class CallFailed(AssertionError):
    """A call linphone made or took is over before the state awaited."""


class RegistrationFailed(AssertionError):
    """linphone's account is in LinphoneRegistrationFailed."""


@dataclass
class Reply:
    """One response of linphone-daemon: its status and its ``Key: value`` lines."""

    ok: bool
    reason: str
    fields: dict[str, str]
    text: str


def parse_reply(text: str) -> Reply:
    status, reason, fields = "", "", {}
    for line in text.splitlines():
        key, sep, value = line.partition(": ")
        if not sep:
            continue
        if key == "Status" and not status:
            status = value.strip()
        elif key == "Reason" and not reason:
            reason = value.strip()
        else:
            # The first of a repeated key wins: register-status ALL lists
            # several accounts, the tests ask for one.
            fields.setdefault(key, value.strip())
    return Reply(status == "Ok", reason, fields, text)


@dataclass
class Linphone:
    proc: subprocess.Popen[bytes]
    control: socket.socket
    port: int
    transport: str
    log_path: Path
    events: list[dict[str, str]] = field(default_factory=list)

    @property
    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def tail(self, n: int = 6000) -> str:
        return self.log[-n:]

    def command(self, line: str) -> Reply:
        """Send one command; its response (the daemon answers each command once)."""
        if self.proc.poll() is not None:
            raise AssertionError(f"linphone-daemon exited with {self.proc.returncode}:\n"
                                 f"{self.tail()}")
        self.control.sendall(line.encode() + b"\n")
        try:
            data = self.control.recv(65536)
        except TimeoutError:
            raise AssertionError(
                f"linphone-daemon did not answer {line!r}:\n{self.tail()}"
            ) from None
        # One write per response: anything that did not come with the first
        # read is already queued.
        self.control.setblocking(False)
        try:
            while more := self.control.recv(65536):
                data += more
        except BlockingIOError:
            pass
        finally:
            self.control.settimeout(STEP_TIMEOUT)
        return parse_reply(data.decode(errors="replace"))

    def ok(self, line: str) -> Reply:
        reply = self.command(line)
        assert reply.ok, f"linphone-daemon: {line!r}: {reply.text}\n{self.tail()}"
        return reply

    def pull_events(self) -> list[dict[str, str]]:
        """Every call event queued since the last call, oldest first (also kept in ``events``)."""
        new: list[dict[str, str]] = []
        while True:
            reply = self.ok("pop-event")
            if "Event" in reply.fields:
                new.append(reply.fields)
            if reply.fields.get("Size", "0") == "0":
                break
        self.events.extend(new)
        return new

    def wait_event(self, state: str, what: str, call: str | None = None,
                   timeout: float = STEP_TIMEOUT) -> dict[str, str]:
        """The first call event ``state`` (e.g. ``LinphoneCallStreamsRunning``), of call id
        ``call`` if given; earlier events count too. A call that failed or ended
        instead fails at once."""
        deadline = time.monotonic() + timeout
        while True:
            self.pull_events()
            for event in self.events:
                if call is not None and event.get("Id") != call:
                    continue
                if event.get("Event") == state:
                    return event
                if call is not None and event.get("Event") in CALL_OVER and state not in CALL_OVER:
                    raise CallFailed(f"linphone: {what}: call {call} is over "
                                     f"({event['Event']}); SIP:\n{self.ladder()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"linphone: {what}: no {state} event; events: "
                                     f"{self.events}; SIP:\n{self.ladder()}")
            time.sleep(POLL)

    def ladder(self) -> str:
        """The first line of each SIP message linphone sent (>) and received (<)."""
        return "\n".join(f"{way} {first}" for way, first in ladder(self.log))

    def register_state(self, account: str) -> str:
        reply = self.command(f"register-status {account}")
        return reply.fields.get("State", reply.reason)

    def wait_registered(self, what: str, account: str = ACCOUNT) -> None:
        deadline = time.monotonic() + STEP_TIMEOUT
        while (current := self.register_state(account)) != "LinphoneRegistrationOk":
            if current == "LinphoneRegistrationFailed":
                raise RegistrationFailed(f"linphone: {what}: registration failed; SIP:\n"
                                         f"{self.ladder()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"linphone: {what}: registration is {current}; SIP:\n"
                                     f"{self.ladder()}")
            time.sleep(POLL)

    def quit(self) -> int:
        """``quit``: the daemon unregisters, exits and removes its control socket."""
        self.ok("quit")
        try:
            return self.proc.wait(STEP_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"linphone-daemon did not quit:\n{self.tail()}") from None


@contextmanager
def running_linphone(tmp: Path, sipd_port: int, transport: str, user: str, password: str,
                     *, domain: str, user_agent: str | None = None,
                     md5_ha1: bool = False, ca: Path | None = None) -> Iterator[Linphone]:
    """linphone-daemon with the account ``user@domain`` at sipd over ``transport``; always stopped.

    The account (:data:`ACCOUNT` for the daemon's commands) registers as soon as the
    daemon runs, and sends every request through sipd (its route). Its
    password is in clear text and its realm unset, as the Linphone
    applications keep a new account; with ``md5_ha1`` it holds the MD5
    HA1 for realm ``domain`` instead, as an account provisioned with an
    ``ha1`` or added with its realm (which therefore answers MD5 only).
    ``user_agent`` is the User-Agent it sends (default: linphone-daemon's
    own, ``Unknown``). Over ``tls`` it trusts the CA in ``ca`` alone and
    checks that sipd's certificate names the server, which it calls
    ``localhost``: its TLS library matches names, not IP addresses.
    """
    exe = linphone_daemon()
    assert transport in ("udp", "tcp", "tls"), transport
    assert (transport == "tls") == (ca is not None), "a CA for TLS, and only for TLS"
    base = tmp / f"linphone-{user}-{transport}-{secrets.token_hex(3)}"
    home = base / "home"
    # Without its database directory the core never starts (see above).
    (home / ".local" / "share" / "linphone").mkdir(parents=True)
    port = free_port()
    config = base / "linphonerc"
    config.write_text(CONFIG.format(
        udp_port=port if transport == "udp" else 0,
        tcp_port=port if transport == "tcp" else 0,
        tls_port=port if transport == "tls" else 0,
        tls=f"root_ca={ca}\nverify_server_certs=1\nverify_server_cn=1" if ca else "",
        user_agent=f"user_agent={user_agent}" if user_agent is not None else "",
        user=user, domain=domain, server=sipd_port, transport=transport,
        server_host="localhost" if transport == "tls" else "127.0.0.1",
        secret=(f"ha1={md5_hex(f'{user}:{domain}:{password}')}\n"
                f"realm={domain}\nalgorithm=MD5" if md5_ha1 else f"passwd={password}"),
        expires=REG_EXPIRES,
    ))
    log = base / "linphone.log"
    pipe_name = f"sipd-test-linphone-{secrets.token_hex(6)}"
    pipe = PIPE_DIR / pipe_name
    # libpulse, trying for a sound server, makes its runtime directory under
    # XDG_RUNTIME_DIR, else a /tmp/pulse-* of its own that nobody removes.
    runtime = base / "run"
    runtime.mkdir(mode=0o700)
    env = {"HOME": str(home), "XDG_RUNTIME_DIR": str(runtime),
           "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C"}
    with open(base / "stdout.log", "wb") as out:
        proc = subprocess.Popen(
            [exe, "--config", str(config), "--pipe", pipe_name, "--log", str(log)],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=base, env=env,
        )
    control = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        deadline = time.monotonic() + STEP_TIMEOUT
        while True:
            try:
                control.connect(str(pipe))
                break
            except (FileNotFoundError, ConnectionRefusedError):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(
                        f"linphone-daemon made no control socket (exit {proc.poll()}):\n"
                        f"{(base / 'stdout.log').read_text(errors='replace')[-4000:]}"
                    ) from None
                time.sleep(POLL)
        control.settimeout(STEP_TIMEOUT)
        phone = Linphone(proc, control, port, transport, log)
        # The SIP port is bound once the core has started.
        deadline = time.monotonic() + STEP_TIMEOUT
        while f"on [sip:127.0.0.1:{port};transport={transport.upper()}]" not in phone.log:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"linphone-daemon does not listen on {transport} {port}:\n"
                                     f"{phone.tail()}")
            time.sleep(POLL)
        yield phone
    finally:
        _stop(proc, control)
        pipe.unlink(missing_ok=True)


def _stop(proc: subprocess.Popen[bytes], control: socket.socket) -> None:
    """quit, then SIGINT (which the daemon takes as quit), then SIGKILL."""
    if proc.poll() is None:
        try:
            control.settimeout(2)
            control.sendall(b"quit\n")
        except OSError:
            pass
    control.close()
    for sig in (None, signal.SIGINT, signal.SIGKILL):
        if sig is not None and proc.poll() is None:
            proc.send_signal(sig)
        try:
            proc.wait(5)
            return
        except subprocess.TimeoutExpired:
            continue


def messages(log: str) -> list[tuple[str, str]]:
    """Every SIP message in linphone's log, in order: (">" sent or "<" received, text)."""
    found = []
    for m in MESSAGE.finditer(log):
        end = LOG_LINE.search(log, m.end())
        chunk = log[m.end():end.start() if end else len(log)]
        way = ">" if m["sent"] else "<"
        found.extend((way, text) for text in START_LINE.split(chunk) if text.strip())
    return found


def ladder(log: str) -> list[tuple[str, str]]:
    """Each message's start line; a challenge's with the algorithms it offers."""
    steps = []
    for way, text in messages(log):
        first = text.split("\n", 1)[0]
        offered = re.findall(r"^(?:WWW|Proxy)-Authenticate:.*\balgorithm=([\w-]+)", text,
                             re.MULTILINE | re.IGNORECASE)
        steps.append((way, f"{first} (offers {', '.join(offered)})" if offered else first))
    return steps


def sent_messages(log: str) -> list[str]:
    """Every SIP message linphone sent."""
    return [text for way, text in messages(log) if way == ">"]


def contact_port(log: str) -> int:
    """The port of the Contact of the last REGISTER linphone sent.

    Over UDP that is its SIP port; over TCP belle-sip puts the local port
    of its connection to the registrar there, which is where sipd reaches
    it (over that connection).
    """
    ports = [int(m.group(1)) for text in sent_messages(log) if text.startswith("REGISTER ")
             for m in re.finditer(r"^Contact: <sip:[^@>]*@127\.0\.0\.1:(\d+)", text, re.MULTILINE)]
    assert ports, f"linphone sent no REGISTER with a Contact on 127.0.0.1:\n{log[-4000:]}"
    return ports[-1]


def offered(log: str, status: int) -> list[list[str]]:
    """The algorithms each ``status`` (401, 407) linphone received offered, in order."""
    found = []
    for way, text in messages(log):
        if way == "<" and text.startswith(f"SIP/2.0 {status} "):
            found.append(re.findall(r"^(?:WWW|Proxy)-Authenticate:.*\balgorithm=([\w-]+)", text,
                                    re.MULTILINE | re.IGNORECASE))
    return found


def digest_algorithms(log: str, method: str, header: str) -> list[str]:
    """The algorithm of each ``header`` (Authorization, Proxy-Authorization) in the
    ``method`` requests linphone sent."""
    found = []
    for message in sent_messages(log):
        if not message.startswith(f"{method} "):
            continue
        for m in re.finditer(rf"^{header}:\s*Digest (.*)$", message, re.MULTILINE):
            named = re.search(r"\balgorithm=\"?([\w-]+)", m.group(1))
            found.append(named.group(1) if named else "MD5")
    return found
