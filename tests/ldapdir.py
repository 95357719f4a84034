"""A real directory for tests: slapd and nslcd of their own, NSS through them in a namespace.

:func:`ldap_site` starts a ``slapd`` (Debian's, OpenLDAP) with a config and
an mdb database in a temporary directory, on a free port of 127.0.0.1,
logging every operation (``-d stats``: one ``SRCH`` line per search, which
:meth:`LdapSite.searches` counts), and fills it with POSIX users and groups
(``posixAccount``, ``shadowAccount``, ``posixGroup``). Then a private mount
namespace (``unshare --mount --propagation private``) is made in which

- ``/etc/nsswitch.conf`` says ``files ldap`` for passwd, group and shadow,
- ``/etc/nslcd.conf`` points at that slapd,
- ``/etc/pam.d`` holds only a ``sipd`` service (pam_unix's account check,
  which reads the shadow entry: an expiry set in LDAP counts there too),
- ``/run/nslcd`` is the test's (a tmpfs over ``/run`` where the machine
  has no such directory: nslcd's NSS module knows only that socket path),

and ``nslcd`` runs inside it. A process started with
:meth:`LdapSite.inside` (``nsenter``) looks its users up in LDAP as a
machine configured for it would; the machine's own files are never
touched, and the namespace's mounts, the FUSE mount of a sipd started in it
among them, die with its last process. Files the test process reads in the
namespace it reads through ``/proc/PID/root`` (:meth:`LdapSite.path`).

Needs root, Debian's slapd, ldap-utils and libnss-ldapd (nslcd), and
unshare/nsenter; skips with the reason otherwise. Everything is stopped
and removed on exit, whatever happened.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.sipclient import free_port, listening, stop_process, wait_for
from tests.stockhost import unavailable as no_namespaces
from tests.unixusers import REPO, _unused_ids

SUFFIX = "dc=test,dc=invalid"
ADMIN = f"cn=admin,{SUFFIX}"
ADMIN_PW = "test-admin-secret"
NSS_LDAP = "libnss_ldap.so.2"

_SLAPD_CONF = """\
include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/nis.schema
pidfile {root}/slapd.pid
modulepath /usr/lib/ldap
moduleload back_mdb
database mdb
maxsize 16777216
suffix "{suffix}"
rootdn "{admin}"
rootpw {password}
directory {root}/db
index objectClass eq
index uid,cn,memberUid eq
"""

# nslcd as root (no uid/gid lines), logging to a file. Its time limits are
# shorter than Debian's (10 s to bind, none for a search) so that an outage
# shows within seconds: what sipd makes of it is the same.
_NSLCD_CONF = """\
uri ldap://127.0.0.1:{port}/
base {suffix}
log {root}/nslcd.log info
bind_timelimit 3
timelimit 3
reconnect_sleeptime 1
reconnect_retrytime 5
"""

_NSSWITCH = """\
passwd: files ldap
group: files ldap
shadow: files ldap
"""

_PAM_SIPD = "account required pam_unix.so\n"

# Arguments: the test's directory, then the command to exec. Any failure
# stops the script before the command runs: it must never see the
# machine's own files in place of the test's.
_SETUP = r"""
root=$1
shift
mount --bind "$root/nsswitch.conf" /etc/nsswitch.conf
mount --bind "$root/nslcd.conf" /etc/nslcd.conf
mount --bind "$root/pam.d" /etc/pam.d
if [ -d /run/nslcd ]; then
    mount --bind "$root/nslcd-run" /run/nslcd
else
    mount -t tmpfs -o mode=0755 ldap-site /run
    mkdir /run/nslcd
