"""Call records of calls that never ring a phone or go elsewhere: dnd, busy, no answer, forwards.

Sans-IO: the proxy of test_proxy with the real call tracker behind it.
"""

from __future__ import annotations

from sipd.core.peer import Peer
from sipd.proxy.calltrack import CallTracker
from srfs.files.acc import AccRecord
from srfs.state.calls import CallTable
from tests.unit.sipd.proxy.test_proxy import (
    BOB1,
    CALLER,
    REALM,
    Net,
    answer,
    invite,
    requests,
    responses,
)

CAROL1 = Peer("udp", "192.0.2.30", 5070, conn=0)


def net_with_records() -> tuple[Net, CallTracker]:
    tracker = CallTracker(CallTable())
    return Net(hooks=tracker), tracker


def records(tracker: CallTracker) -> dict[str, list[tuple[str, int | None, str | None]]]:
    out: dict[str, list[tuple[str, int | None, str | None]]] = {}
    for user, batch in tracker.take_records():
        for entry in batch:
            if isinstance(entry, AccRecord):
                out.setdefault(user, []).append((entry.event, entry.status, entry.reason))
    return out


def test_a_call_refused_for_dnd_leaves_a_failure_line() -> None:
    net, tracker = net_with_records()
    net.bind("bob", BOB1)
    net.users.configs["bob"] = "dnd = yes\n"
    assert responses(net.send(invite(), CALLER)) == [100, 486]
    assert records(tracker) == {"bob": [("start", None, None), ("failure", 486, None)]}


def test_a_busy_phone_leaves_a_failure_line() -> None:
    net, tracker = net_with_records()
    net.bind("bob", BOB1)
    (req, _), = requests(net.send(invite(), CALLER), "INVITE")
    out = net.send(answer(req, 486), BOB1)
    assert responses(out)[-1] == 486
    assert records(tracker) == {"bob": [("start", None, None), ("failure", 486, None)]}


def test_a_call_nobody_answers_leaves_a_failure_line() -> None:
    net, tracker = net_with_records()
    net.bind("bob", BOB1)
    requests(net.send(invite(), CALLER), "INVITE")
    out = net.tick(net.now + 33)  # Timer B: the phone never answered
    assert 408 in responses(out)
    assert records(tracker) == {"bob": [("start", None, None), ("failure", 408, None)]}


def test_an_unconditional_forward_is_recorded_as_forwarded() -> None:
    net, tracker = net_with_records()
    net.bind("carol", CAROL1)
    net.users.configs["bob"] = f"forward = sip:carol@{REALM}\n"
    (_, peer), = requests(net.send(invite(), CALLER), "INVITE")
    assert peer == CAROL1
    assert records(tracker) == {
        "bob": [("start", None, None), ("failure", 302, "forwarded")],
        "carol": [("start", None, None)],
    }


def test_a_forward_to_another_domain_is_recorded_as_forwarded() -> None:
    net, tracker = net_with_records()
    net = Net(outbound="sip:192.0.2.99:5060", hooks=tracker)
    net.users.configs["bob"] = "forward = sip:someone@example.org\n"
    requests(net.send(invite(), CALLER), "INVITE")
    assert records(tracker) == {"bob": [("start", None, None), ("failure", 302, "forwarded")]}


def test_forward_noanswer_is_recorded_as_forwarded_with_408() -> None:
    net, tracker = net_with_records()
    net.bind("bob", BOB1)
    net.bind("carol", CAROL1)
    net.users.configs["bob"] = f"forward_noanswer = sip:carol@{REALM}\nring_timeout = 5\n"
    (req, _), = requests(net.send(invite(), CALLER), "INVITE")
    net.send(answer(req, 180), BOB1)
    out = net.tick(net.now + 5)
    assert any(p == CAROL1 for _, p in requests(out, "INVITE"))
    assert records(tracker) == {
        "bob": [("start", None, None), ("failure", 408, "forwarded")],
        "carol": [("start", None, None)],
    }
