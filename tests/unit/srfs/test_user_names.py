"""Which names are worth asking NSS about (:func:`srfs.user.valid_name`)."""

from __future__ import annotations

import pytest

from srfs.user import valid_name


@pytest.mark.parametrize("name", ["alice", "bob.smith", "j_doe-2", "Jörg", "user@corp", "a" * 256])
def test_names_asked_about(name: str) -> None:
    assert valid_name(name)


@pytest.mark.parametrize("name", [
    "", ".", "..", "a" * 257, "-rf", "#root", " alice", "alice ", "ali/ce", "ali:ce",
    "a\0b", "a\nb", "a\rb", "a\tb", "a\x7fb", "a\u200bb", "a\u2028b", "a\udcffb",
])
def test_names_refused(name: str) -> None:
    assert not valid_name(name)
