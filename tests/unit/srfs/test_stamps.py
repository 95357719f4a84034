"""Time stamps made once a second: each must be the one made afresh."""

from __future__ import annotations

import logging
import time

from hypothesis import given
from hypothesis import strategies as st

from srfs.lines import format_time
from srfs.logtext import LineFormatter

#: 1970 to 2100, in milliseconds: a stamp cut at the second and at the millisecond.
WHEN = st.integers(min_value=0, max_value=4_102_444_800_000).map(lambda ms: ms / 1000)


@given(st.lists(WHEN, min_size=1, max_size=20))
def test_format_time_is_strftime_of_the_whole_second(times: list[float]) -> None:
    for when in times:
        assert format_time(when) == time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(when)))


def _record(when: float) -> logging.LogRecord:
    record = logging.LogRecord("sipd", logging.INFO, __file__, 1, "call started", None, None)
    record.created = when
    record.msecs = float(int((when - int(when)) * 1000))
    return record


@given(st.lists(WHEN, min_size=1, max_size=20))
def test_a_log_line_has_loggings_own_stamp(times: list[float]) -> None:
    ours = LineFormatter("%(asctime)s %(message)s")
    stock = logging.Formatter("%(asctime)s %(message)s")
    # Also each time again and a second on: the kept second must be left.
    for when in [t for w in times for t in (w, w, w + 1)]:
        assert ours.format(_record(when)) == stock.format(_record(when))


def test_a_date_format_of_its_own_is_used_as_given() -> None:
    ours = LineFormatter("%(asctime)s %(message)s", datefmt="%H:%M")
    stock = logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M")
    assert ours.format(_record(1_764_980_000.5)) == stock.format(_record(1_764_980_000.5))
