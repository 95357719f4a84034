"""Deadlines against a plain model: the same entries come up, in the same order.

The lanes (one queue per kind for entries armed in deadline order) and the
heap of their first entries and of the out-of-order ones are an
optimisation only: whatever is armed, re-armed, disarmed or rebuilt, the
entries due at a time are those the model says, ordered by deadline and
then by when they were armed.
"""

from __future__ import annotations

import random
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from sipd.sip.timers import Deadlines


class Owner:
    def __init__(self, name: int) -> None:
        self.name = name
        self._timers: dict[Any, int] = {}

    def __repr__(self) -> str:
        return f"Owner({self.name})"


KINDS = ("A", "J", "K", "C")
OWNERS = 6

# One step: arm (owner, kind, delay), disarm, disarm_all, or let time pass.
STEP = st.one_of(
    st.tuples(st.just("arm"), st.integers(0, OWNERS - 1), st.sampled_from(KINDS),
              st.sampled_from((0.0, 0.5, 1.0, 2.0, 32.0)) | st.floats(0, 40)),
    st.tuples(st.just("disarm"), st.integers(0, OWNERS - 1), st.sampled_from(KINDS), st.just(0.0)),
    st.tuples(st.just("disarm_all"), st.integers(0, OWNERS - 1), st.just(""), st.just(0.0)),
    st.tuples(st.just("tick"), st.just(0), st.just(""), st.floats(0, 10)),
)


def run_against_model(steps: list[tuple[str, int, str, float]], owners_count: int) -> int:
    """Drive a Deadlines and the model alike; the number of rebuilds seen."""
    deadlines: Deadlines[Owner] = Deadlines()
    owners = [Owner(i) for i in range(owners_count)]
    model: dict[tuple[int, str], tuple[float, int]] = {}
    now = 0.0
    seq = 0
    rebuilds = 0
    for op, who, kind, amount in steps:
        owner = owners[who]
        held = deadlines.held
        if op == "arm":
            seq += 1
            model[(who, kind)] = (now + amount, seq)
            deadlines.arm(owner, kind, now + amount)
        elif op in ("disarm", "disarm_all"):
            gone = [k for k in model if k[0] == who and (op == "disarm_all" or k[1] == kind)]
            for key in gone:
                del model[key]
            if op == "disarm":
                deadlines.disarm(owner, kind)
            else:
                deadlines.disarm_all(owner)
            if gone:
                # Dead entries are bounded: a disarm rebuilds without them
                # once they are past the threshold and more than the live ones.
                threshold = Deadlines.COMPACT_THRESHOLD
                assert deadlines.held <= max(len(model) + threshold, 2 * len(model))
                rebuilds += deadlines.held < held - 1
        else:
            now += amount
            expected = sorted((v, k) for k, v in model.items() if v[0] <= now)
            got = [(o.name, k) for o, k in deadlines.due(now)]
            assert got == [k for _, k in expected]
            for _, k in expected:
                del model[k]
        assert len(deadlines) == len(model)
        assert deadlines.next() == min((v[0] for v in model.values()), default=None)
        check_shape(deadlines)
    return rebuilds


def check_shape(deadlines: Deadlines[Owner]) -> None:
    """The heap holds each lane's first entry and nothing twice; ``held`` counts them all."""
    heap, lanes = deadlines._heap, deadlines._lanes
    # Entries by sequence number: compiled, each container boxes its own tuple.
    assert len({e[1] for e in heap}) == len(heap)
    firsts = {lane[0][1] for lane in lanes.values() if lane}
    assert firsts <= {e[1] for e in heap}
    for lane in lanes.values():
        assert [e[:2] for e in lane] == sorted(e[:2] for e in lane)
    out_of_order = [e for e in heap if e[1] not in firsts]
    assert deadlines.held == len(out_of_order) + sum(len(lane) for lane in lanes.values())


@settings(max_examples=300, deadline=None)
@given(st.lists(STEP, max_size=300))
def test_deadlines_give_what_a_sorted_model_gives(steps: list[tuple[str, int, str, float]]) -> None:
    run_against_model(steps, OWNERS)


def test_the_model_holds_through_rebuilds() -> None:
    rng = random.Random(5060)
    owners = 20
    steps: list[tuple[str, int, str, float]] = []
    for _ in range(20_000):
        roll = rng.random()
        who, kind = rng.randrange(owners), rng.choice(KINDS)
        if roll < 0.6:
            delay = rng.choice((32.0, 32.0, 5.0, 0.5)) if rng.random() < 0.8 else rng.uniform(0, 40)
            steps.append(("arm", who, kind, delay))
        elif roll < 0.85:
            steps.append(("disarm", who, kind, 0.0))
        elif roll < 0.95:
            steps.append(("disarm_all", who, "", 0.0))
        else:
            steps.append(("tick", 0, "", rng.uniform(0, 0.3)))
    assert run_against_model(steps, owners) > 0


def test_an_entry_armed_while_the_due_ones_are_handled_comes_up_in_the_same_pass() -> None:
    deadlines: Deadlines[Owner] = Deadlines()
    a, b = Owner(0), Owner(1)
    deadlines.arm(a, "J", 1.0)
    deadlines.arm(a, "K", 5.0)
    seen = []
    for owner, kind in deadlines.due(2.0):
        seen.append((owner.name, kind))
        if owner is a:
            # Due by the time of this pass, and earlier than a lane's last.
            deadlines.arm(b, "J", 0.5)
            deadlines.disarm(a, "K")
    assert seen == [(0, "J"), (1, "J")]
    assert len(deadlines) == 0 and deadlines.next() is None


def test_a_lane_keeps_a_steady_load_out_of_the_heap() -> None:
    deadlines: Deadlines[Owner] = Deadlines()
    owners = [Owner(i) for i in range(1000)]
    for i, owner in enumerate(owners):
        deadlines.arm(owner, "J", i / 100 + 32.0)  # 64*T1 after each request
        deadlines.arm(owner, "A", i / 100 + 0.5)
    assert len(deadlines._heap) == 2  # each lane's first
    deadlines.arm(owners[0], "A", 1.0)  # doubled: out of order
    assert len(deadlines._heap) == 3
    popped = [(o.name, k) for o, k in deadlines.due(1.0)]
    assert popped[:2] == [(1, "A"), (2, "A")] and (0, "A") in popped


def test_a_rebuild_keeps_each_lanes_live_first_entry_once() -> None:
    deadlines: Deadlines[Owner] = Deadlines()
    owners = [Owner(i) for i in range(600)]
    for i, owner in enumerate(owners):
        deadlines.arm(owner, "J", 32.0 + i)
    deadlines.arm(owners[0], "A", 2.0)
    deadlines.arm(owners[1], "A", 1.0)  # out of order
    kept = {0, 7, 599}
    for owner in owners:
        if owner.name not in kept:
            deadlines.disarm(owner, "J")
    assert deadlines.held < 600  # rebuilt
    check_shape(deadlines)
    assert [(o.name, k) for o, k in deadlines.due(1e9)] == [
        (1, "A"), (0, "A"), (0, "J"), (7, "J"), (599, "J")]
    assert len(deadlines) == 0 and deadlines.held == 0
