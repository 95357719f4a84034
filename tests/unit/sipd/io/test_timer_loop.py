"""The transport's timer task: timers due close together fire in one pass."""

from __future__ import annotations

import logging
import math

import pytest
import trio
import trio.testing

from sipd.core.peer import Peer
from sipd.core.work import Action
from sipd.io.transport import TIMER_SLACK, Transports
from sipd.sip.framing import FramingError


class Timers:
    """An endpoint that is only a list of deadlines, and when each fired."""

    def __init__(self, deadlines: list[float]) -> None:
        self.wall_offset = 0.0
        self.pending = sorted(deadlines)
        self.fired: list[tuple[float, float]] = []  # (deadline, when)
        self.passes = 0

    def get_timer(self) -> float | None:
        return self.pending[0] if self.pending else None

    def handle_timer(self, now: float) -> list[Action]:
        self.passes += 1
        while self.pending and self.pending[0] <= now:
            self.fired.append((self.pending.pop(0), now))
        return []

    def receive(self, data: bytes, peer: Peer, now: float) -> list[Action]:
        return []

    def connection_closed(self, peer: Peer, now: float) -> list[Action]:
        return []

    def framing_error(self, error: FramingError, peer: Peer) -> list[Action]:
        return []

    def connection_failed(self, peer: Peer, now: float) -> list[Action]:
        return []

    def connection_has_binding(self, peer: Peer) -> bool:
        return False


def run_timers(deadlines: list[float]) -> Timers:
    endpoint = Timers(deadlines)

    async def main() -> None:
        transports = Transports(endpoint, max_message_size=65535, tcp_max_connections=1,
                                tcp_idle_timeout=60.0, tcp_message_timeout=10.0)
        with trio.move_on_after(max(deadlines) + 1):
            await transports.timer_loop()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    return endpoint


def test_timers_due_a_millisecond_apart_fire_in_a_pass_per_slack() -> None:
    # A thousand calls ending on their timers within a second: 1,000
    # deadlines, at most one pass of the timer task per TIMER_SLACK.
    deadlines = [10.0 + i / 1000 for i in range(1000)]
    endpoint = run_timers(deadlines)
    assert [d for d, _ in endpoint.fired] == deadlines
    assert all(d <= when <= d + TIMER_SLACK + 1e-9 for d, when in endpoint.fired)
    assert endpoint.passes <= math.ceil(1.0 / TIMER_SLACK) + 2, endpoint.passes


def test_a_lone_timer_fires_on_time() -> None:
    endpoint = run_timers([5.0, 7.5])
    assert endpoint.fired == [(5.0, 5.0), (7.5, 7.5)]


class Counting(Timers):
    """Timers that count how often the transport asks for the next deadline."""

    def __init__(self, deadlines: list[float]) -> None:
        super().__init__(deadlines)
        self.asked = 0

    def get_timer(self) -> float | None:
        self.asked += 1
        return super().get_timer()


def poke_at(planned: float, armed_later: float, poke_at: float) -> tuple[Counting, int]:
    """The timer task waits for ``planned``; at ``poke_at`` a message arms
    ``armed_later``. Returns the endpoint and how often a poke asked it."""
    endpoint = Counting([planned])
    asked_by_poke = 0

    async def main() -> None:
        nonlocal asked_by_poke
        transports = Transports(endpoint, max_message_size=65535, tcp_max_connections=1,
                                tcp_idle_timeout=60.0, tcp_message_timeout=10.0)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(transports.timer_loop)
            await trio.sleep(poke_at)
            endpoint.pending = sorted([*endpoint.pending, armed_later])
            before = endpoint.asked
            transports.send([])  # what follows every datagram
            asked_by_poke = endpoint.asked - before
            await trio.sleep(max(planned, armed_later) + 1 - poke_at)
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    return endpoint, asked_by_poke


def test_a_deadline_armed_before_a_distant_wake_up_wakes_the_task() -> None:
    endpoint, asked = poke_at(planned=20.0, armed_later=3.0, poke_at=1.0)
    assert asked == 1
    assert endpoint.fired == [(3.0, 3.0), (20.0, 20.0)]


def test_no_deadline_is_asked_for_when_the_task_wakes_within_the_slack() -> None:
    # The task is due in half the slack: the poke costs the endpoint nothing,
    # and what was armed meanwhile fires at most the slack late.
    planned = 1.0 + TIMER_SLACK / 2
    endpoint, asked = poke_at(planned=planned, armed_later=1.0, poke_at=1.0)
    assert asked == 0
    assert [d for d, _ in endpoint.fired] == [1.0, planned]
    assert all(when <= d + TIMER_SLACK for d, when in endpoint.fired)


class Buggy(Timers):
    """Timers whose pass at ``bug`` raises, once."""

    def __init__(self, deadlines: list[float], bug: float) -> None:
        super().__init__(deadlines)
        self.bug = bug

    def handle_timer(self, now: float) -> list[Action]:
        if self.pending and self.pending[0] == self.bug:
            self.pending.pop(0)
            raise ZeroDivisionError("a bug")
        return super().handle_timer(now)


def test_a_timer_that_meets_a_bug_costs_its_pass_not_the_task(
        caplog: pytest.LogCaptureFixture) -> None:
    endpoint = Buggy([1.0, 2.0, 3.0], bug=2.0)
    counted: list[int] = []

    async def main() -> None:
        transports = Transports(endpoint, max_message_size=65535, tcp_max_connections=1,
                                tcp_idle_timeout=60.0, tcp_message_timeout=10.0)
        with trio.move_on_after(5):
            await transports.timer_loop()
        counted.append(transports.stats.timer_internal_errors)

    with caplog.at_level(logging.ERROR, logger="sipd.transport"):
        trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert endpoint.fired == [(1.0, 1.0), (3.0, 3.0)]
    assert counted == [1]
    errors = [r for r in caplog.records if "timer pass ended early" in r.getMessage()]
    assert len(errors) == 1 and errors[0].exc_info is not None
    assert errors[0].exc_info[0] is ZeroDivisionError
