"""The manual pages: clean for mandoc, and true to the commands' options and settings.

The options come from ``sipd --help`` and ``sippasswd --help`` as the real
commands print them, and the settings from their tables
(:mod:`sipd.config`, :mod:`srfs.files.userconfig`), so a new option or key
without its paragraph fails here.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sipd.config import KEYS
from srfs.files.userconfig import KEYS as USER_KEYS
from tests.unixusers import REPO

MAN = REPO / "man"
PAGES = sorted(p for p in MAN.iterdir() if p.is_file())


def test_every_page_is_found() -> None:
    assert {p.name for p in PAGES} >= {
        "sipd.8", "sippasswd.1", "sr.5", "srfs.5", "sipd-aliases.5", "sipd-trunks.5"}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_mandoc_finds_nothing_to_say(page: Path) -> None:
    mandoc = shutil.which("mandoc")
    if mandoc is None:
        pytest.skip("mandoc is not installed (Debian package mandoc; "
                    "tools/system-setup.sh installs it)")
    # -T lint reports everything down to style: a clean page prints nothing.
    proc = subprocess.run([mandoc, "-T", "lint", str(page)], capture_output=True, text=True,
                          timeout=30, check=False)
    said = proc.stdout + proc.stderr
    assert proc.returncode == 0 and said == "", said


def plain(roff: str) -> str:
    """Roff source as words: escaped minus signs, fonts and quotes undone."""
    text = re.sub(r"\\f(?:[BIRP]|\(..|\[[^]]*\])", "", roff)
    text = text.replace("\\-", "-").replace("\\(aq", "'").replace('\\(dq', '"')
    return text.replace("\\e", "\\").replace("\\ ", " ").replace("\\&", "")


def section(page: str, name: str) -> str:
    """The roff source of one ``.SH`` section of ``page``."""
    source = (MAN / page).read_text()
    found = re.search(rf"^\.SH \"?{re.escape(name)}\"?\n(.*?)(?=^\.SH |\Z)", source, re.S | re.M)
    assert found, f"{page} has no section {name}"
    return found.group(1)


def tags(roff: str) -> set[str]:
    """The words of every ``.TP`` paragraph's tag line."""
    lines = roff.splitlines()
    words: set[str] = set()
    for i, line in enumerate(lines[:-1]):
        if line.startswith(".TP"):
            tag = re.sub(r"^\.[A-Z]{1,2} ", "", lines[i + 1])
            words.update(w for w in re.split(r"[\s,\"]+", plain(tag)) if w)
    return words


def help_options(module: str) -> set[str]:
    """The options a command's ``--help`` names, from a run of the real command."""
    proc = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True,
                          text=True, timeout=30, cwd=REPO, check=True)
    found = set(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", proc.stdout))
    assert {"-h", "--help", "--config"} <= found, proc.stdout
    return found


def mentions(text: str, option: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", text) is not None


@pytest.mark.parametrize(("module", "page"), [("sipd.cli", "sipd.8"),
                                              ("srfs.sippasswd", "sippasswd.1")])
def test_every_option_of_help_is_in_the_page(module: str, page: str) -> None:
    options = plain(section(page, "OPTIONS"))
    missing = sorted(o for o in help_options(module) if not mentions(options, o))
    assert missing == [], f"{page}, OPTIONS, lacks {missing}"


def test_every_setting_has_its_paragraph_in_sipd_8() -> None:
    documented = tags(section("sipd.8", "CONFIGURATION FILE"))
    missing = [k.name for k in KEYS if k.name not in documented]
    assert missing == [], f"sipd(8), CONFIGURATION FILE, lacks {missing}"


def test_every_user_setting_is_in_sr_5_and_srfs_5() -> None:
    # ~/.sr/config's keys: described where they are written (srfs(5)) and
    # named where the file is (sr(5)).
    writing = tags(section("srfs.5", "WRITING"))
    in_file = plain(section("sr.5", "~/.sr/config"))
    missing = [k for k in USER_KEYS if k not in writing or not mentions(in_file, k)]
    assert missing == [], f"srfs(5) or sr(5) lacks {missing}"


def test_sighup_in_sipd_8_names_exactly_the_live_settings() -> None:
    # The keys are the bold words of the SIGHUP paragraph, before the others
    # are said to wait for a restart.
    sighup = section("sipd.8", "SIGNALS").split(".B SIGHUP\n", 1)[1]
    live_part = sighup.split("wait for a restart")[0]
    bold = set(re.findall(r"^\.BR? (\w+)", live_part, re.M))
    keys = {k.name for k in KEYS}
    assert bold & keys == {k.name for k in KEYS if k.live}
