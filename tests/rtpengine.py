"""A real rtpengine for the tests: userspace only, on 127.0.0.1, stopped whatever happens.

:func:`running_rtpengine` starts Debian's ``rtpengine`` without its kernel
module (``--table=-1``), with no config file, its ng socket on a free port
of 127.0.0.1 and its media ports (on 127.0.0.1 too unless told another
address of this host) in a small window of its own below the ephemeral range
(where the test's sipp and sipd ports come from); :class:`Rtpengine` asks
it ng questions (``list``, ``query``) the way the tests check what it did.
The ng messages are made with the project's codec; the ones a test
compares with are rtpengine's own.
"""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sipd.media.ng import decode, encode
from tests.sipclient import free_port, stop_process

BINARY = "/usr/bin/rtpengine"
#: Media ports: windows of this many, somewhere in 20000-29999.
PORT_WINDOW = 100


def rtpengine_binary() -> str | None:
    """rtpengine's path, or None when Debian's rtpengine-daemon is not installed."""
    found = shutil.which("rtpengine")
    return found or (BINARY if Path(BINARY).exists() else None)


class Rtpengine:
    """One rtpengine process and an ng client for it."""

    def __init__(self, proc: subprocess.Popen[bytes], port: int, ports: range, log: Path,
                 interface: str = "127.0.0.1") -> None:
        self.proc = proc
        self.port = port
        self.ports = ports
        #: Where its media ports are: the address its SDP names.
        self.interface = interface
        self.log_path = log
        self.address = f"udp:127.0.0.1:{port}"
        self._seq = 0

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def ng(self, message: dict[str, Any], timeout: float = 1.0) -> dict[str, Any]:
        """rtpengine's reply to ``message``; OSError when it does not answer."""
        self._seq += 1
        cookie = f"test{self._seq}"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(timeout)
            s.connect(("127.0.0.1", self.port))
            s.send(encode(cookie, message))
            while True:
                got, reply = decode(s.recv(65536))
                if got == cookie:
                    return reply

    def calls(self) -> list[str]:
        """The Call-IDs rtpengine holds now."""
        reply = self.ng({"command": "list"})
        assert reply.get("result") == "ok", reply
        return list(reply.get("calls", []))

    def packets(self, call_id: str) -> dict[str, int]:
        """RTP packets rtpengine received, per tag (each party's side), for ``call_id``."""
        reply = self.ng({"command": "query", "call-id": call_id})
        assert reply.get("result") == "ok", reply
        out: dict[str, int] = {}
        for tag, side in reply.get("tags", {}).items():
            total = 0
            for media in side.get("medias", []):
                for stream in media.get("streams", []):
                    if "RTP" in stream.get("flags", []):
                        total += int(stream.get("stats", {}).get("packets", 0))
            out[tag] = total
        return out


@contextmanager
def running_rtpengine(tmp: Path, interface: str = "127.0.0.1") -> Iterator[Rtpengine]:
    """rtpengine in the foreground, answering ng on 127.0.0.1, its media ports on
    ``interface``; killed at the end, also on failure."""
    binary = rtpengine_binary()
    assert binary is not None, "rtpengine is not installed (Debian package rtpengine-daemon)"
    port = free_port()
    start = 20000 + random.randrange(100) * PORT_WINDOW
    ports = range(start, start + PORT_WINDOW)
    log = tmp / f"rtpengine-{port}.log"
    cmd = [binary, "--config-file=none", "--table=-1", f"--interface={interface}",
           f"--listen-ng=127.0.0.1:{port}", "--foreground", "--log-stderr",
           f"--port-min={ports.start}", f"--port-max={ports.stop - 1}",
           # A deleted call leaves at once, so "list" tells that it was deleted.
           "--delete-delay=0", "--log-level=7"]
    with open(log, "wb") as logf:
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
    engine = Rtpengine(proc, port, ports, log, interface)
    try:
        deadline = time.monotonic() + 15
        while True:
            assert proc.poll() is None, f"rtpengine exited with {proc.returncode}: {engine.log}"
            try:
                if engine.ng({"command": "ping"}, timeout=0.2).get("result") == "pong":
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"rtpengine did not answer ng: {engine.log}"
        yield engine
    finally:
        stop_process(proc)
