"""Which build runs: pure Python, or the per-message modules compiled with mypyc.

``make test`` runs the unit tests on the checkout's .py files;
``make test-compiled`` runs them again on the modules a wheel compiles,
with ``SIPD_EXPECT_BUILD`` naming the build they must find, so that a
fallback to pure Python cannot pass for a compiled run.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import os
import runpy
import types
from pathlib import Path

import pytest

import sipd
from sipd.io.compiled import MYPYC_MODULES, build, compiled_modules
from tests import REPO


def _path(name: str) -> Path:
    return REPO / f"{name.replace('.', '/')}.py"


def test_the_build_is_the_one_expected() -> None:
    expected = os.environ.get("SIPD_EXPECT_BUILD", "pure Python")
    assert build() == expected, sipd.__file__


def test_the_c_home_writer_comes_with_a_compiled_build() -> None:
    # setup.py builds srfs.files._homewrite beside the mypyc modules, and
    # drops both when compiling fails: one is there exactly when the other is.
    from srfs.files import home
    assert (home._write_batch is not None) == (build() == "compiled with mypyc")


def test_compiled_modules_are_told_by_their_files() -> None:
    compiled = compiled_modules()
    for name in MYPYC_MODULES:
        assert _path(name).is_file(), name
        module = importlib.import_module(name)
        assert (name in compiled) == (not module.__file__.endswith(".py"))


def _classes(tree: ast.Module) -> set[str]:
    return {node.name for node in tree.body if isinstance(node, ast.ClassDef)}


def test_no_interpreted_class_extends_a_compiled_one() -> None:
    # mypyc refuses that at import time, and only in a compiled build: the
    # checkout's own run must catch it too. Every module of the project
    # that stays interpreted, and the tests, by the names they import.
    compiled = {name: _classes(ast.parse(_path(name).read_text()))
                for name in MYPYC_MODULES}
    listed = {_path(name) for name in MYPYC_MODULES}
    sources = [p for p in sorted([*REPO.glob("sipd/**/*.py"), *REPO.glob("srfs/**/*.py"),
                                  *REPO.glob("tests/**/*.py")]) if p not in listed]
    for path in sources:
        tree = ast.parse(path.read_text())
        imported: dict[str, str] = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module in compiled:
                for alias in node.names:
                    if alias.name in compiled[node.module]:
                        imported[alias.asname or alias.name] = f"{node.module}.{alias.name}"
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                for base in node.bases:
                    if isinstance(base, ast.Name):
                        assert base.id not in imported, (path, node.name, imported[base.id])


def test_no_loop_over_a_list_rebinds_its_name() -> None:
    # Compiled, ``for x in items:`` reads ``items`` again at each turn, so a
    # body that assigns to ``items`` changes what the loop walks; interpreted
    # it does not. (A handler's events once went missing that way.)
    for name in MYPYC_MODULES:
        tree = ast.parse(_path(name).read_text())
        for loop in ast.walk(tree):
            if not (isinstance(loop, ast.For) and isinstance(loop.iter, ast.Name)):
                continue
            for node in ast.walk(ast.Module(body=loop.body, type_ignores=[])):
                targets: list[ast.expr] = []
                if isinstance(node, ast.Assign):
                    targets = node.targets
                elif isinstance(node, (ast.AugAssign, ast.AnnAssign, ast.For)):
                    targets = [node.target]
                for target in targets:
                    names = {n.id for n in ast.walk(target) if isinstance(n, ast.Name)}
                    assert loop.iter.id not in names, (name, node.lineno)


def test_setup_reads_the_same_list(monkeypatch: pytest.MonkeyPatch) -> None:
    # setup.py parses the list instead of importing the package: run only its
    # reader (setup() itself is replaced).
    import setuptools

    monkeypatch.setattr(setuptools, "setup", lambda **kwargs: None)
    monkeypatch.setattr("sys.argv", ["setup.py", "egg_info"])
    setup = runpy.run_path(str(REPO / "setup.py"))
    assert setup["mypyc_modules"]() == [
        str(_path(n).relative_to(REPO)) for n in MYPYC_MODULES]
    # Not a build command: nothing is compiled.
    assert setup["ext_modules"]() == []


def _written_inits() -> dict[type, ast.FunctionDef]:
    """The dataclasses of the compiled modules that write their ``__init__``
    out, with it, read from the source (a compiled one has no signature)."""
    found = {}
    for name in MYPYC_MODULES:
        module = importlib.import_module(name)
        bodies = {node.name: node.body for node in ast.parse(_path(name).read_text()).body
                  if isinstance(node, ast.ClassDef)}
        for value in vars(module).values():
            if (isinstance(value, type) and value.__module__ == module.__name__
                    and dataclasses.is_dataclass(value)):
                for item in bodies[value.__name__]:
                    if isinstance(item, ast.FunctionDef) and item.name == "__init__":
                        found[value] = item
    return found


def test_a_dataclass_init_written_out_takes_its_fields() -> None:
    # The __init__ that dataclass writes runs interpreted even in a compiled
    # build; the classes made per message write theirs out. Each must take
    # the fields dataclass would, in order, with the same defaults.
    written = _written_inits()
    assert len(written) >= 15, written
    for cls, init in written.items():
        args = init.args
        assert not (args.vararg or args.kwarg or args.kwonlyargs or args.posonlyargs), cls
        params = [a.arg for a in args.args[1:]]
        defaults = [ast.literal_eval(d) for d in args.defaults]
        given = dict(zip(params[len(params) - len(defaults):], defaults, strict=True))
        fields = [f for f in dataclasses.fields(cls) if f.init]
        assert params == [f.name for f in fields], cls
        for field in fields:
            if field.default is dataclasses.MISSING:
                assert field.name not in given, (cls, field.name)
            else:
                assert field.name in given and given[field.name] == field.default, \
                    (cls, field.name)


@pytest.mark.skipif(build() == "pure Python", reason="a question about the compiled build")
def test_compiled_classes_made_per_message_have_a_compiled_init() -> None:
    from sipd.proxy.context import Branch, Context

    for cls in [*_written_inits(), Context, Branch]:
        assert not isinstance(vars(cls)["__init__"], types.FunctionType), cls
