"""The event streams: lines, positions, one cursor per reader, bounded memory."""

from __future__ import annotations

from srfs.state.calls import Call
from srfs.state.events import (
    MAX_VALUE,
    Cursor,
    Event,
    EventLog,
    Events,
    auth_failure,
    call_event,
    contact_event,
    format_event,
)
from srfs.state.location import Binding, LocationStore, RemoveReason

T0 = 1_796_000_000.0  # 2026-11-30T...


def ev(n: int, user: str | None = "jan") -> Event:
    return Event(T0 + n, "register", (("user", user or "-"), ("n", str(n))), user)


def drain(cursor: Cursor, off: int = 0, size: int = 1 << 17) -> tuple[bytes, int]:
    """Read like cat until a read would wait: (what was read, next offset)."""
    out = b""
    while True:
        data = cursor.read(off, size)
        if data is None:
            return out, off
        out += data
        off += len(data)


def test_line_format_is_time_event_and_quoted_fields() -> None:
    line = format_event(T0, "register", (("user", "jan"), ("ua", 'Yea "x"\nlink'), ("e", "")))
    assert line == b'2026-11-30T00:53:20Z register user=jan ua="Yea \\"x\\"?link" e=""\n'
    long = format_event(T0, "auth-fail", (("user", "x" * 5000),))
    assert len(long) < MAX_VALUE + 60 and long.endswith(b"\n") and long.count(b"\n") == 1


def test_contact_changes_become_register_unregister_expire() -> None:
    store = LocationStore()
    seen: list[Event] = []
    store.subscribe(lambda c: seen.extend(e for e in [contact_event(c, T0)] if e is not None))
    b = Binding("jan", "jan", "sip:jan@192.0.2.1", T0 + 60, received="udp:192.0.2.1:5060",
                ua="Phone 1")
    store.upsert(b)
    store.upsert(b)  # a refresh: no event
    store.remove("jan", b.key, RemoveReason.UNREGISTERED)
    store.upsert(Binding("jan", "jan", "sip:pbx@192.0.2.2", None))
    store.remove_aor("jan", RemoveReason.ADMIN)
    store.upsert(b)
    store.expire(T0 + 61)
    lines = [format_event(e.time, e.name, e.fields).decode() for e in seen]
    assert lines == [
        "2026-11-30T00:53:20Z register user=jan aor=jan contact=sip:jan@192.0.2.1 expires=60 "
        'received=udp:192.0.2.1:5060 ua="Phone 1"\n',
        "2026-11-30T00:53:20Z unregister user=jan aor=jan contact=sip:jan@192.0.2.1 reason=request\n",
        "2026-11-30T00:53:20Z register user=jan aor=jan contact=sip:pbx@192.0.2.2 expires=never\n",
        "2026-11-30T00:53:20Z unregister user=jan aor=jan contact=sip:pbx@192.0.2.2 reason=admin\n",
        "2026-11-30T00:53:20Z register user=jan aor=jan contact=sip:jan@192.0.2.1 expires=60 "
        'received=udp:192.0.2.1:5060 ua="Phone 1"\n',
        "2026-11-30T00:53:20Z expire user=jan aor=jan contact=sip:jan@192.0.2.1\n",
    ]
    assert all(e.user == "jan" for e in seen)


def test_call_and_auth_events() -> None:
    leg = Call("c1@x", "jan", "sip:bob@example.com", "out", "answered", T0)
    end = call_event("call-end", leg, T0 + 12, duration=12, reason="bye")
    assert format_event(end.time, end.name, end.fields) == (
        b"2026-11-30T00:53:32Z call-end user=jan call-id=c1@x direction=out "
        b"peer=sip:bob@example.com duration=12 reason=bye\n")
    assert end.user == "jan"
    fail = auth_failure("a b", "udp:203.0.113.5:5060", "REGISTER", "wrong password", T0)
    assert fail.user is None  # root's file only
    assert format_event(fail.time, fail.name, fail.fields) == (
        b'2026-11-30T00:53:20Z auth-fail user="a b" source=udp:203.0.113.5:5060 '
        b'method=REGISTER reason="wrong password"\n')


def test_cat_reads_what_is_kept_then_waits_and_every_reader_gets_every_line() -> None:
    events = Events(T0)
    early = events.open(None)
    events.push(ev(1))
    late = events.open(None)
    events.push(ev(2))
    ends = []
    for cursor in (early, late):
        text, off = drain(cursor)
        assert text.decode().splitlines() == [
            "2026-11-30T00:53:20Z start",
            "2026-11-30T00:53:21Z register user=jan n=1",
            "2026-11-30T00:53:22Z register user=jan n=2",
        ]
        assert off == events.root.end  # the size tail(1) sees
        assert cursor.read(off, 4096) is None and not cursor.ready()
        ends.append(off)
    events.push(ev(3))
    for cursor, off in zip((early, late), ends, strict=True):
        assert cursor.ready()
        assert cursor.read(off, 4096) == b"2026-11-30T00:53:23Z register user=jan n=3\n"


