"""Write-through holds under kill -9: every binding that got a 200 OK is there after a restart.

sipd on its defaults (``sync = write-through``, registrations written in
groups) takes REGISTERs with digest auth from eight phones at once, each
registering a fresh contact of one of 64 users as fast as it is
answered. sipd is killed with SIGKILL while that goes on; a new sipd on
the same homes mounts the state filesystem, and each user's ``contacts``
there must list every contact that was answered 200 before the kill.

It runs twice: on the checkout's modules, where the home pool writes the
files, and on sipd as ``make install`` puts it, whose C part writes them
from sipd's own writing thread (the path a production host takes).
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from srfs.files.usrloc import Check, check_file
from tests.installed import Installed
from tests.phone import REALM, Phone
from tests.sipclient import running_sipd, status_of, wait_for
from tests.unixusers import FakeUnix, UserSpec, fake_unix, give_passwords

pytestmark = pytest.mark.skipif(
    not os.path.exists("/dev/fuse") or os.geteuid() != 0,
    reason="needs /dev/fuse and root to mount the state filesystem",
)

# Enough users that none reaches max_contacts (10) before the kill: a
# contact dropped for a newer one is the registrar's rule, and a kill
# after the newer one's file but before its answer would look like a loss.
NAMES = tuple(f"dur{i:02}" for i in range(64))
PHONES = 8


@pytest.fixture(scope="module")
def unix() -> Iterator[FakeUnix]:
    with fake_unix([UserSpec(n, primary="sip") for n in NAMES]) as u:
        yield u


def thread_names(pid: int) -> set[str]:
    names = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            names.add((task / "comm").read_text().strip())
        except FileNotFoundError:  # a thread that ended meanwhile
            continue
    return names


@pytest.mark.parametrize("build", ["checkout", "installed"])
def test_no_binding_answered_200_is_lost_on_kill_9(tmp_path: Path, unix: FakeUnix, mnt: Path,
                                                   build: str,
                                                   request: pytest.FixtureRequest) -> None:
    program: list[str] = []
    if build == "installed":
        installed: Installed = request.getfixturevalue("installed")
        program = [str(installed.sipd)]
    passwords = give_passwords(unix, REALM, NAMES)
    answered: list[tuple[str, str]] = []
    sent = [0]
    stop = threading.Event()
    lock = threading.Lock()

    def phone_loop(k: int, port: int) -> None:
        i = k
        while not stop.is_set():
            name = NAMES[i % len(NAMES)]
            i += PHONES
            try:
                with Phone(port, name, passwords[name], timeout=1.0) as phone:
                    with lock:
                        sent[0] += 1
                    reply = phone.register(expires=3600)
                    if status_of(reply) == 200:
                        with lock:
                            answered.append((name, f"sip:{name}@127.0.0.1:{phone.port}"))
            except (TimeoutError, ConnectionError):
                continue

    run1 = tmp_path / "run1"
    run1.mkdir()
    with running_sipd(run1, unix=unix, program=program) as daemon:
        threads = [threading.Thread(target=phone_loop, args=(k, daemon.port), daemon=True)
                   for k in range(PHONES)]
        for t in threads:
            t.start()
        try:
            wait_for(lambda: len(answered) >= 150, "150 registrations answered", timeout=60)
            # Killed in the middle of the load, not between two requests.
            assert daemon.alive()
            # The installed build writes from its C writing thread, the
            # checkout's from the home pool: a fallback would go unnoticed.
            named = thread_names(daemon.proc.pid)
            assert ("sipd-writer" in named) == (build == "installed"), named
            os.kill(daemon.proc.pid, signal.SIGKILL)
            daemon.proc.wait(10)
            killed_at = time.monotonic()
        finally:
            stop.set()
            for t in threads:
                t.join(10)
        with lock:
            acknowledged = list(answered)
        assert "Traceback" not in daemon.log
        assert "contact dropped for a newer one" not in daemon.log
    assert time.monotonic() - killed_at < 15
    assert sent[0] > len(acknowledged)  # requests were in flight at the kill
    # A kill leaves every file whole (the kernel still holds what was
    # written): as its first line says, whichever way it was synced.
    for name in {n for n, _ in acknowledged}:
        check, _ = check_file((unix[name].home / ".sr" / "usrloc").read_bytes())
        assert check is Check.WHOLE, name

    run2 = tmp_path / "run2"
    run2.mkdir()
    conf = run2 / "mount.toml"
    conf.write_text(f'mount = "{mnt}"\n')
    with running_sipd(run2, "-c", str(conf), unix=unix, mount=True,
                      program=program) as again:
        wait_for(lambda: (mnt / NAMES[0]).exists(), "the mount")
        loaded: dict[str, set[str]] = {}
        for name in NAMES:
            text = (mnt / name / "contacts").read_text()
            loaded[name] = {m.group(1) for m in re.finditer(r"^([^;\s]+)", text, re.M)}
        lost = [(n, c) for n, c in acknowledged if c not in loaded[n]]
        assert lost == [], f"{len(lost)} of {len(acknowledged)} acknowledged bindings lost"
        reloaded = sum(len(v) for v in loaded.values())
        assert reloaded >= len(set(acknowledged))
        assert re.search(rf"reloaded {reloaded} registration\(s\)", again.log), again.log
        assert "read its spare" not in again.log and "read the spare" not in again.log
        assert again.alive()
    for name in NAMES:
        for file in ("usrloc", ".usrloc.spare"):
            (unix[name].home / ".sr" / file).unlink(missing_ok=True)
