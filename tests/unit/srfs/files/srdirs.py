"""~/.sr as the home-file tests make and inspect it, and the C path that writes there."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sysconfig
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

from srfs.files import home
from srfs.user import User
from tests import REPO


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


@contextmanager
def homewrite() -> Iterator[ModuleType]:
    """srfs.files._homewrite: the wheel's own (``make test-compiled``), or in a
    checkout the checkout's C file, compiled as setup.py's build would, so
    that the C code is tested on every run."""
    if home._write_batch is not None:
        import srfs.files._homewrite as built
        yield built
        return
    out = Path(tempfile.mkdtemp(prefix="srfs-homewrite-"))
    try:
        target = out / f"_homewrite{sysconfig.get_config_var('EXT_SUFFIX')}"
        cc = os.environ.get("CC") or shutil.which("cc") or "gcc"
        subprocess.run([cc, "-shared", "-fPIC", "-O2", "-Wall", "-Werror",
                        f"-I{sysconfig.get_paths()['include']}",
                        str(REPO / "srfs" / "files" / "_homewrite.c"), "-o", str(target)],
                       check=True, capture_output=True, text=True)
        spec = importlib.util.spec_from_file_location("srfs.files._homewrite", target)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module
    finally:
        shutil.rmtree(out)
