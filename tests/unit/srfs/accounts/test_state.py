"""One account state: the SIP group, a locked or expired shadow entry, PAM; cached, and forgotten.

The checks that read NSS run in a child process under nss_wrapper and
pam_wrapper (preloaded libraries never apply to the test process). What
was found by trying, and why the shadow step is sipd's own:

- nss_wrapper 1.1.12 interposes ``getspnam`` (and ``getspent``) from the
  file named by ``NSS_WRAPPER_SHADOW``, but not ``getspnam_r``.
- pam_unix's account check reads the shadow entry with ``getspnam_r``
  (``pam_modutil_getspnam``), which therefore goes to the host's real
  shadow file: for a fake user whose passwd field is ``x`` it answers "User
  not known to the underlying authentication module", whatever the fake
  shadow file says. So pam_unix cannot show a fake expired or locked
  account, and it never refuses a locked password at all (that is
  ``pam_authenticate``'s business, which SIP never runs).

sipd's own shadow step reads ``getspnam`` through NSS, so these tests
exercise the very code path that runs on a host, and the shadow file the
wrappers read stands for ``/etc/shadow``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from srfs.accounts.state import SystemFiles, shadow_refusal
from tests.unixusers import DEFAULT_PAM_SERVICE, FakeUnix, UserSpec, fake_unix

USERS = (
    UserSpec("acme", groups=("sip",)),
    UserSpec("jan", groups=("sip",)),
    UserSpec("outsider"),
)


@pytest.fixture
def unix(tmp_path: Path) -> Iterator[FakeUnix]:
    with fake_unix(USERS) as u:
        deny = u.root / "sip-deny"
        deny.write_text("")
        deny.chmod(0o644)
        # A PAM refusal from a module's own data, as pam_listfile, sssd or
        # LDAP give it: nothing sipd watches changes.
        u.add_pam_service("sipd", DEFAULT_PAM_SERVICE + (
            f"account required pam_listfile.so item=user sense=deny file={deny} onerr=succeed\n"))
        yield u


_PROBE = """
import json, sys
from srfs.accounts.directory import Directory
from srfs.accounts.state import SystemFiles, system_files
from sipd.proxy.users import HomeUsers

now = [1000.0]
d = Directory("test.invalid", "sip", "sipd", clock=lambda: now[0],
              files=SystemFiles(system_files("sipd")), locked_suspends=sys.argv[1] == "yes")
out = {}

def states(tag):
    for name in ("acme", "jan", "outsider", "nobody"):
        s = d.state_of(name)
        out[f"{tag} {name}"] = None if s is None else [s.allowed, s.reason]

states("first")
out["find acme"] = HomeUsers("sip", d.state).find("acme")[0]
print(json.dumps(out), flush=True)
# The parent changes files, then says which step to take.
for line in sys.stdin:
    step = line.strip()
    if step == "cached":
        states("cached")
    elif step == "files":
        out["changed"] = d.files_changed()
        states("files")
    elif step == "later":
        now[0] += 61
        states("later")
    elif step == "forget":
        d.forget()
        states("forget")
    out["find acme"] = HomeUsers("sip", d.state).find("acme")[0]
    print(json.dumps(out), flush=True)
"""


class Probe:
    """A child process holding one Directory, stepped by the test."""

    def __init__(self, unix: FakeUnix, locked_suspends: bool = True) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _PROBE, "yes" if locked_suspends else "no"],
            env=unix.env, cwd=unix.root, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True,
        )
        self.got = self._read()

    def _read(self) -> dict[str, object]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise AssertionError(f"probe failed: {self.proc.stderr.read() if self.proc.stderr else ''}")
        result = json.loads(line)
        assert isinstance(result, dict)
        return result

    def step(self, name: str) -> dict[str, object]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(name + "\n")
        self.proc.stdin.flush()
        self.got = self._read()
        return self.got

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def probe(unix: FakeUnix) -> Iterator[Probe]:
    p = Probe(unix)
    try:
        yield p
    finally:
        p.close()


def test_members_pass_and_outsiders_and_strangers_do_not(probe: Probe) -> None:
    got = probe.got
    assert got["first acme"] == [True, ""]
    assert got["first jan"] == [True, ""]
    assert got["first outsider"] == [False, "not a member of group sip"]
    assert got["first nobody"] is None
    assert got["find acme"] is True


@pytest.mark.parametrize(("means", "reason"), [
    ("locked", "password locked (usermod -L)"),
    ("expired", "account expired"),
    ("group", "not a member of group sip"),
])
def test_a_file_change_suspends_at_once_after_files_changed(
    unix: FakeUnix, probe: Probe, means: str, reason: str,
) -> None:
    if means == "locked":
        unix.set_shadow("acme", "!$6$salt$hash")
    elif means == "expired":
        unix.set_shadow("acme", "$6$salt$hash", expire=1)
    else:
        unix.set_groups("acme", [])
    # Cached: the answer stands until the files are compared...
    assert probe.step("cached")["cached acme"] == [True, ""]
    # ...and the comparison finds the change and forgets every answer.
    got = probe.step("files")
    assert got["changed"] is True
    assert got["files acme"] == [False, reason]
    assert got["files jan"] == [True, ""]
    # The callee side asks the same state: a suspended user gets no calls.
    assert got["find acme"] is False


def test_a_pam_refusal_counts_at_the_ttl_or_when_forgotten(unix: FakeUnix, probe: Probe) -> None:
    (unix.root / "sip-deny").write_text("acme\n")
    # pam_listfile's file is none of the watched ones: the answer is kept...
    got = probe.step("files")
    assert got["changed"] is False and got["files acme"] == [True, ""]
    # ...for the TTL,
    assert probe.step("later")["later acme"][0] is False  # type: ignore[index]
    assert "PAM account check failed" in probe.got["later acme"][1]  # type: ignore[index]
    (unix.root / "sip-deny").write_text("")
    # a refusal for 10 s at most, and SIGHUP (forget) ends it at once.
    assert probe.step("forget")["forget acme"] == [True, ""]


def test_locked_does_not_suspend_when_configured_so(unix: FakeUnix) -> None:
    unix.set_shadow("acme", "!")
    unix.set_shadow("jan", "$6$x$y", expire=1)
    p = Probe(unix, locked_suspends=False)
    try:
        assert p.got["first acme"] == [True, ""]
        # An expired account is still refused.
        assert p.got["first jan"] == [False, "account expired"]
    finally:
        p.close()


def test_an_unlocked_password_and_a_future_expiry_pass(unix: FakeUnix) -> None:
    unix.set_shadow("acme", "$6$x$y", expire=10**6)
    unix.set_shadow("jan", "*")
    p = Probe(unix)
    try:
        assert p.got["first acme"] == [True, ""]
        assert p.got["first jan"] == [True, ""]
    finally:
        p.close()


# --- sans wrappers ---------------------------------------------------------------


def test_system_files_sees_renames_edits_and_appearances(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_text("one\n")
    files = SystemFiles([str(a), str(b)])
    assert files.changed() is False
    b.write_text("")
    assert files.changed() is True  # appeared
    assert files.changed() is False
    new = tmp_path / "a.new"
    new.write_text("one\n")
    new.replace(a)  # same content, new inode
    assert files.changed() is True
    with a.open("a") as f:
        f.write("two\n")
    assert files.changed() is True
    os.unlink(b)
    assert files.changed() is True


def test_shadow_refusal_of_a_user_nss_does_not_know_is_none() -> None:
    # The host's own NSS: no such entry, nothing to refuse.
    assert shadow_refusal("no-such-user-here-at-all", 0.0) is None
