"""Test files at the stock utmp and wtmp paths, in a private mount namespace.

glibc treats exactly ``/var/run/utmp`` and ``/var/log/wtmp`` specially (it
probes for ``utmpx``/``wtmpx`` first), and ``who`` and ``last`` read those
paths unless told otherwise, so some tests must use the paths themselves,
not SIPD_UTMP/SIPD_WTMP. The machine's own files are never touched: a
command started through :meth:`StockHost.command` runs in a new mount
namespace (``unshare --mount --propagation private``) in which the two
paths are bind mounts of files in the test's directory, and those mounts
die with the last process of the namespace. :meth:`StockHost.inside`
runs another command in the same namespace (``nsenter``).
"""

from __future__ import annotations

import functools
import grp
import os
import shutil
import subprocess
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from srfs.files.wtmp import DEFAULT_UTMP, DEFAULT_WTMP

UNSHARE = shutil.which("unshare")
NSENTER = shutil.which("nsenter")

# Arguments: path, file, path, file, command. Each file is mounted at its
# path, then the command is exec'd, keeping the pid unshare started with.
# Any failure stops the script before the command runs: it must never see
# the machine's own files.
_SETUP = r"""
cover() {
    target=$(readlink -m "$1")
    if [ ! -e "$target" ]; then
        # Nothing to mount over (a container without systemd-update-utmp):
        # a tmpfs over the directory, in this namespace only, makes room.
        mount -t tmpfs -o mode=0755 stock-host "$(dirname "$target")"
        : > "$target"
    fi
    mount --bind "$2" "$target"
}
cover "$1" "$2"
cover "$3" "$4"
shift 4
exec "$@"
"""


@dataclass(frozen=True, slots=True)
class StockHost:
    """The files that stand in for the stock utmp and wtmp inside the namespace."""

    utmp: Path
    wtmp: Path

    def command(self) -> list[str]:
        """The launcher: prefix a command with it to run it in a new namespace."""
        assert UNSHARE is not None
        return [UNSHARE, "--mount", "--propagation", "private", "--", "sh", "-euc", _SETUP,
                "stock-host", DEFAULT_UTMP, str(self.utmp), DEFAULT_WTMP, str(self.wtmp)]

    @staticmethod
    def inside(pid: int) -> list[str]:
        """The launcher for a command in the namespace of process ``pid``."""
        assert NSENTER is not None
        return [NSENTER, f"--target={pid}", "--mount", "--"]


def _fingerprint(path: str) -> tuple[int, int, int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns, st.st_mode


@functools.cache
def unavailable() -> str | None:
    """Why private mount namespaces with bind mounts cannot be had here, or None."""
    if UNSHARE is None or NSENTER is None:
        return "unshare(1) and nsenter(1) (util-linux) are needed"
    with tempfile.TemporaryDirectory(prefix="stock-host-probe-") as d:
        a, b = Path(d, "a"), Path(d, "b")
        a.touch()
        b.touch()
        r = subprocess.run(
            [UNSHARE, "--mount", "--propagation", "private", "--",
             "sh", "-euc", 'mount --bind "$1" "$2"', "probe", str(a), str(b)],
            capture_output=True, text=True, timeout=30, check=False,
        )
    if r.returncode != 0:
        return f"cannot bind-mount in a private mount namespace: {r.stderr.strip()}"
    return None


@contextmanager
def stock_host(tmp: Path) -> Iterator[StockHost]:
    """Empty root:utmp 0664 files, as Debian ships them, for the stock paths.

    Skips, with a warning so that it shows without ``-rs``, where no
    namespace can be had; fails if the machine's own files changed.
    """
    reason = unavailable()
    if reason:
        warnings.warn(f"stock utmp/wtmp paths not tested: {reason}", stacklevel=3)
        pytest.skip(reason)
    try:
        gid = grp.getgrnam("utmp").gr_gid
    except KeyError:
        gid = os.getgid()
    host = StockHost(tmp / "utmp", tmp / "wtmp")
    for path in (host.utmp, host.wtmp):
        path.touch()
        os.chown(path, 0, gid)
        path.chmod(0o664)
    before = [_fingerprint(p) for p in (DEFAULT_UTMP, DEFAULT_WTMP)]
    try:
        yield host
    finally:
        host.utmp.unlink(missing_ok=True)
        host.wtmp.unlink(missing_ok=True)
    assert [_fingerprint(p) for p in (DEFAULT_UTMP, DEFAULT_WTMP)] == before, \
        "the machine's own utmp or wtmp changed"

