"""Test helpers: a running sipd in a subprocess and a tiny blocking SIP client.

The daemon is a real process on real sockets; every test that starts one
stops it (SIGTERM, then SIGKILL) even when the test fails.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.stockhost import StockHost
from tests.unixusers import FakeUnix

ROOT = Path(__file__).resolve().parents[1]
SIPD = [sys.executable, "-m", "sipd.cli"]


def free_port() -> int:
    """A port free for UDP and TCP on both 127.0.0.1 and ::1."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        try:
            for fam, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
                for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
                    with socket.socket(fam, kind) as t:
                        if fam == socket.AF_INET6:
                            t.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                        t.bind((host, port))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port")


def options(
    uri: str = "sip:127.0.0.1",
    *,
    via_host: str = "127.0.0.1",
    via_port: int = 5999,
    transport: str = "UDP",
    branch: str | None = None,
    extra: str = "",
    call_id: str | None = None,
    method: str = "OPTIONS",
    cseq: int = 1,
) -> bytes:
    branch = branch or "z9hG4bK" + secrets.token_hex(8)
    call_id = call_id or secrets.token_hex(8)
    host = f"[{via_host}]" if ":" in via_host else via_host
    return (
        f"{method} {uri} SIP/2.0\r\n"
        f"Via: SIP/2.0/{transport} {host}:{via_port};branch={branch};rport\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:tester@example.com>;tag={secrets.token_hex(4)}\r\n"
        "To: <sip:server@example.com>\r\n"
        f"Call-ID: {call_id}\r\n"
        f"CSeq: {cseq} {method}\r\n"
        f"{extra}"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def status_of(data: bytes) -> int:
    line = data.split(b"\r\n", 1)[0]
    parts = line.split(b" ", 2)
    assert parts[0] == b"SIP/2.0", data[:200]
    return int(parts[1])


def reason_of(data: bytes) -> str:
    return data.split(b"\r\n", 1)[0].split(b" ", 2)[2].decode()


class UdpClient:
    def __init__(self, host: str, port: int, timeout: float = 2.0) -> None:
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(fam, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.sock.settimeout(timeout)
        self.server = (host, port)
        self.host = host
        self.port = self.sock.getsockname()[1]

    def send(self, data: bytes) -> None:
        self.sock.sendto(data, self.server)

    def recv(self) -> bytes:
        data, _ = self.sock.recvfrom(70000)
        return data

    def request(self, data: bytes) -> bytes:
        self.send(data)
        return self.recv()

    def expect_nothing(self, wait: float = 0.3) -> None:
        self.sock.settimeout(wait)
        try:
            data = self.sock.recv(70000)
        except TimeoutError:
            return
        finally:
            self.sock.settimeout(2.0)
        raise AssertionError(f"unexpected answer: {data[:200]!r}")

    def close(self) -> None:
        self.sock.close()


class TcpClient:
    def __init__(self, host: str, port: int, timeout: float = 2.0) -> None:
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(fam, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect((host, port))
        self.host = host
        self.port = self.sock.getsockname()[1]
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv_message(self) -> bytes:
        """One framed message (header block plus Content-Length bytes)."""
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end >= 0:
                head = self.buf[:end].decode("latin-1")
                length = 0
                for line in head.split("\r\n")[1:]:
                    name, _, value = line.partition(":")
                    if name.strip().lower() in ("content-length", "l"):
                        length = int(value)
                total = end + 4 + length
                if len(self.buf) >= total:
                    msg, self.buf = self.buf[:total], self.buf[total:]
                    return msg
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed by server")
            self.buf += chunk

    def recv_raw(self) -> bytes:
        if self.buf:
            data, self.buf = self.buf, b""
            return data
        return self.sock.recv(65536)

    def read_until_closed(self, wait: float = 3.0) -> bytes | None:
        """Everything the server sends until it closes; None if it does not close."""
        self.sock.settimeout(wait)
        data = self.buf
        try:
            while chunk := self.sock.recv(65536):
                data += chunk
        except ConnectionResetError:
            pass
        except TimeoutError:
            return None
        return data

    def is_closed(self, wait: float = 2.0) -> bool:
        self.sock.settimeout(wait)
        try:
            return self.sock.recv(65536) == b""
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False

    def close(self) -> None:
        self.sock.close()


def tcp_refused(host: str, port: int, wait: float = 2.0) -> bool:
    """Whether a new TCP connection to ``host``:``port`` is refused: closed
    at once, or reset so fast that ``connect()`` itself reports the reset
    (a busy machine schedules the client after the server's answer)."""
    try:
        client = TcpClient(host, port)
    except ConnectionResetError:
        return True
    try:
        return client.is_closed(wait=wait)
    finally:
        client.close()


class Daemon:
    """A sipd subprocess listening on UDP and TCP, 127.0.0.1 and ::1."""

    def __init__(self, proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.proc = proc
        self.port = port
        self.log_path = log

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def ping(self, host: str = "127.0.0.1") -> int:
        c = UdpClient(host, self.port, timeout=1.0)
        try:
            return status_of(c.request(options(f"sip:{host if ':' not in host else f'[{host}]'}", via_host=host, via_port=c.port)))
        finally:
            c.close()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
                raise AssertionError("sipd did not stop on SIGTERM") from None
        return self.proc.returncode


@contextmanager
def running_sipd(
    tmp: Path, *args: str, unix: FakeUnix | None, pam: bool = False, port: int | None = None,
    mount: bool = False, stock: StockHost | None = None,
    launcher: Sequence[str] = (), extra_env: Mapping[str, str] | None = None,
    prefix: Sequence[str] = (), program: Sequence[str] = (),
) -> Iterator[Daemon]:
    """sipd under the fake users' NSS (and PAM), utmp/wtmp in ``tmp``.

    Without ``mount`` it runs with --no-mount; with it, a config file among
    ``args`` names the mountpoint. With ``stock`` it writes the stock
    utmp/wtmp paths instead, in a namespace where they are ``stock``'s files.
    ``launcher`` replaces ``-m sipd.cli`` (a wrapper that runs it), and
    ``program`` the whole command (an installed ``sipd``). ``extra_env``
    adds variables. ``prefix`` runs the whole command through another
    (nsenter into a namespace); without ``unix`` sipd gets the machine's NSS
    and PAM as that namespace has them. The log goes to :meth:`Daemon.log_path`, which is
    :func:`log_path` of ``tmp`` and the port: a test may create it first.
    """
    port = port or free_port()
    log = log_path(tmp, port)
    sipd = list(program) or ([sys.executable, *launcher] if launcher else SIPD)
    cmd = [*sipd, "-c", str(tmp / "none.toml"),
           "-l", f"127.0.0.1:{port}", "-l", f"[::1]:{port}", "-r", "test.invalid", *args]
    if not pam:
        cmd.append("--no-pam")
    if not mount:
        cmd.append("--no-mount")
    (tmp / "none.toml").write_text("")
    if unix is None:
        assert stock is None
        env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1",
               "SIPD_WTMP": str(tmp / "wtmp"), "SIPD_UTMP": str(tmp / "utmp")}
    elif stock is None:
        env = {**unix.env, "SIPD_WTMP": str(tmp / "wtmp"), "SIPD_UTMP": str(tmp / "utmp")}
    else:
        cmd, env = unix.command(cmd, stock.command())
        # Without PAM_WRAPPER, pam_wrapper stays idle and leaves no /tmp/pam.X
        # behind a daemon that a test kills.
        unset = ("SIPD_WTMP", "SIPD_UTMP") if pam else ("SIPD_WTMP", "SIPD_UTMP", "PAM_WRAPPER")
        env = {k: v for k, v in env.items() if k not in unset}
    env.update(extra_env or {})
    cmd = [*prefix, *cmd]
    with open(log, "wb") as logf:
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
    daemon = Daemon(proc, port, log)
    try:
        deadline = time.monotonic() + 20
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"sipd exited with {proc.returncode}: {daemon.log}")
            try:
                daemon.ping()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError(f"sipd did not answer: {daemon.log}") from None
        yield daemon
    finally:
        stop_process(proc, 10)


def log_path(tmp: Path, port: int) -> Path:
    """Where :func:`running_sipd` sends the standard error of the sipd on ``port``."""
    return tmp / f"sipd-{port}.log"


def wait_for(check: Callable[[], object], what: str, timeout: float = 10.0) -> None:
    """Poll ``check`` until it is true; fail naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)  # the poll interval


def listening(port: int, transport: str = "udp") -> bool:
    """Whether some process has a ``transport`` socket ready on ``port``.

    Read from /proc/net: a UDP socket bound to the port, or a TCP socket
    listening on it (a connection of a finished process that lingers in
    TIME_WAIT does not count).
    """
    tcp = transport == "tcp"
    for name in ("tcp", "tcp6") if tcp else ("udp", "udp6"):
        try:
            rows = Path(f"/proc/net/{name}").read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for row in rows:
            fields = row.split()
            local, state = fields[1], fields[3]
            if int(local.rsplit(":", 1)[1], 16) == port and (not tcp or state == "0A"):
                return True
    return False


def stop_process(proc: subprocess.Popen[Any], timeout: float = 5) -> None:
    """SIGTERM, then SIGKILL after ``timeout`` s: nothing a test starts outlives it."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def children(pid: int) -> list[int]:
    """The processes ``pid`` started that still run (sipd's unmount helper)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found.extend(int(c) for c in (task / "children").read_text().split())
        except FileNotFoundError:
            continue
    return found


@contextmanager
def mount_point(prefix: str = "srfs-mnt-") -> Iterator[Path]:
    """A mount point for the state filesystem, unmounted and removed after."""
    # Not under a 0700 temporary directory: other uids must reach the mount.
    base = Path(tempfile.mkdtemp(prefix=prefix))
    base.chmod(0o755)
    try:
        yield base / "sr"
    finally:
        subprocess.run(["fusermount3", "-u", "-z", str(base / "sr")], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


def without_flow_tokens(record_routes: Sequence[str]) -> list[str]:
    """Record-Route values with sipd's flow token (the user part of its own) left out."""
    return [re.sub(r"^<sip:[A-Za-z0-9_-]+@", "<sip:", v) for v in record_routes]
