"""What start-up read stands in for each member's first look-up, and no longer.

After a restart every phone registers again, each an account look-up.
:meth:`Directory.prime` gives the directory the SIP group's members as
start-up listed them, so the first look-up of each makes no NSS look-up
(unless the shadow entry or PAM refuses: then the group is asked, since
it is what tells an outage from a refusal); start-up's check of every member's ``~/.sr/passwd``
reads it through the directory, so the first authentication has nothing
to read. The child processes count the NSS look-ups (calls of
``users.lookup``) and the file reads under nss_wrapper and pam_wrapper,
as tests/unit/srfs/accounts/test_state.py does.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import pytest

from srfs.accounts.passwd import Entry
from tests.unit.srfs.files.test_home import make_sr, user_file
from tests.unixusers import FakeUnix, UserSpec, fake_unix

USERS = (
    UserSpec("acme", groups=("sip",)),
    UserSpec("jan", groups=("sip",)),
    UserSpec("locked", groups=("sip",)),
    UserSpec("outsider"),
)

_CHILD = """
import json
from srfs.accounts import users
from srfs.accounts.directory import Directory

looked_up = []
real_lookup = users.lookup

def counted(name):
    looked_up.append(name)
    return real_lookup(name)

users.lookup = counted
group_looks = []
real_member = users.is_sip_member

def counted_member(user, *args, **kwargs):
    group_looks.append(user.name)
    return real_member(user, *args, **kwargs)

users.is_sip_member = counted_member
now = [1000.0]
members = [real_lookup(name) for name in ("acme", "jan", "locked")]
out = {}

def directory():
    d = Directory("test.invalid", "sip", "sipd", clock=lambda: now[0], ttl=60.0)
    d.prime(members)
    return d

def look(d, tag, name):
    before, groups_before = len(looked_up), len(group_looks)
    account = d.account(name)
    out[tag] = {"account": None if account is None else [account.allowed, account.reason],
                "nss": len(looked_up) - before, "group": len(group_looks) - groups_before}

d = directory()
look(d, "acme", "acme")
look(d, "locked", "locked")
look(d, "outsider", "outsider")
look(d, "nobody", "nobody")
d.forget()
look(d, "acme after forget", "acme")
look(d, "jan after forget", "jan")

d = directory()
now[0] += 60.0
look(d, "jan after the ttl", "jan")

d = directory()
d.forget_user("jan")
look(d, "jan after leaving", "jan")
look(d, "acme beside", "acme")
print(json.dumps(out))
"""


@pytest.fixture
def unix() -> Iterator[FakeUnix]:
    with fake_unix(USERS) as u:
        u.set_shadow("locked", "!$6$salt$hash")
        yield u


def _run(unix: FakeUnix) -> dict[str, dict[str, object]]:
    done = subprocess.run([sys.executable, "-c", _CHILD], env=unix.env, cwd=unix.root,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    assert isinstance(got, dict)
    return got


def test_a_primed_member_is_not_looked_up_but_still_checked(unix: FakeUnix) -> None:
    got = _run(unix)
    assert got["acme"]["nss"] == 0 and got["acme"]["group"] == 0
    assert got["acme"]["account"][0] is True  # type: ignore[index]
    # The shadow entry is still read: a locked member is refused with no
    # look-up of the user; the refusal has the group asked, which is what
    # would have told an outage (below).
    assert got["locked"] == {"account": [False, "password locked (usermod -L)"], "nss": 0,
                             "group": 1}
    # Who was not listed is looked up as before.
    assert got["outsider"] == {"account": [False, "not a member of group sip"], "nss": 1,
                               "group": 1}
    assert got["nobody"] == {"account": None, "nss": 1, "group": 0}


def test_the_prime_serves_once_and_goes_with_what_forgets_states(unix: FakeUnix) -> None:
    got = _run(unix)
    # Used up by the first look-up...
    assert got["acme after forget"]["nss"] == 1
    # ...and forgotten whole with every state (SIGHUP, a changed account file).
    assert got["jan after forget"]["nss"] == 1
    assert got["jan after forget"]["account"][0] is True  # type: ignore[index]
    # No older than an account state may be.
    assert got["jan after the ttl"]["nss"] == 1
    # A user who left the group (or joined it) is looked up again; the others are not.
    assert got["jan after leaving"]["nss"] == 1
    assert got["acme beside"]["nss"] == 0


_READS_CHILD = """
import json, sys
from srfs.accounts import users
from srfs.accounts.directory import Directory
from srfs.files import home
from sipd.io.startup import password_problem

