"""Trimming the C heap after a burst of transactions."""

from __future__ import annotations

import functools

import pytest
import trio
import trio.testing

from sipd.io import heap
from sipd.io.heap import AfterBurst


def test_a_burst_is_over_when_a_quarter_of_its_peak_is_left() -> None:
    watch = AfterBurst(burst=1000)
    assert not any(watch.observe(n) for n in (0, 400, 999, 500, 0))  # never a burst
    assert not watch.observe(12_800)
    assert not watch.observe(6_000)
    assert not watch.observe(3_201)
    assert watch.observe(3_200)  # a quarter of the peak: trim, once
    assert not watch.observe(100)
    assert not watch.observe(0)
    # The next burst is measured from where the last one ended.
    assert not watch.observe(2_000)
    assert watch.observe(400)


def test_malloc_trim_answers() -> None:
    # glibc on the machines this runs on; elsewhere it answers False.
    assert heap.malloc_trim() in (True, False)


def test_the_task_trims_once_per_burst(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = iter([0, 5_000, 3_000, 1_000, 900, 0, 0, 0])
    looked: list[int] = []
    trimmed: list[int] = []

    def count() -> int:
        looked.append(next(seen, 0))
        return looked[-1]

    def trim() -> bool:
        trimmed.append(len(looked))
        return True

    monkeypatch.setattr(heap, "malloc_trim", trim)
    monkeypatch.setattr(heap, "_TRIM", lambda pad: 1)

    async def main() -> None:
        with trio.move_on_after(5):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(heap.trim_after_bursts, count, 0.01)
                while len(looked) < 8:
                    await trio.sleep(0.01)
                nursery.cancel_scope.cancel()

    # Real time: the trim runs in a worker thread, which a mock clock would
    # take for idleness and jump over.
    trio.run(main)
    # Once, at the fourth look (1,000 of a 5,000 peak); never again after.
    assert trimmed == [4] and len(looked) >= 8


class _Node:
    def __init__(self) -> None:
        self.other: object = self  # a cycle: reference counting never frees it


@pytest.mark.parametrize("generation", [0, 1])
def test_cycles_past_a_young_collection_wait_for_the_scheduled_collection(
        generation: int) -> None:
    import gc
    import weakref

    saved = gc.get_threshold()
    try:
        heap.tune_gc()
        node = _Node()
        gone = weakref.ref(node)
        # Out of the young generation, where the daemon's calls wait out
        # their timers once a young collection has passed.
        gc.collect(generation)
        del node
        # Hundreds of young collections, with many more objects surviving
        # them than the older generations held, do not reach them: Python's
        # own triggers for the middle and the full passes are off. (A small
        # young threshold keeps the test quick; the others are tune_gc's.)
        gc.set_threshold(1_000, *gc.get_threshold()[1:])
        kept = [[] for _ in range(max(400_000, 2 * len(gc.get_objects())))]
        assert gone() is not None
        del kept

        async def main() -> None:
            # Nothing heard: the first second after the period is quiet.
            with trio.move_on_after(1.2):
                await heap.collect_cycles(0.05)

        trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
        assert gone() is None
    finally:
        gc.unfreeze()
        gc.set_threshold(*saved)


def test_a_quiet_moment_is_a_second_with_few_messages() -> None:
    """The full collections wait while the daemon is busy, and no longer than told."""
    heard = [0]
    waited: list[tuple[bool, float]] = []

    async def main() -> None:
        async def traffic(per_second: int) -> None:
            while True:
                await trio.sleep(0.1)
                heard[0] += per_second // 10

        async with trio.open_nursery() as nursery:
            nursery.start_soon(traffic, 500)
            start = trio.current_time()
            # Busy all along: gives up at the limit.
            found = await heap.quiet_moment(lambda: heard[0], limit=5.0)
            waited.append((found, trio.current_time() - start))
            nursery.cancel_scope.cancel()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(traffic, heap.QUIET_MESSAGES)  # at the bound: quiet
            start = trio.current_time()
            found = await heap.quiet_moment(lambda: heard[0])
            waited.append((found, trio.current_time() - start))
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    (busy, busy_for), (quiet, quiet_for) = waited
    assert not busy and 5.0 <= busy_for <= 6.0
    assert quiet and quiet_for == pytest.approx(1.0, abs=0.01)


def test_after_a_burst_the_collection_waits_for_the_load_to_ease(
        monkeypatch: pytest.MonkeyPatch) -> None:
    collected: list[float] = []
    monkeypatch.setattr(heap, "full_collection", lambda why: collected.append(trio.current_time()))
    monkeypatch.setattr(heap, "_TRIM", None)
    heard = [0]
    alive = [5_000]

    async def main() -> None:
        async def load() -> None:
            # A burst, its transactions ending at 10 s, a steady load until 30 s.
            while trio.current_time() < 30:
                await trio.sleep(0.1)
                heard[0] += 50
                if trio.current_time() >= 10:
                    alive[0] = 100

        async with trio.open_nursery() as nursery:
            nursery.start_soon(load)
            nursery.start_soon(functools.partial(heap.trim_after_bursts, lambda: alive[0],
                                                 heard=lambda: heard[0]))
            await trio.sleep(60)
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    # Due at 10 s, made once the load stopped (30 s), within a second or two.
    assert len(collected) == 1 and 30 <= collected[0] <= 32


def test_the_young_generation_is_collected_on_a_clock_while_messages_come(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import gc

    collected: list[tuple[float, int]] = []
    monkeypatch.setattr(gc, "collect", lambda generation=2: collected.append(
        (trio.current_time(), generation)) or 0)
    messages = [0]

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(heap.collect_young, 0.05, lambda: messages[0])
            await trio.sleep(1.0)  # idle: nothing heard, nothing collected
            assert collected == []
            for _ in range(20):  # a message every 50 ms for a second
                messages[0] += 1
                await trio.sleep(0.05)
            await trio.sleep(1.0)
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert {generation for _, generation in collected} == {0}
    assert 18 <= len(collected) <= 21
    assert all(1.0 < when <= 2.1 for when, _ in collected)
