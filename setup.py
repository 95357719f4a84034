"""Build hook: compile sipd's per-message modules with mypyc when it can.

pyproject.toml holds the project's metadata; this file only adds the
compiled extensions. A wheel (``make install``, ``pip install .``) gets
the modules of ``sipd.io.compiled.MYPYC_MODULES`` compiled, and
``srfs.files._homewrite``, the C part of ``srfs.files.home.write_files``
(what it writes is written in Python without it); the same code runs as
plain Python, and is installed as such, when

- ``SIPD_PURE=1`` is set,
- the install is editable (``make setup``, ``pip install -e .``): a
  checkout runs its .py files, so an edit takes effect without a rebuild
  and no stale extension hides it,
- mypyc is missing, refuses the code, or the C compiler or the Python
  headers fail: a warning says so and the build goes on without them.

``sipd --version`` names the build that runs.
"""

from __future__ import annotations

import ast
import os
import sys
from pathlib import Path
from typing import Any

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).resolve().parent


def warn(text: str) -> None:
    print(f"sipd build: {text}; installing every module as pure Python", file=sys.stderr)


def mypyc_modules() -> list[str]:
    """The paths of sipd.io.compiled.MYPYC_MODULES, read without importing the package."""
    source = HERE / "sipd" / "io" / "compiled.py"
    for node in ast.parse(source.read_text(encoding="utf-8")).body:
        if (isinstance(node, ast.Assign) and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name)
                and node.targets[0].id == "MYPYC_MODULES"):
            return [f"{name.replace('.', '/')}.py" for name in ast.literal_eval(node.value)]
    raise RuntimeError(f"{source}: no MYPYC_MODULES")


def ext_modules() -> list[Any]:
    if os.environ.get("SIPD_PURE", "") not in ("", "0"):
        print("sipd build: SIPD_PURE is set; every module stays pure Python", file=sys.stderr)
        return []
    # Only a build of the package compiles: not the metadata steps (egg_info,
    # dist_info), nor an editable install (editable_wheel, develop).
    if not {"bdist_wheel", "build", "build_ext", "install"} & set(sys.argv[1:]):
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        warn("mypyc (part of mypy) is not installed")
        return []
    os.chdir(HERE)  # mypycify takes paths relative to the working directory
    # Built with the mypyc modules or not at all, so that a build is either
    # compiled or pure as a whole (sipd --version); srfs.files.home uses it
    # when it is there and writes in Python otherwise.
    native = [Extension("srfs.files._homewrite", ["srfs/files/_homewrite.c"])]
    try:
        # multi_file: one C file per module rather than one for the group;
        # the build takes 40 s where it took 65, and a call costs the same
        # (bench/core_calls.py).
        return [*mypycify(mypyc_modules(), opt_level="3", multi_file=True), *native]
    except (Exception, SystemExit) as exc:  # mypyc exits on a type error
        warn(f"mypyc failed ({exc})")
        return []


class BuildExtOrPure(build_ext):
    """build_ext that falls back to pure Python when compiling fails.

    The compiled modules share one extension (mypyc's runtime and all their
    code); with one piece missing the rest cannot be imported, so a failure
    removes every extension built and the .py files are used alone.
    """

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # CompileError, LinkError, no compiler at all
            warn(f"compiling the extensions failed ({exc})")
            for ext in self.extensions:
                Path(self.get_ext_fullpath(ext.name)).unlink(missing_ok=True)
            self.extensions = []


setup(ext_modules=ext_modules(), cmdclass={"build_ext": BuildExtOrPure})
