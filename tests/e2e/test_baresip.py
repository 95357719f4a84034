"""baresip, a real softphone, registers to a running sipd and unregisters.

baresip (Debian's baresip-core, a required test dependency: ``make setup``)
runs headless: its own config directory and HOME, a SIP listen address of
its own on 127.0.0.1, the in-memory ``aubridge`` device for every audio
role (no sound card), and the ``stdio`` UI reading commands from a pipe.
Its account sends every request to sipd through ``outbound=`` with the
transport under test, authenticates as alice, and quits with ``/quit``,
which unregisters (REGISTER with ``expires=0``) before baresip exits.

What sipd did is read from ``~alice/.sr/usrloc``: the binding appears
with baresip's contact, and disappears after the quit.

sipd runs on its built-in defaults. baresip 1.0.0 (libre 1.1.0) gives up
on a 401 that carries any challenge with an algorithm other than MD5
("Register: Function not implemented"), even when an MD5 challenge comes
first; sipd offers a User-Agent it does not know (baresip's among them)
MD5 alone, and the tests check that this is what baresip was offered.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.sipclient import Daemon, free_port, running_sipd, stop_process
from tests.unixusers import FakeUnix

REALM = "test.invalid"
USER = "alice"
PASSWORD = "secret"
#: Registration interval baresip asks for (sipd allows 60..3600 by default).
REGINT = 600
#: Seconds to wait for one step (registration, quit, unregistration).
STEP_TIMEOUT = 10.0
POLL = 0.05
#: baresip quits by itself after this long even if the test could not stop it.
SELF_DESTRUCT = 60
MODULES_NEEDED = ("account.so", "stdio.so", "g711.so", "aubridge.so")
MODULE_DIRS = (Path("/usr/lib/baresip/modules"), Path("/usr/local/lib/baresip/modules"))

#: A digest challenge as baresip's SIP trace shows it, with its algorithm if named.
CHALLENGE = re.compile(
    r"^(?:WWW|Proxy)-Authenticate:\s*Digest\b(?P<params>.*)$", re.MULTILINE | re.IGNORECASE
)
ALGORITHM = re.compile(r"\balgorithm=\"?([\w-]+)", re.IGNORECASE)

#: A failed REGISTER as baresip reports it, e.g.
#: "reg: sip:alice@test.invalid: Register: Function not implemented" or
#: "reg: sip:alice@test.invalid: 403 Forbidden (sipd)".
REG_FAILURE = re.compile(r"^reg: \S+: (?:Register: .*|[3-6]\d\d .*)$", re.MULTILINE)
#: Colour escapes baresip writes even when its output is not a terminal.
ANSI = re.compile(r"\x1b\[[0-9;]*m")

CONFIG = """\
# baresip for the sipd tests: headless, no sound card, no video, no NAT helpers.
poll_method\tepoll
sip_listen\t127.0.0.1:{port}
audio_player\taubridge,nil
audio_source\taubridge,nil
audio_alert\taubridge,nil
module_path\t{modules}
# the UI: commands such as /quit on stdin (not a terminal, which it tolerates)
module\tstdio.so
module\tg711.so
module\taubridge.so
module_tmp\taccount.so
"""

ACCOUNT = (
    "<sip:{user}@{realm}>;auth_user={user};auth_pass={password}"
    ';outbound="sip:127.0.0.1:{server};transport={transport}";regint={regint}\n'
)

CONTACT = re.compile(
    r"^sips?:(?:[^@;]+@)?(?P<host>\[[^\]]+\]|[^:;]+)(?::(?P<port>\d+))?(?P<params>(?:;[^;]*)*)$"
)


def baresip_install() -> tuple[str, Path]:
    """The baresip executable and its module directory; fails when missing."""
    exe = shutil.which("baresip")
    if exe is None:
        pytest.fail(
            "baresip is not installed: run 'make setup' (Debian package baresip-core, "
            "a required test dependency)"
        )
    for d in (*MODULE_DIRS, *sorted(Path("/usr/lib").glob("*/baresip/modules"))):
        if all((d / m).is_file() for m in MODULES_NEEDED):
            return exe, d
    pytest.fail(
        f"baresip modules {', '.join(MODULES_NEEDED)} not found in {', '.join(map(str, MODULE_DIRS))}: "
        "run 'make setup' (Debian package baresip-core)"
    )


def baresip_port() -> int:
    """A port P free for UDP and TCP whose P+1 is free for TCP too.

    baresip 1.0.0 listens for SIP on UDP and TCP P and for TLS on TCP P+1.
    """
    for _ in range(100):
        port = free_port()
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.bind(("127.0.0.1", port + 1))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair for baresip")


def set_password(unix: FakeUnix) -> None:
    p = unix.sippasswd("-r", REALM, "--stdin", USER, input=f"{PASSWORD}\n")
    assert p.returncode == 0, f"sippasswd failed ({p.returncode}): {p.stderr}"


@dataclass(frozen=True)
class Binding:
    contact: str
    host: str
    port: int
    params: str
    attrs: dict[str, str]

    @property
    def transport(self) -> str:
        """The contact's transport parameter, lower case; udp when absent."""
        m = re.search(r";transport=([^;]*)", self.params, re.IGNORECASE)
        return m.group(1).lower() if m else "udp"


