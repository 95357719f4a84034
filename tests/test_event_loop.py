"""After start-up, nothing blocking runs on the event loop's thread.

The daemon runs under an audit hook (PEP 578) that records, on the main
thread between READY=1 and STOPPING=1, every event of a call that may
block: opening a file, resolving a name, listing a directory, starting a
process, calling a C function through ctypes (NSS, PAM, utmp). Then the
test does what users and phones do: registers over UDP and TCP, fails a
password, calls, reads and writes /run/sr, interrupts a reader waiting
for events, sends SIGHUP. Each of those
calls belongs in a worker thread; the record must stay empty.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from tests import default_signals
from tests.e2e.test_register_e2e import REALM, Phone
from tests.sipclient import UdpClient, options, running_sipd, status_of, stop_process, wait_for
from tests.unixusers import FakeUnix, give_passwords

pytestmark = pytest.mark.skipif(
    not os.path.exists("/dev/fuse") or os.geteuid() != 0,
    reason="needs /dev/fuse and root to mount the state filesystem",
)

WRAPPER = r"""
import atexit, ctypes, ctypes.util, json, os, sys, threading, traceback
record = os.environ["SIPD_BLOCKING_RECORD"]
main = threading.main_thread()
watching = False
seen = []
WATCH = {"open", "socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyaddr",
         "os.listdir", "os.scandir", "subprocess.Popen", "os.system", "os.exec",
         "ctypes.call_function"}
# setfsuid and setfsgid only change the calling thread's file identity
# (srfs.files.home.stamp_of looks at ~/.sr/passwd as its user): never blocking.
_libc = ctypes.CDLL(ctypes.util.find_library("c"))
IDENTITY = {ctypes.cast(f, ctypes.c_void_p).value for f in (_libc.setfsuid, _libc.setfsgid)}

busy = False

def hook(event, args):
    global busy
    if busy or not watching or event not in WATCH or threading.current_thread() is not main:
        return
    if event == "ctypes.call_function" and args[0] in IDENTITY:
        return
    busy = True  # formatting the stack opens source files: not again
    try:
        seen.append([event, repr(args)[:200], "".join(traceback.format_stack(limit=10)[:-1])])
    finally:
        busy = False

sys.addaudithook(hook)
import sipd.io.daemon as daemon
real = daemon.notify_systemd

def notify(state):
    global watching
    if state == "READY=1":
        watching = True
    elif state.startswith("STOPPING"):
        watching = False
    real(state)

daemon.notify_systemd = notify

def save():
    with open(record, "w") as f:
        json.dump(seen, f)

atexit.register(save)
sys.argv[0] = "sipd"
from sipd.cli import main as run
run()
"""


def sh(cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=30)


def test_nothing_blocks_the_event_loop_after_start_up(tmp_path: Path, unix: FakeUnix,
                                                      mnt: Path) -> None:
    passwords = give_passwords(unix, REALM, ("alice", "bob"))
    record = tmp_path / "blocking.json"
    conf = tmp_path / "sipd.toml"
    conf.write_text(f'mount = "{mnt}"\n')
    unix.env["SIPD_BLOCKING_RECORD"] = str(record)
    try:
        with running_sipd(tmp_path, "-c", str(conf), unix=unix, mount=True, pam=True,
                          launcher=("-c", WRAPPER)) as sipd:
            wait_for((mnt / "alice").exists, "the mount")
            for transport in ("udp", "tcp"):
                phone = Phone(sipd, "alice", passwords["alice"], transport=transport)
                try:
                    assert status_of(phone.register(password="wrong")) == 401
                    assert status_of(phone.register()) == 200
                finally:
                    phone.close()
            stranger = UdpClient("127.0.0.1", sipd.port)
            try:
                assert status_of(stranger.request(options(f"sip:127.0.0.1:{sipd.port}",
                                                          via_port=stranger.port))) == 200
                call = options(f"sip:bob@{REALM}", via_port=stranger.port, method="INVITE")
                stranger.send(call.replace(b"To: <sip:server@example.com>",
                                           f"To: <sip:bob@{REALM}>".encode()))
                while status_of(stranger.recv()) < 200:
                    pass
            finally:
                stranger.close()
            assert "aor=alice" in (mnt / "alice" / "contacts").read_text()
            assert "users:" in (mnt / "status").read_text()
            assert sh(f"echo yes > {mnt}/alice/config/dnd").returncode == 0
            assert sh(f"echo 'sip:pbx@192.0.2.9' >> {mnt}/alice/contacts").returncode == 0
            assert sh(f"rm {mnt}/alice/config/dnd").returncode == 0
            # A reader waiting for events, ended by Ctrl-C: sipd looks at its
            # signals in /proc, in a worker thread.
            cat = subprocess.Popen(["cat", str(mnt / "events")], stdout=subprocess.DEVNULL,
                                   preexec_fn=default_signals)
            try:
                wait_for(lambda: Path(f"/proc/{cat.pid}/wchan").read_text()
                         == "request_wait_answer", "cat to wait for an event")
                cat.send_signal(signal.SIGINT)
                assert cat.wait(5) == -signal.SIGINT
            finally:
                stop_process(cat)
            sipd.proc.send_signal(signal.SIGHUP)
            wait_for(lambda: "SIGHUP received" in sipd.log, "the reload")
            assert sipd.stop() == 0
    finally:
        unix.env.pop("SIPD_BLOCKING_RECORD", None)
        for name in ("usrloc", "config", "acc"):
            (unix["alice"].home / ".sr" / name).unlink(missing_ok=True)
    seen = json.loads(record.read_text())
    assert seen == [], "\n\n".join(f"{event} {args}\n{stack}" for event, args, stack in seen[:5])
