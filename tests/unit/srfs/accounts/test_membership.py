"""The SIP group's refresh under nss_wrapper: what it asks NSS, and what a failure keeps.

Each scenario runs in a child process (the wrappers are preloaded
libraries) and prints, after each step, the members found and the counts
of NSS calls the process made (:func:`srfs.accounts.nss.calls`), so the
assertions are on what NSS was really asked.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.unixusers import FakeUnix, fake_unix

# alice is listed in the group (supplementary), bob has it as primary group.
_SCENARIO = """
import json, os, sys
from srfs.accounts import nss
from srfs.accounts.membership import Membership

group_file, passwd_file = sys.argv[1], sys.argv[2]
steps = []
m = Membership("sip", full_interval=300.0, files=(passwd_file, group_file))

def step(name, now):
    before = nss.calls()
    try:
        found = [u.name for u in m.refresh(now)]
    except nss.DirectoryUnavailable as exc:
        found = "unavailable: " + str(exc)
    after = nss.calls()
    steps.append({"step": name, "members": found,
                  "calls": {k: after.get(k, 0) - before.get(k, 0) for k in after
                            if after.get(k, 0) != before.get(k, 0)}})

step("first", 0.0)
for i in range(1, 6):
    step("idle", i * 5.0)
# carol is listed in the group: seen at the next refresh, one more look-up.
text = open(group_file).read().replace(":alice", ":alice,carol")
with open(group_file + ".new", "w") as f:
    f.write(text)
os.chmod(group_file + ".new", 0o644)
os.replace(group_file + ".new", group_file)
step("carol listed", 30.0)
step("idle again", 35.0)
step("full pass due", 400.0)
# The group file broken: the directory fails, nothing is removed.
saved = open(group_file).read()
# Unlinked, not renamed: the wrapper reopens the path once its file is gone.
os.unlink(group_file)
os.symlink(os.path.basename(group_file), group_file)
step("group broken", 405.0)
os.unlink(group_file)
# The group answered "not found" after it was found: an outage as well.
step("group missing", 410.0)
with open(group_file, "w") as f:
    f.write(saved)
os.chmod(group_file, 0o644)
step("group back", 415.0)
print(json.dumps(steps))
"""


@pytest.fixture(scope="module")
def unix() -> Iterator[FakeUnix]:
    """Users of this module only: the scenario rewrites the group file."""
    with fake_unix() as u:
        yield u


def run_scenario(unix: FakeUnix) -> list[dict[str, object]]:
    saved = unix.group.read_text()
    try:
        proc = subprocess.run([sys.executable, "-c", _SCENARIO, str(unix.group), str(unix.passwd)],
                              env=unix.env, cwd=unix.root, capture_output=True, text=True,
                              timeout=60)
    finally:
        if unix.group.is_symlink() or not unix.group.exists():
            unix.group.unlink(missing_ok=True)
        unix.group.write_text(saved)
        unix.group.chmod(0o644)
    assert proc.returncode == 0, proc.stderr
    steps = json.loads(proc.stdout.strip().splitlines()[-1])
    assert isinstance(steps, list)
    return steps


def test_refreshes_read_the_group_and_enumerate_accounts_seldom(unix: FakeUnix) -> None:
    steps = {s["step"]: s for s in run_scenario(unix)}
    # The first pass is full: the group and every account once, which gives
    # the listed alice's entry too (no look-up of her own).
    assert steps["first"]["members"] == ["alice", "bob"]
    assert steps["first"]["calls"] == {"getgrnam": 1, "all_passwd": 1}
    # An idle refresh reads the group entry and nothing else.
    assert steps["idle"]["calls"] == {"getgrnam": 1}
    assert steps["idle"]["members"] == ["alice", "bob"]
    # A change of the group file makes the next refresh a full pass.
    assert steps["carol listed"]["members"] == ["alice", "bob", "carol"]
    assert steps["carol listed"]["calls"] == {"getgrnam": 1, "all_passwd": 1}
    assert steps["idle again"]["calls"] == {"getgrnam": 1}
    # Past the interval: a full pass without any file change.
    assert steps["full pass due"]["calls"] == {"getgrnam": 1, "all_passwd": 1}
    # A failing or vanished group is an outage: an error, never an empty list.
    broken = steps["group broken"]["members"]
    assert isinstance(broken, str) and "Too many levels of symbolic links" in broken
    missing = steps["group missing"]["members"]
    assert isinstance(missing, str) and "not found, though it was before" in missing
    assert steps["group back"]["members"] == ["alice", "bob", "carol"]