def bindings(unix: FakeUnix, user: str = USER) -> list[Binding]:
    """``user``'s bindings as sipd wrote them to ~/.sr/usrloc."""
    try:
        text = (unix[user].home / ".sr" / "usrloc").read_text()
    except FileNotFoundError:
        return []
    found: list[Binding] = []
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        contact, *rest = shlex.split(line)
        attrs = dict(a.partition("=")[::2] for a in rest)
        m = CONTACT.match(contact)
        assert m is not None, f"unparsable contact in usrloc: {line!r}"
        found.append(
            Binding(contact, m["host"], int(m["port"] or 5060), m["params"] or "", attrs)
        )
    return found


def bindings_at(unix: FakeUnix, port: int, user: str = USER) -> list[Binding]:
    """``user``'s bindings whose contact is 127.0.0.1:``port`` (a phone's)."""
    return [b for b in bindings(unix, user) if b.host == "127.0.0.1" and b.port == port]


class RegisterFailed(AssertionError):
    """baresip reported a failed REGISTER."""


class Baresip:
    def __init__(self, proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.proc = proc
        self.port = port
        self.log_path = log

    @property
    def log(self) -> str:
        return ANSI.sub("", self.log_path.read_text(errors="replace"))

    def tail(self, n: int = 4000) -> str:
        return self.log[-n:]

    def challenged_with(self) -> list[str]:
        """The algorithm of every digest challenge baresip received (MD5 when unnamed)."""
        found = []
        for m in CHALLENGE.finditer(self.log):
            named = ALGORITHM.search(m["params"])
            found.append(named.group(1).upper() if named else "MD5")
        return found

    def count(self, pattern: str) -> int:
        """How often ``pattern`` occurs in baresip's output (its SIP trace included)."""
        return len(re.findall(pattern, self.log, re.MULTILINE | re.IGNORECASE))

    def wait_log(self, pattern: str, what: str, seen: int = 0,
                 timeout: float = STEP_TIMEOUT) -> None:
        """Wait until ``pattern`` occurs more than ``seen`` times (a phone that makes
        several calls says the same things again: take ``count()`` before)."""
        deadline = time.monotonic() + timeout
        while self.count(pattern) <= seen:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"baresip: {what}: not seen ({pattern!r})\n{self.tail(6000)}")
            time.sleep(POLL)

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise AssertionError(f"baresip exited with {self.proc.returncode}:\n{self.tail()}")
        failed = REG_FAILURE.search(self.log)
        if failed:
            raise RegisterFailed(f"baresip: {failed.group(0).strip()}\n{self.tail()}")

    def command(self, line: str) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(line.encode() + b"\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            raise AssertionError(
                f"baresip is gone (exit {self.proc.poll()}):\n{self.tail()}"
            ) from None

    def quit(self) -> int:
        """/quit, which unregisters; baresip's exit status."""
        self.command("/quit")
        try:
            return self.proc.wait(STEP_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"baresip did not quit:\n{self.tail()}") from None


