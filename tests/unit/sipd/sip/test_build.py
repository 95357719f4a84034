"""Which build of the SIP core runs: pure Python, or compiled with mypyc.

``make test`` runs the unit tests on the checkout's .py files;
``make test-compiled`` runs them again on the modules a wheel compiles,
with ``SIPD_EXPECT_BUILD`` naming the build they must find, so that a
fallback to pure Python cannot pass for a compiled run.
"""

from __future__ import annotations

import ast
import os
import runpy
from pathlib import Path

import pytest

import sipd.sip
from sipd.sip import MYPYC_MODULES, build, compiled_modules
from tests import REPO


def test_the_build_is_the_one_expected() -> None:
    expected = os.environ.get("SIPD_EXPECT_BUILD", "pure Python")
    assert build() == expected, sipd.sip.__file__


def test_compiled_modules_are_told_by_their_files() -> None:
    compiled = compiled_modules()
    for name in MYPYC_MODULES:
        path = Path(sipd.sip.__file__).with_name(f"{name}.py")
        assert path.is_file(), path
        module = __import__(f"sipd.sip.{name}", fromlist=["x"])
        assert (name in compiled) == (not module.__file__.endswith(".py"))


def test_the_compiled_modules_import_nothing_outside_the_list() -> None:
    # One mypyc group: a compiled module may import the others of the list,
    # errors.py and the standard library, nothing interpreted of the project
    # that could subclass or monkeypatch it.
    allowed = {f"sipd.sip.{name}" for name in MYPYC_MODULES} | {"sipd.sip.errors"}
    for name in MYPYC_MODULES:
        tree = ast.parse((REPO / "sipd" / "sip" / f"{name}.py").read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("sipd"):
                assert node.module in allowed, (name, node.module)


def test_setup_reads_the_same_list(monkeypatch: pytest.MonkeyPatch) -> None:
    # setup.py parses the list instead of importing the package: run only its
    # reader (setup() itself is replaced).
    import setuptools

    monkeypatch.setattr(setuptools, "setup", lambda **kwargs: None)
    monkeypatch.setattr("sys.argv", ["setup.py", "egg_info"])
    setup = runpy.run_path(str(REPO / "setup.py"))
    assert setup["mypyc_modules"]() == [f"sipd/sip/{n}.py" for n in MYPYC_MODULES]
    # Not a build command: nothing is compiled.
    assert setup["ext_modules"]() == []
