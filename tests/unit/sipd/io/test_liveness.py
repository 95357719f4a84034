"""When a TCP connection closes, sans-IO: deadlines from bytes and times passed in."""

from __future__ import annotations

from sipd.io.liveness import Close, Liveness


def clock(unregistered: float | None = 30.0) -> Liveness:
    return Liveness.opened(100.0, idle_timeout=300.0, message_timeout=32.0,
                           unregistered_timeout=unregistered)


def never() -> bool:
    raise AssertionError("asked whether a binding is held before the deadline")


def test_an_unfinished_message_is_due_from_its_first_byte() -> None:
    c = clock()
    c.received(101.0, frames=0, messages=0, pending=True)
    for t in range(102, 133):  # a header line every second: the deadline stays
        c.received(float(t), frames=0, messages=0, pending=True)
        assert c.deadline() == 133.0
        assert c.check(float(t), never) is None
    assert c.check(133.0, never) == (Close.UNFINISHED, 32.0)


def test_a_message_completed_with_the_start_of_the_next_restarts_the_deadline() -> None:
    c = clock()
    c.received(101.0, frames=0, messages=0, pending=True)
    c.received(120.0, frames=1, messages=1, pending=True)
    assert c.message_started == 120.0 and c.deadline() == 152.0
    c.received(121.0, frames=1, messages=1, pending=False)
    assert c.message_started is None


def test_keepalives_count_as_traffic_but_not_as_messages() -> None:
    c = clock(unregistered=None)
    for t in (200.0, 350.0, 600.0):
        c.received(t, frames=1, messages=0, pending=False)
        assert c.deadline() == t + 300.0
        assert c.check(t + 299.0, never) is None
    assert c.check(900.0, never) == (Close.IDLE, 300.0)


def test_a_connection_nobody_registered_over_closes_despite_keepalives() -> None:
    c = clock()
    c.received(110.0, frames=1, messages=1, pending=False)  # an OPTIONS
    for t in (115.0, 120.0, 125.0, 135.0):
        c.received(t, frames=1, messages=0, pending=False)  # pings
        assert c.deadline() == 140.0
        assert c.check(t, never) is None
    assert c.check(140.0, lambda: False) == (Close.UNREGISTERED, 30.0)


def test_a_connection_carrying_a_binding_lives_on_keepalives() -> None:
    c = clock()
    asked: list[float] = []

    def held(t: float) -> bool:
        asked.append(t)
        return True

    c.received(101.0, frames=1, messages=1, pending=False)  # the REGISTER
    assert c.check(131.0, lambda: held(131.0)) is None
    # Vouched for: the next wake-up is the idle deadline, not another check.
    assert c.deadline() == 101.0 + 300.0
    c.received(200.0, frames=1, messages=0, pending=False)
    assert c.check(200.0, lambda: held(200.0)) is None
    assert asked == [131.0, 200.0]
    # The binding went away: the next keep-alive finds out.
    c.received(250.0, frames=1, messages=0, pending=False)
    assert c.check(250.0, lambda: False) == (Close.UNREGISTERED, 30.0)


def test_a_message_asks_again_after_the_short_time() -> None:
    c = clock()
    assert c.check(130.0, lambda: True) is None
    c.received(140.0, frames=1, messages=1, pending=False)
    assert not c.vouched and c.deadline() == 170.0