fi
exec "$@"
"""


@dataclass(frozen=True)
class LdapUser:
    name: str
    uid: int
    gid: int
    home: Path


@dataclass
class LdapSite:
    root: Path
    port: int
    group: str
    gid: int
    slapd: subprocess.Popen[bytes]
    holder: subprocess.Popen[bytes]
    nslcd: subprocess.Popen[bytes]
    users: dict[str, LdapUser] = field(default_factory=dict)

    def __getitem__(self, name: str) -> LdapUser:
        return self.users[name]

    @property
    def slapd_log(self) -> Path:
        return self.root / "slapd.log"

    @property
    def nslcd_log(self) -> Path:
        return self.root / "nslcd.log"

    def inside(self) -> list[str]:
        """The launcher of a command in the namespace (nsenter, which execs it)."""
        return ["nsenter", f"--target={self.holder.pid}", "--mount", "--"]

    def path(self, path: Path | str) -> Path:
        """``path`` as the processes in the namespace see it (a FUSE mount there)."""
        return Path(f"/proc/{self.holder.pid}/root") / Path(path).relative_to("/")

    def run(self, argv: Sequence[str], *, input: str | None = None,
            timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """``argv`` in the namespace, as root."""
        env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1"}
        return subprocess.run([*self.inside(), *argv], input=input, capture_output=True,
                              text=True, timeout=timeout, env=env, cwd=self.root, check=False)

    # ------------------------------------------------------------ the directory

    def ldap(self, tool: str, ldif: str) -> None:
        """ldapadd or ldapmodify with ``ldif``, as the directory's administrator."""
        r = subprocess.run([tool, "-x", "-H", f"ldap://127.0.0.1:{self.port}/", "-D", ADMIN,
                            "-w", ADMIN_PW], input=ldif, capture_output=True, text=True,
                           timeout=30, check=False)
        assert r.returncode == 0, f"{tool} failed: {r.stderr}"

    def add_user(self, name: str, *, primary_sip: bool = False) -> LdapUser:
        """A posixAccount with a home of its own; its primary group is the SIP
        group with ``primary_sip``, else a group of its own."""
        taken = {u.uid for u in self.users.values()} | {self.gid}
        uid = _unused_ids(61001, 1, taken)[0]
        gid = self.gid if primary_sip else uid
        home = self.root / "home" / name
        home.mkdir(mode=0o700)
        os.chown(home, uid, gid)
        ldif = (f"dn: uid={name},ou=people,{SUFFIX}\n"
                "objectClass: account\nobjectClass: posixAccount\nobjectClass: shadowAccount\n"
                f"uid: {name}\ncn: {name}\nuidNumber: {uid}\ngidNumber: {gid}\n"
                f"homeDirectory: {home}\nloginShell: /bin/sh\nuserPassword: *\n")
        if not primary_sip:
            ldif += (f"\ndn: cn={name},ou=groups,{SUFFIX}\nobjectClass: posixGroup\n"
                     f"cn: {name}\ngidNumber: {gid}\n")
        self.ldap("ldapadd", ldif)
        user = LdapUser(name, uid, gid, home)
        self.users[name] = user
        return user

    def set_members(self, names: Sequence[str]) -> None:
        """The SIP group's listed members (memberUid) become ``names``."""
        ldif = f"dn: cn={self.group},ou=groups,{SUFFIX}\nchangetype: modify\nreplace: memberUid\n"
        ldif += "".join(f"memberUid: {n}\n" for n in names)
        self.ldap("ldapmodify", ldif)

    def expire(self, name: str, day: int) -> None:
        """``name``'s shadowExpire: a day number since 1970 (1: long expired)."""
        self.ldap("ldapmodify", f"dn: uid={name},ou=people,{SUFFIX}\nchangetype: modify\n"
                                f"replace: shadowExpire\nshadowExpire: {day}\n")

    def searches(self) -> int:
        """LDAP searches slapd served so far (its ``SRCH base=`` log lines)."""
        return len(re.findall(r" SRCH base=", self.slapd_log.read_text(errors="replace")))

    def search_filters(self, since: int = 0) -> list[str]:
        """The filters of the searches after the first ``since``, in order."""
        found = re.findall(r' SRCH base="[^"]*" scope=\d+ deref=\d+ filter="([^"]*)"',
                           self.slapd_log.read_text(errors="replace"))
        return found[since:]

    @contextmanager
    def slapd_paused(self) -> Iterator[None]:
        """slapd stopped (SIGSTOP): connections open, nothing answered; resumed after."""
        os.kill(self.slapd.pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.kill(self.slapd.pid, signal.SIGCONT)


def skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root: slapd's users get homes of their own, nslcd runs in a namespace"
    for tool in ("slapd", "nslcd", "ldapadd", "nsenter", "unshare"):
        if shutil.which(tool) is None and not os.path.exists(f"/usr/sbin/{tool}"):
            return f"{tool} not found (Debian packages slapd, libnss-ldapd, ldap-utils, util-linux)"
    if not any(Path(d, NSS_LDAP).exists() for d in ("/lib/x86_64-linux-gnu", "/usr/lib",
                                                      "/lib", "/usr/lib/x86_64-linux-gnu",
                                                      "/lib/aarch64-linux-gnu")):
        return f"{NSS_LDAP} not found (Debian package libnss-ldapd)"
    if not os.path.exists("/etc/nslcd.conf"):
        return "/etc/nslcd.conf not found (Debian package nslcd): the test's is mounted over it"
    return no_namespaces()


def _sbin(tool: str) -> str:
    return shutil.which(tool) or f"/usr/sbin/{tool}"


@contextmanager
def ldap_site(group: str = "ldapsip") -> Iterator[LdapSite]:
    """slapd with an empty tree and the SIP group ``group`` (no members), nslcd
    in a namespace of its own; everything stopped and removed on exit."""
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    root = Path(tempfile.mkdtemp(prefix="srfs-ldap-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        # The users must reach their homes.
        root.chmod(0o755)
        (root / "db").mkdir()
        (root / "home").mkdir(mode=0o755)
        (root / "nslcd-run").mkdir(mode=0o755)
        (root / "pam.d").mkdir(mode=0o755)
        (root / "pam.d" / "sipd").write_text(_PAM_SIPD)
        port = free_port()
        (root / "slapd.conf").write_text(_SLAPD_CONF.format(root=root, suffix=SUFFIX,
                                                             admin=ADMIN, password=ADMIN_PW))
        (root / "nslcd.conf").write_text(_NSLCD_CONF.format(root=root, port=port, suffix=SUFFIX))
        (root / "nsswitch.conf").write_text(_NSSWITCH)
        for name in ("slapd.conf", "nslcd.conf", "nsswitch.conf"):
            (root / name).chmod(0o644)
        with open(root / "slapd.log", "wb") as out:
            slapd = subprocess.Popen(
                [_sbin("slapd"), "-f", str(root / "slapd.conf"), "-h",
                 f"ldap://127.0.0.1:{port}/", "-d", "stats"],
                stdout=out, stderr=subprocess.STDOUT)
        procs.append(slapd)
        wait_for(lambda: listening(port, "tcp") or slapd.poll() is not None, "slapd")
        assert slapd.poll() is None, (root / "slapd.log").read_text()
        holder = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "--",
                                   "sh", "-euc", _SETUP, "ldap-site", str(root),
                                   "sleep", "infinity"])
        procs.append(holder)

        def in_namespace() -> bool:
            assert holder.poll() is None, "the namespace could not be set up"
            try:
                return os.readlink(f"/proc/{holder.pid}/exe").endswith("sleep")
            except OSError:
                return False

        wait_for(in_namespace, "the namespace")
        nslcd = subprocess.Popen(["nsenter", f"--target={holder.pid}", "--mount", "--",
                                  _sbin("nslcd"), "-n"], stderr=subprocess.DEVNULL)
        procs.append(nslcd)
        gid = _unused_ids(61500, 1, set())[0]
        site = LdapSite(root, port, group, gid, slapd, holder, nslcd)
        site.ldap("ldapadd", f"""\
dn: {SUFFIX}
objectClass: dcObject
objectClass: organization
o: test
dc: test

dn: ou=people,{SUFFIX}
objectClass: organizationalUnit
ou: people

dn: ou=groups,{SUFFIX}
objectClass: organizationalUnit
ou: groups

dn: cn={group},ou=groups,{SUFFIX}
objectClass: posixGroup
cn: {group}
gidNumber: {gid}
""")
        wait_for(lambda: site.run(["getent", "group", group]).returncode == 0,
                 "the SIP group through nslcd")
        yield site
    finally:
        for proc in reversed(procs):
            try:
                # A stopped process would not see SIGTERM.
                os.kill(proc.pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
            stop_process(proc)
        shutil.rmtree(root, ignore_errors=True)

