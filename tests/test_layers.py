"""The layers hold: read every module's imports and check they point down only.

The rules are the ones the package docstrings and the README state:

- srfs never imports sipd; sipd.sip imports nothing else of the project;
- only sipd.io, sipd.cli and the FUSE adapter import trio or pyfuse3;
- only sipd.io touches TLS and WebSocket (ssl, wsproto): the core sees
  transports as names in a Peer;
- only sipd.io imports h11 (the metrics endpoint's HTTP);
- only sipd.media.ng imports the bencode library, and only
  srfs.accounts.pamcheck python-pam (sippasswd runs without it);
- within each project, a package imports only packages below it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests import REPO

ROOT = REPO

#: Lowest first. A module belongs to the longest entry its name starts with.
SIPD_ORDER = ("sipd.sip", "sipd.core", "sipd.auth", "sipd.registrar", "sipd.media",
              "sipd.proxy", "sipd.endpoint", "sipd.config", "sipd.io", "sipd.cli")
SRFS_ORDER = (("srfs.errors", "srfs.addresses", "srfs.entropy", "srfs.logtext", "srfs.lines",
                "srfs.user"),
              ("srfs.state",), ("srfs.files",), ("srfs.accounts",),
              ("srfs.fs", "srfs.sipdconf"), ("srfs.sippasswd",))
EVENT_LOOP = ("trio", "pyfuse3")
MAY_USE_EVENT_LOOP = ("sipd.io", "sipd.cli", "srfs.fs.fuse")
#: Libraries that belong to one layer, and that layer.
ONE_LAYER = {"ssl": "sipd.io", "wsproto": "sipd.io"}
HTTP = ("h11",)
MAY_USE_HTTP = ("sipd.io",)
#: Libraries that belong to one part: the bencode codec is the ng protocol's,
#: python-pam the account check's.
OWNED = {"bencodepy": "sipd.media.ng", "pam": "srfs.accounts.pamcheck"}


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted([*ROOT.glob("sipd/**/*.py"), *ROOT.glob("srfs/**/*.py")]):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth of its code (absolute names)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import (the layers are read by name)"
            assert node.module is not None
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def sipd_rank(name: str) -> int | None:
    ranks = [i for i, p in enumerate(SIPD_ORDER) if _within(name, p)]
    return ranks[-1] if ranks else None


def srfs_rank(name: str) -> int | None:
    for i, group in enumerate(SRFS_ORDER):
        if any(_within(name, p) for p in group):
            return i
    return None


ALL = modules()


def test_every_module_has_a_layer() -> None:
    homeless = [m for m in ALL if m not in ("sipd", "srfs")
                and (sipd_rank(m) if m.startswith("sipd") else srfs_rank(m)) is None]
    assert homeless == [], "put these in a layer of this test (and of the README)"


@pytest.mark.parametrize("module", sorted(ALL))
def test_imports_point_down(module: str) -> None:
    wrong = []
    for target in imports(ALL[module]):
        top = target.split(".")[0]
        if top in EVENT_LOOP and not any(_within(module, m) for m in MAY_USE_EVENT_LOOP):
            wrong.append(f"{target}: only {', '.join(MAY_USE_EVENT_LOOP)} use the event loop")
        if top in ONE_LAYER and not _within(module, ONE_LAYER[top]):
            wrong.append(f"{target}: only {ONE_LAYER[top]} uses {top}")
        if top in HTTP and not any(_within(module, m) for m in MAY_USE_HTTP):
            wrong.append(f"{target}: only {', '.join(MAY_USE_HTTP)} speaks HTTP")
        if top in OWNED and not _within(module, OWNED[top]):
            wrong.append(f"{target}: only {OWNED[top]} uses {top}")
        if top not in ("sipd", "srfs") or target in ("sipd", "srfs"):
            continue
        if target.endswith(".__version__"):
            continue
        if module.startswith("srfs"):
            if top == "sipd":
                wrong.append(f"{target}: srfs never imports sipd")
            elif target in ALL or target.rpartition(".")[0] in ALL:
                mine, theirs = srfs_rank(module), srfs_rank(target)
                if mine is not None and theirs is not None and theirs > mine:
                    wrong.append(f"{target}: above {module}")
        else:
            if top == "srfs":
                continue  # srfs is below all of sipd
            if _within(module, "sipd.sip") and not _within(target, "sipd.sip"):
                wrong.append(f"{target}: sipd.sip imports nothing else of the project")
            mine, theirs = sipd_rank(module), sipd_rank(target)
            if mine is not None and theirs is not None and theirs > mine:
                wrong.append(f"{target}: above {module}")
    assert wrong == []


def test_the_rules_can_fail() -> None:
    """The checks above are not vacuous: a module that broke a rule is caught."""
    assert sipd_rank("sipd.proxy.proxy") > sipd_rank("sipd.registrar.server")  # type: ignore[operator]
    assert srfs_rank("srfs.fs.tree") > srfs_rank("srfs.state.location")  # type: ignore[operator]
    assert imports(ALL["sipd.endpoint"]) & {"sipd.proxy.proxy", "sipd.registrar.server"}
    assert "h11" in imports(ALL["sipd.io.metrics_http"])
    assert not any(_within("sipd.cli", m) for m in MAY_USE_HTTP)
