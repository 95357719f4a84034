"""``make install`` into a throw-away prefix, for the tests of what it installs.

The install is real (the project's wheel, a venv on Debian's python3 with
the runtime dependencies, the wrappers, man pages, unit and /etc files),
made once per test session into a prefix under /tmp that every user may
traverse, so that a fake user can run the installed ``sippasswd``. Paths
in the installed files are the real ones (PREFIX, not DESTDIR), so the
installed commands run as they would from /usr/local.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests import REPO

#: A first build compiles pyfuse3; later ones reuse pip's cache.
MAKE_TIMEOUT = 900


@dataclass(frozen=True)
class Installed:
    """Where ``make install PREFIX=... SYSCONFDIR=...`` put everything."""

    prefix: Path
    etc: Path

    @property
    def sipd(self) -> Path:
        return self.prefix / "sbin" / "sipd"

    @property
    def sippasswd(self) -> Path:
        return self.prefix / "bin" / "sippasswd"

    @property
    def man(self) -> Path:
        return self.prefix / "share" / "man"

    @property
    def unit(self) -> Path:
        return self.prefix / "lib" / "systemd" / "system" / "sipd.service"

    @property
    def conf(self) -> Path:
        return self.etc / "sipd" / "sipd.conf"


def make(*args: str, timeout: float = MAKE_TIMEOUT) -> subprocess.CompletedProcess[str]:
    """``make ARGS`` in the repository; fails the test with make's output."""
    if shutil.which("make") is None:
        pytest.fail("make is missing (Debian package make)")
    proc = subprocess.run(["make", "--no-print-directory", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, check=False)
    assert proc.returncode == 0, f"make {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


def make_vars(**values: Path | str) -> list[str]:
    return [f"{k}={v}" for k, v in values.items()]


@contextmanager
def installed_prefix() -> Iterator[Installed]:
    """Install into a fresh prefix (and /etc of its own); remove it all after."""
    base = Path(tempfile.mkdtemp(prefix="sipd-install-"))
    try:
        base.chmod(0o755)  # fake users run the installed sippasswd from here
        where = Installed(base / "prefix", base / "etc")
        make("install", *make_vars(PREFIX=where.prefix, SYSCONFDIR=where.etc))
        yield where
    finally:
        shutil.rmtree(base, ignore_errors=True)


def tree(root: Path) -> set[str]:
    """Every path under ``root``, relative, directories included."""
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def run(argv: Sequence[str | Path], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=60,
                          check=False, **kw)  # type: ignore[call-overload]