reads = []
real_read = home.SrDir.read_stamped

def counted(self, name, *args, **kwargs):
    reads.append(name)
    return real_read(self, name, *args, **kwargs)

home.SrDir.read_stamped = counted
acme = users.lookup("acme")
d = Directory("test.invalid", "sip", "sipd", ttl=60.0)
out = {"problem": password_problem(acme, "test.invalid", d.passwd_entries),
       "other realm": password_problem(acme, "elsewhere.invalid", d.passwd_entries),
       "reads at start": len(reads)}
account = d.account("acme")
out["reads at the first authentication"] = len(reads) - out["reads at start"]
out["ha1"] = sorted(account.ha1)

# The call settings come through the open that read passwd.
from sipd.proxy.users import HomeUsers
opens = []
real_open = home.SrDir.open.__func__

def counted_open(cls, user, **kwargs):
    opens.append(user.name)
    return real_open(cls, user, **kwargs)

home.SrDir.open = classmethod(counted_open)
settings = HomeUsers("sip", d.state)
fresh = Directory("test.invalid", "sip", "sipd", ttl=60.0)
account = fresh.account("acme", also=lambda u, sr: settings.learn_in(u, settings.generation, sr))
out["opens for passwd and config"] = len(opens)
found = settings.find_cached("acme")
out["config kept"] = None if found is None else found[1].get("forward")
out["ha1 again"] = sorted(account.ha1)
print(json.dumps(out))
"""


def test_start_up_reads_passwd_for_the_first_authentication_and_a_look_up_opens_sr_once(
        unix: FakeUnix) -> None:
    acme = unix["acme"].user
    make_sr(acme)
    user_file(acme, "passwd",
              (Entry.from_password("acme", "test.invalid", "secret").render() + "\n").encode())
    user_file(acme, "config", b"forward = sip:elsewhere@example.org\n")
    done = subprocess.run([sys.executable, "-c", _READS_CHILD], env=unix.env, cwd=unix.root,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    assert got["problem"] is None
    assert got["other realm"] == 'entries only for realm "test.invalid"'
    assert got["reads at start"] == 1  # the second look found it kept
    assert got["reads at the first authentication"] == 0
    assert got["ha1"] == ["MD5", "SHA-256"]
    # A look-up opens ~/.sr once for both of the files it keeps.
    assert got["opens for passwd and config"] == 1
    assert got["config kept"] == "sip:elsewhere@example.org"
    assert got["ha1 again"] == ["MD5", "SHA-256"]


_OUTAGE_CHILD = """
import json, os, sys
from srfs.accounts import users
from srfs.accounts.directory import Directory
from srfs.accounts.nss import DirectoryUnavailable

members = [users.lookup(name) for name in ("acme", "locked")]
d = Directory("test.invalid", "sip", "sipd", ttl=60.0)
d.prime(members)
# The group database fails from here on (a link to itself: ELOOP), as a
# directory server that stopped answering does.
group = sys.argv[1]
os.unlink(group)
os.symlink(group, group)
out = {}
for name in ("acme", "locked"):
    try:
        account = d.account(name)
        out[name] = None if account is None else [account.allowed, account.reason]
    except DirectoryUnavailable:
        out[name] = "unavailable"
print(json.dumps(out))
"""


def test_a_primed_member_in_an_outage_is_an_outage_not_a_refusal(unix: FakeUnix) -> None:
    # A refusal would count as a failed login (throttling, fail2ban); what
    # start-up found must not hide that the user database fails.
    done = subprocess.run([sys.executable, "-c", _OUTAGE_CHILD, str(unix.group)],
                          env=unix.env, cwd=unix.root, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"acme": "unavailable", "locked": "unavailable"}