def test_small_reads_and_rewinds_see_consistent_bytes() -> None:
    log = EventLog(8, T0)
    for n in range(3):
        log.append(T0 + n, format_event(T0 + n, "x", (("n", str(n)),)))
    whole = log.read(0, log.end)
    cursor = Cursor(log, None)
    # bash's read builtin: 128 bytes, then lseek back to after the newline.
    got = cursor.read(0, 30)
    assert got == whole[:30]
    nl = got.index(b"\n") + 1
    assert cursor.read(nl, 30) == whole[nl:nl + 30]


def test_a_reader_that_falls_behind_gets_lost_then_the_oldest_kept() -> None:
    events = Events(T0, root_keep=4)
    cursor = events.open(None)
    _, off = drain(cursor)
    for n in range(10):
        events.push(ev(n))
    assert len(events.root) == 4  # memory: the ring, whatever the reader does
    lost = cursor.read(off, 4096)
    assert lost == b"2026-11-30T00:53:25Z lost events=6\n"  # the time of the last one dropped
    text, off = drain(cursor, off + len(lost))
    assert [line.split()[-1] for line in text.decode().splitlines()] == [
        "n=6", "n=7", "n=8", "n=9"]
    events.push(ev(10))
    assert cursor.read(off, 4096) == b"2026-11-30T00:53:30Z register user=jan n=10\n"


def test_a_reader_cut_mid_line_gets_the_marker_on_a_line_of_its_own() -> None:
    events = Events(T0, root_keep=2)
    cursor = events.open(None)
    half = cursor.read(0, 5)
    assert half == b"2026-"
    for n in range(5):
        events.push(ev(n))
    assert cursor.read(5, 4096) == b"\n2026-11-30T00:53:22Z lost events=4\n"


def test_cat_from_the_start_after_the_ring_wrapped() -> None:
    events = Events(T0, root_keep=3)
    for n in range(5):
        events.push(ev(n))
    text, _ = drain(events.open(None))
    assert text.decode().splitlines() == [
        "2026-11-30T00:53:21Z lost events=3",
        "2026-11-30T00:53:22Z register user=jan n=2",
        "2026-11-30T00:53:23Z register user=jan n=3",
        "2026-11-30T00:53:24Z register user=jan n=4",
    ]


def tail_lines(cursor: Cursor, size: int, n: int, bufsize: int = 8192) -> list[bytes]:
    """What GNU tail -n N reads: blocks backwards from the size, aligned to bufsize."""
    pos = size - (size % bufsize or bufsize)
    blocks = []
    while True:
        data = cursor.read(pos, min(bufsize, size - pos))
        assert data is not None and len(data) == min(bufsize, size - pos)
        blocks.insert(0, data)
        if b"".join(blocks).count(b"\n") > n or pos == 0:
            return b"".join(blocks).splitlines()[-n:]
        pos -= bufsize


def test_tail_sees_the_last_lines_and_positions_that_add_up() -> None:
    events = Events(T0, root_keep=1000)
    for n in range(400):
        events.push(ev(n))
    cursor = events.open(None)
    size = events.root.end
    assert [line.split()[-1] for line in tail_lines(cursor, size, 3)] == [
        b"n=397", b"n=398", b"n=399"]
    # tail -f then reads exactly what the size grew by.
    events.push(ev(400))
    grown = events.root.end
    assert cursor.read(size, grown - size) == format_event(T0 + 400, "register",
                                                          (("user", "jan"), ("n", "400")))


def test_tail_looking_back_beyond_what_is_kept_reads_empty_lines() -> None:
    events = Events(T0, root_keep=200)
    for n in range(1000):
        events.push(ev(n))
    cursor = events.open(None)
    got = tail_lines(cursor, events.root.end, 500)
    assert got[:300] == [b""] * 300
    assert got[300].endswith(b"n=800") and got[-1].endswith(b"n=999")


def test_user_streams_exist_while_open_and_begin_with_the_users_kept_lines() -> None:
    events = Events(T0, user_keep=3)
    events.push(ev(1, "jan"))
    events.push(ev(2, "bob"))
    events.push(ev(3, None))
    events.push(ev(4, "jan"))
    events.push(ev(5, "jan"))
    size, _ = events.size("jan")
    jan = events.open("jan")
    assert events.log_of("jan") is jan.log and jan.log.end == size
    text, off = drain(jan)
    assert [line.split()[1:] for line in text.decode().splitlines()] == [
        ["start"], ["register", "user=jan", "n=4"], ["register", "user=jan", "n=5"]]
    events.push(ev(6, "bob"))
    assert jan.read(off, 4096) is None  # bob's line is not jan's business
    events.push(ev(7, "jan"))
    assert jan.read(off, 4096) is not None
    second = events.open("jan")
    events.close(jan)
    assert events.log_of("jan") is second.log
    events.close(second)
    assert events.log_of("jan") is None  # nobody reads: no memory kept


def test_listeners_hear_of_every_stream_a_line_went_to() -> None:
    events = Events(T0)
    heard: list[str] = []
    events.listen(lambda log: heard.append("root" if log is events.root else "jan"))
    events.open("jan")
    events.push(ev(1, "jan"))
    events.push(ev(2, "bob"))
    assert heard == ["root", "jan", "root"]