@contextmanager
def running_baresip(tmp: Path, sipd_port: int, transport: str, *, user: str = USER,
                    password: str = PASSWORD, account_params: str = "",
                    modules: tuple[str, ...] = (), config: str = "") -> Iterator[Baresip]:
    """baresip with ``user``'s account sending to sipd over ``transport``; always stopped.

    ``config``: more lines for baresip's config file (``sip_cafile`` for TLS).
    """
    exe, module_dir = baresip_install()
    port = baresip_port()
    conf = tmp / f"baresip-{user}"
    home = tmp / f"home-{user}"
    conf.mkdir()
    home.mkdir()
    (conf / "config").write_text(
        CONFIG.format(port=port, modules=module_dir) + "".join(f"module\t{m}\n" for m in modules)
        + config
    )
    (conf / "accounts").write_text(
        ACCOUNT.format(
            user=user, realm=REALM, password=password, server=sipd_port,
            transport=transport, regint=REGINT,
        ).rstrip("\n") + account_params + "\n"
    )
    env = {"HOME": str(home), "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C"}
    log = tmp / f"baresip-{user}.log"
    # -s: SIP trace in the log; -t: baresip ends itself should everything else fail.
    cmd = [exe, "-f", str(conf), "-s", "-t", str(SELF_DESTRUCT)]
    with open(log, "wb") as logf:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=logf, stderr=subprocess.STDOUT, cwd=tmp, env=env
        )
    try:
        yield Baresip(proc, port, log)
    finally:
        stop_process(proc)
        if proc.stdin is not None:
            try:
                proc.stdin.close()
            except BrokenPipeError:
                pass


def wait_registered(unix: FakeUnix, phone: Baresip, user: str = USER) -> Binding:
    deadline = time.monotonic() + STEP_TIMEOUT
    while True:
        ours = bindings_at(unix, phone.port, user)
        if ours:
            assert len(ours) == 1, f"more than one binding for baresip: {ours}"
            return ours[0]
        phone.check_alive()
        if time.monotonic() > deadline:
            raise AssertionError(
                f"no binding for 127.0.0.1:{phone.port} in {user}'s usrloc after "
                f"{STEP_TIMEOUT} s: {bindings(unix, user)}\n{phone.tail()}"
            )
        time.sleep(POLL)


def wait_unregistered(unix: FakeUnix, phone: Baresip, user: str = USER) -> None:
    deadline = time.monotonic() + STEP_TIMEOUT
    while ours := bindings_at(unix, phone.port, user):
        if time.monotonic() > deadline:
            raise AssertionError(
                f"binding still in usrloc {STEP_TIMEOUT} s after baresip quit: {ours}\n"
                f"{phone.tail()}"
            )
        time.sleep(POLL)


def quit_and_unregister(unix: FakeUnix, phone: Baresip, user: str = USER) -> None:
    """/quit; the REGISTER with expires=0 it sends removes the binding."""
    assert phone.quit() == 0, phone.tail()
    # The unregistration went out as a REGISTER, not by a lapse.
    assert re.search(
        rf"^Contact: <[^>]*@127\.0\.0\.1:{phone.port}[^>]*>;expires=0\s*$",
        phone.log, re.MULTILINE,
    ), f"baresip sent no REGISTER with expires=0:\n{phone.tail()}"
    wait_unregistered(unix, phone, user)


def register_and_unregister(
    sipd: Daemon, unix: FakeUnix, tmp: Path, transport: str
) -> None:
    with running_baresip(tmp, sipd.port, transport) as phone:
        binding = wait_registered(unix, phone)
        assert binding.transport == transport, binding
        assert binding.attrs.get("aor") == USER, binding
        expires = int(binding.attrs["expires"])
        assert 0 < expires <= REGINT, binding
        received = binding.attrs.get("received", "")
        if transport == "udp":
            assert received == f"udp:127.0.0.1:{phone.port}", binding
        else:
            # TCP: the connection's ephemeral port, not the listening one.
            assert received.startswith("tcp:127.0.0.1:"), binding
        assert binding.attrs.get("ua", "").startswith("baresip"), binding
        # What a phone sipd does not know is offered: MD5 alone.
        assert phone.challenged_with() == ["MD5"], phone.tail()

        quit_and_unregister(unix, phone)
    assert sipd.alive(), sipd.log
    assert "Traceback" not in sipd.log, sipd.log


@pytest.fixture(scope="module")
def sipd(tmp_path_factory: pytest.TempPathFactory, unix: FakeUnix) -> Iterator[Daemon]:
    """sipd on its built-in defaults."""
    baresip_install()
    tmp = tmp_path_factory.mktemp("baresip-sipd")
    set_password(unix)
    with running_sipd(tmp, unix=unix) as daemon:
        yield daemon


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_baresip_registers_and_unregisters(
    sipd: Daemon, unix: FakeUnix, tmp_path: Path, transport: str
) -> None:
    register_and_unregister(sipd, unix, tmp_path, transport)
