"""~/.sr as the home-file tests make and inspect it."""

from __future__ import annotations

import os
from pathlib import Path

from srfs.user import User


def sr_path(user: User) -> Path:
    return Path(user.home) / ".sr"


def make_sr(user: User, mode: int = 0o700) -> Path:
    """~/.sr as the user would make it."""
    p = sr_path(user)
    p.mkdir()
    os.chown(p, user.uid, user.gid)
    p.chmod(mode)
    return p


def temp_files(user: User) -> list[str]:
    return [n for n in os.listdir(sr_path(user)) if n.endswith(".tmp")]


def thread_fs_ids() -> tuple[int, int]:
    """The calling thread's file-system uid and gid, as the kernel sees them."""
    fields = {}
    for line in Path("/proc/thread-self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.split()
    return int(fields["Uid"][3]), int(fields["Gid"][3])
