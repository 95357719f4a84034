"""Callees and callers found lately are known on the event loop, without a look-up.

:meth:`HomeUsers.find_cached` runs under the fake users (nss_wrapper) in
a child process: it knows nothing before :meth:`find`, then answers from
it until the user's ``~/.sr/config`` changes (its stamp), ``forget``, or
the answer's time (refusals sooner).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.unixusers import FakeUnix, UserSpec, fake_unix

USERS = (UserSpec("ann", primary="sip"), UserSpec("out"))

_PROBE = """
import json, os, time
from sipd.proxy.users import HomeUsers

now = [0.0]
found = HomeUsers("sip", ttl=600, negative_ttl=10, clock=lambda: now[0])
out = {}
def cached(tag, name="ann"):
    got = found.find_cached(name)
    out[tag] = None if got is None else [got[0], got[1].get("dnd")]

cached("before")
out["find"] = found.find("ann")[0]
cached("after find")
config = os.path.join(os.environ["ANN_HOME"], ".sr", "config")
os.makedirs(os.path.dirname(config), exist_ok=True)
with open(config, "w") as f:
    f.write("dnd = true\\n")
for path in (os.path.dirname(config), config):
    os.chown(path, int(os.environ["ANN_UID"]), int(os.environ["ANN_GID"]))
cached("config changed")
found.find("ann")
cached("config read")
now[0] += 599
cached("599 s later")
now[0] += 2
cached("601 s later")
found.find("ann")
found.forget("ann")
cached("forgotten")
found.find("out")
cached("refused", "out")
now[0] += 11
cached("refused 11 s later", "out")
cached("bad name", "../x")
from srfs.accounts import users
ann = users.lookup("ann")
found.forget()
found.learn(ann, found.generation)  # a caller's authentication found ann
cached("learnt")
stale = found.generation
found.forget()
found.learn(ann, stale)  # a forget() overtook the look-up
cached("learnt before a forget")
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def unix() -> Iterator[FakeUnix]:
    with fake_unix(USERS) as u:
        yield u


def test_find_cached_answers_what_find_found_while_it_holds(unix: FakeUnix) -> None:
    ann = unix["ann"]
    code = (f"import os\nos.environ.update(ANN_HOME={str(ann.home)!r}, ANN_UID='{ann.uid}', "
            f"ANN_GID='{ann.gid}')\n" + _PROBE)
    out = unix.python_json(code)
    assert out == {
        "before": None,
        "find": True,
        "after find": [True, None],
        "config changed": None,  # the stamp changed: only find() can tell
        "config read": [True, "yes"],
        "599 s later": [True, "yes"],
        "601 s later": None,
        "forgotten": None,
        "refused": [False, None],
        "refused 11 s later": None,
        "bad name": [False, None],
        "learnt": [True, "yes"],
        "learnt before a forget": None,
    }
