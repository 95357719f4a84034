"""Trimming the C heap after a burst of transactions."""

from __future__ import annotations

import pytest
import trio

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


def test_cycles_in_the_oldest_generation_wait_for_the_scheduled_collection() -> None:
    import gc
    import weakref

    saved = gc.get_threshold()
    try:
        heap.tune_gc()
        node = _Node()
        gone = weakref.ref(node)
        gc.collect(1)  # now in the oldest generation, where the daemon's calls wait
        del node
        # Hundreds of young collections, with many more objects surviving
        # them than the oldest generation held, do not reach it: Python's
        # own trigger for a full pass is off. (Small young thresholds keep
        # the test quick; the oldest one is tune_gc's.)
        gc.set_threshold(1_000, 2, gc.get_threshold()[2])
        kept = [[] for _ in range(max(400_000, 2 * len(gc.get_objects())))]
        assert gone() is not None
        del kept

        async def main() -> None:
            with trio.move_on_after(0.2):
                await heap.collect_cycles(0.05)

        trio.run(main)
        assert gone() is None
    finally:
        gc.unfreeze()
        gc.set_threshold(*saved)
