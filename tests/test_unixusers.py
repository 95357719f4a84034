"""The fake UNIX users' own helpers: clean-up of pam_wrapper's directories, the wrappers' lines."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from pathlib import Path

from tests.unixusers import PAM_WRAPPER_DIRS, own_stderr, remove_stale_pam_dirs


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def _copy(pamd: Path, pid: int, extra: dict[str, bytes] | None = None) -> Path:
    found = PAM_WRAPPER_DIRS / f"pam.test-{secrets.token_hex(4)}"
    found.mkdir()
    (found / "pid").write_text(str(pid))
    for p in pamd.iterdir():
        (found / p.name).write_bytes(p.read_bytes())
    for name, data in (extra or {}).items():
        (found / name).write_bytes(data)
    return found


def test_only_copies_of_our_services_left_by_ended_processes_are_removed(tmp_path: Path) -> None:
    pamd = tmp_path / "pam.d"
    pamd.mkdir()
    (pamd / "sipd").write_bytes(b"account required pam_unix.so\n")
    (pamd / "sipd-locked").write_bytes(b"account required pam_deny.so\n")
    dead = _dead_pid()
    made = [
        stale := _copy(pamd, dead),
        running := _copy(pamd, os.getpid()),
        other := _copy(pamd, dead, {"login": b"auth required pam_deny.so\n"}),
    ]
    try:
        assert remove_stale_pam_dirs(pamd) == [stale]
        assert not stale.exists() and running.exists() and other.exists()
    finally:
        for found in made:
            shutil.rmtree(found, ignore_errors=True)


def test_the_wrappers_lines_are_left_out_of_a_childs_stderr() -> None:
    text = ("NWRAP_ERROR(4242) - nwrap_files_cache_reload: Unable to open '/x'\n"
            "pwrap_init: Failed to create pam_wrapper config dir: /tmp/pam.a - File exists\n"
            "sipd: group 'voip' does not exist\n"
            "  pwrap_init: not at the start of the line\n")
    assert own_stderr(text) == ("sipd: group 'voip' does not exist\n"
                                "  pwrap_init: not at the start of the line\n")
