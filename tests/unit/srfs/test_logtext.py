"""The daemon's log handler and its formatter's common path: the same text as
logging's own classes, one write per record."""

from __future__ import annotations

import io
import logging
import os
import sys
from collections.abc import Iterator

import pytest

import srfs.logtext
from srfs.logtext import JournalFormatter, LineFormatter, LineHandler

FORMATS = ("%(asctime)s %(name)s: %(levelname)s: %(message)s", "%(name)s: %(levelname)s: %(message)s")


def _records() -> list[logging.LogRecord]:
    made = [
        logging.LogRecord("sipd.calltrack", logging.INFO, "(unknown file)", 0,
                          "call started: %s", ('"sip:jan@example.org" to "sip:bob@example.org"',),
                          None),
        logging.LogRecord("sipd.auth", logging.WARNING, "(unknown file)", 0,
                          "auth failed: user %(user)s", ({"user": '"jän\x1b"'},), None),
        logging.LogRecord("sipd", logging.ERROR, "(unknown file)", 0, "no args %s", (), None),
    ]
    try:
        raise ValueError("one\ntwo")
    except ValueError:
        made.append(logging.LogRecord("sipd", logging.ERROR, "(unknown file)", 0,
                                      "it broke", (), sys.exc_info()))
    return made


@pytest.mark.parametrize("fmt", FORMATS)
def test_the_common_path_writes_what_loggings_formatter_writes_escaped(fmt: str) -> None:
    ours = LineFormatter(fmt)
    stock = logging.Formatter(fmt)
    for record in _records()[:3]:
        expected = srfs.logtext.escape(stock.format(record))
        assert ours.format(record) == expected
    journal = JournalFormatter(FORMATS[1]).format(_records()[0])
    assert journal == "<6>" + srfs.logtext.escape(logging.Formatter(FORMATS[1]).format(_records()[0]))


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    r, w = os.pipe()
    try:
        yield r, w
    finally:
        for fd in (r, w):
            try:
                os.close(fd)
            except OSError:
                pass


def _read_all(fd: int) -> bytes:
    os.set_blocking(fd, False)
    out = b""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            return out
        if not chunk:
            return out
        out += chunk


def test_each_record_is_one_write_of_the_stream_handlers_text(
        pipe: tuple[int, int], monkeypatch: pytest.MonkeyPatch) -> None:
    r, w = pipe
    writes: list[int] = []
    real_write = os.write

    def counted(fd: int, data: bytes) -> int:
        writes.append(fd)
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", counted)
    formatter = LineFormatter(FORMATS[0])
    with open(w, "w", encoding="utf-8", closefd=False) as stream:
        handler = LineHandler(stream)
        handler.setFormatter(formatter)
        expected = io.StringIO()
        stock = logging.StreamHandler(expected)
        stock.setFormatter(formatter)
        for record in _records():
            handler.handle(record)
            stock.handle(record)
    assert writes == [w] * len(_records())
    text = _read_all(r).decode("utf-8")
    assert text == expected.getvalue()
    # A traceback is still one record: its lines are marked continuations.
    assert "\n| ValueError: one\n| two\n" in text


def test_a_character_the_stream_cannot_encode_is_escaped(pipe: tuple[int, int]) -> None:
    r, w = pipe
    with open(w, "w", encoding="ascii", closefd=False) as stream:
        handler = LineHandler(stream)
        handler.setFormatter(LineFormatter("%(message)s"))
        handler.handle(logging.LogRecord("sipd", logging.INFO, "", 0, "user %s", ("jän",), None))
    assert _read_all(r) == b"user j\\xe4n\n"


def test_a_stream_without_a_descriptor_is_written_as_a_stream() -> None:
    stream = io.StringIO()
    handler = LineHandler(stream)
    handler.setFormatter(LineFormatter("%(levelname)s: %(message)s"))
    handler.handle(_records()[0])
    assert stream.getvalue() == 'INFO: call started: "sip:jan@example.org" to "sip:bob@example.org"\n'


def test_a_failed_write_is_reported_by_logging_not_raised(pipe: tuple[int, int]) -> None:
    r, w = pipe
    reported: list[logging.LogRecord] = []

    class Reporting(LineHandler):
        def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
            reported.append(record)

    with open(w, "w", encoding="utf-8", closefd=False) as stream:
        handler = Reporting(stream)
    os.close(r)  # nobody reads: the write fails with EPIPE
    handler.handle(_records()[0])
    assert [record.msg for record in reported] == ["call started: %s"]
