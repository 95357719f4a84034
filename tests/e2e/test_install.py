"""make install and make uninstall, and the installed commands run as users would run them."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from sipd import __version__
from sipd.config import KEYS
from tests import REPO
from tests.installed import Installed, make, make_vars, run, tree
from tests.sipclient import free_port
from tests.unixusers import FakeUnix

REALM = "test.invalid"
PAGES = sorted(p.name for p in (REPO / "man").iterdir() if p.is_file())
FAIL2BAN = [part for part in ("filter.d", "jail.d")
            if (REPO / "contrib" / "fail2ban" / part / "sipd.conf").is_file()]


def test_installed_sipd_runs_the_installed_code(installed: Installed) -> None:
    done = run([installed.sipd, "--version"])
    # make install builds a wheel, which compiles the per-message code with
    # mypyc (setup.py; gcc and python3-dev are there).
    assert (done.returncode, done.stdout.strip()) == (
        0, f"sipd {__version__} (build: compiled with mypyc)"), done.stderr
    # -I: the checkout on PYTHONPATH or in the working directory changes nothing.
    head = installed.sipd.read_text().splitlines()[0]
    assert head == f"#!{installed.prefix}/lib/sipd/bin/python3 -I"
    where = run([installed.prefix / "lib" / "sipd" / "bin" / "python3", "-I", "-c",
                 "import sipd, pyfuse3, trio, h11; print(sipd.__file__)"],
                cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert where.stdout.startswith(f"{installed.prefix}/lib/sipd/lib/python3"), where


def test_the_runtime_holds_no_test_tools_nor_pip(installed: Installed) -> None:
    site = next((installed.prefix / "lib" / "sipd" / "lib").glob("python3*/site-packages"))
    found = {p.name.split("-")[0].lower() for p in site.glob("*.dist-info")}
    assert {"srfs", "trio", "pyfuse3", "python_pam", "h11"} <= found
    # sipmessage is the parser's test oracle, never imported at run time.
    assert not found & {"pytest", "hypothesis", "mypy", "ruff", "pip", "setuptools",
                        "sipmessage"}, found


def test_installed_check_config_reads_the_installed_sample(installed: Installed,
                                                           unix: FakeUnix, mnt: Path) -> None:
    done = subprocess.run(
        [str(installed.sipd), "-c", str(installed.conf), "--check-config", "-m", str(mnt),
         "-l", f"127.0.0.1:{free_port()}"],
        capture_output=True, text=True, timeout=60, env=unix.env, check=False)
    assert done.returncode == 0, done.stderr
    # Every key commented out: the built-in defaults.
    assert "max_contacts = 10" in done.stdout and 'group = "sip"' in done.stdout


def test_the_sample_config_is_for_every_user_to_read(installed: Installed) -> None:
    mode = installed.conf.stat().st_mode & 0o777
    assert mode == 0o644
    text = installed.conf.read_text()
    assert all(f"\n#{k.name} = " in text for k in KEYS)


@pytest.mark.parametrize("page", PAGES)
def test_man_finds_the_installed_pages(installed: Installed, page: str) -> None:
    if shutil.which("man") is None:
        pytest.fail("man is missing (Debian package man-db; tools/system-setup.sh installs it)")
    name, section = page.rsplit(".", 1)
    done = run(["man", "-M", installed.man, section, name],
               env={**os.environ, "MANPAGER": "cat", "MANWIDTH": "80", "LC_ALL": "C.UTF-8"})
    assert done.returncode == 0, done.stderr
    assert name.upper() in done.stdout.splitlines()[0], done.stdout[:200]


def test_a_user_sets_their_own_password_with_the_installed_sippasswd(
        installed: Installed, unix: FakeUnix) -> None:
    alice = unix["alice"]
    passwd = alice.home / ".sr" / "passwd"
    passwd.unlink(missing_ok=True)
    done = unix.run([str(installed.sippasswd), "-c", str(installed.conf), "-r", REALM, "--stdin"],
                    as_user="alice", input="mine\n")
    assert done.returncode == 0, done.stderr
    assert f"password for alice in realm {REALM} updated" in done.stdout
    assert passwd.stat().st_uid == alice.uid
    assert passwd.read_text().startswith(f"alice:{REALM}:")
    # Its own privilege model: the installed command refuses someone else's.
    other = unix.run([str(installed.sippasswd), "-c", str(installed.conf), "-r", REALM,
                      "--stdin", "bob"], as_user="alice", input="x\n")
    assert other.returncode == 2 and "only root" in other.stderr
    passwd.unlink()


@pytest.fixture
def destdir() -> Iterator[Path]:
    where = Path(tempfile.mkdtemp(prefix="sipd-destdir-"))
    try:
        yield where
    finally:
        shutil.rmtree(where, ignore_errors=True)


def expected_files() -> set[str]:
    out = {"usr/local/sbin/sipd", "usr/local/bin/sippasswd",
           "usr/local/lib/systemd/system/sipd.service",
           "etc/pam.d/sipd", "etc/sipd/sipd.conf",
           "usr/local/lib/sipd/installed-files", "usr/local/lib/sipd/installed-conf.sha256"}
    out |= {f"usr/local/share/man/man{p.rsplit('.', 1)[1]}/{p}" for p in PAGES}
    out |= {f"etc/fail2ban/{part}/sipd.conf" for part in FAIL2BAN}
    return out


def test_destdir_install_then_uninstall_leaves_nothing(destdir: Path) -> None:
    make("install", *make_vars(DESTDIR=destdir))
    files = {p for p in tree(destdir) if (destdir / p).is_file() or (destdir / p).is_symlink()}
    outside = {p for p in files if not p.startswith("usr/local/lib/sipd/")}
    assert outside == expected_files() - {p for p in expected_files()
                                          if p.startswith("usr/local/lib/sipd/")}
    # Written with the final paths, not the staging ones.
    assert (destdir / "usr/local/sbin/sipd").read_text().startswith(
        "#!/usr/local/lib/sipd/bin/python3 -I\n")
    unit = (destdir / "usr/local/lib/systemd/system/sipd.service").read_text()
    assert "ExecStart=/usr/local/sbin/sipd\n" in unit
    assert str(destdir) not in (destdir / "usr/local/lib/sipd/pyvenv.cfg").read_text()
    for path in files:
        if (destdir / path).is_file() and not path.endswith((".so", ".pyc")):
            assert str(destdir) not in (destdir / path).read_text(errors="replace"), path
    make("uninstall", *make_vars(DESTDIR=destdir))
    assert tree(destdir) == set()


def test_an_administrators_files_are_never_replaced_nor_removed(destdir: Path) -> None:
    conf = destdir / "etc" / "sipd" / "sipd.conf"
    conf.parent.mkdir(parents=True)
    conf.write_text('realm = "mine.example"\n')
    make("install", *make_vars(DESTDIR=destdir))
    assert conf.read_text() == 'realm = "mine.example"\n'
    # A file install made and the administrator then edited stays too.
    pam = destdir / "etc" / "pam.d" / "sipd"
    pam.write_text(pam.read_text() + "account required pam_access.so\n")
    # A second install keeps the list of what the first made.
    make("install", *make_vars(DESTDIR=destdir))
    done = make("uninstall", *make_vars(DESTDIR=destdir))
    assert "keeping /etc/pam.d/sipd: changed since it was installed" in done.stdout
    assert tree(destdir) == {"etc", "etc/sipd", "etc/sipd/sipd.conf", "etc/pam.d",
                             "etc/pam.d/sipd"}
    assert conf.read_text() == 'realm = "mine.example"\n'


def test_uninstall_without_an_install_says_so(destdir: Path) -> None:
    done = subprocess.run(["make", "--no-print-directory", "uninstall", f"DESTDIR={destdir}"],
                          cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode != 0
    assert "uninstall: no sipd installed in /usr/local" in done.stderr
