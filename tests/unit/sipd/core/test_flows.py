"""Which TCP connections carry a registration, from the location store's changes."""

from __future__ import annotations

from sipd.core.flows import RegisteredFlows
from sipd.core.identity import LocalIdentity
from sipd.core.peer import Peer
from sipd.endpoint import Endpoint
from sipd.proxy.targets import binding_target
from sipd.registrar.server import Server
from srfs.state.location import Binding, LocationStore, RemoveReason

PHONE = Peer("tcp", "192.0.2.7", 49152, conn=3)
V6 = Peer("tcp", "2001:db8::7", 49153, conn=4)


def binding(contact: str, received: str | None, expires: float = 1000.0) -> Binding:
    return Binding("alice", "alice", contact, expires, received=received)


def test_bindings_name_their_connections() -> None:
    store = LocationStore()
    store.upsert(binding("sip:alice@10.0.0.1:5060", "tcp:192.0.2.7:49152"))
    flows = RegisteredFlows(store)  # bindings already there count
    store.upsert(binding("sip:alice@10.0.0.2:5060", "tcp:[2001:db8::7]:49153"))
    store.upsert(binding("sip:alice@10.0.0.3:5060", "udp:192.0.2.7:49152"))
    store.upsert(binding("sip:alice@10.0.0.4:5060", None))
    assert flows.carries_binding(PHONE) and flows.carries_binding(V6)
    assert not flows.carries_binding(Peer("udp", "192.0.2.7", 49152, conn=1))
    assert not flows.carries_binding(Peer("tcp", "192.0.2.7", 49999, conn=5))
    assert len(flows) == 2


def test_two_bindings_over_one_connection_and_their_removal() -> None:
    store = LocationStore()
    flows = RegisteredFlows(store)
    for n in (1, 2):
        store.upsert(binding(f"sip:alice@10.0.0.{n}:5060", "tcp:192.0.2.7:49152"))
    store.remove("alice", binding("sip:alice@10.0.0.1:5060", None).key, RemoveReason.UNREGISTERED)
    assert flows.carries_binding(PHONE)
    store.expire(2000.0)
    assert not flows.carries_binding(PHONE) and len(flows) == 0


def test_a_refresh_over_a_new_connection_moves_the_binding() -> None:
    store = LocationStore()
    flows = RegisteredFlows(store)
    store.upsert(binding("sip:alice@10.0.0.1:5060", "tcp:192.0.2.7:49152"))
    store.upsert(binding("sip:alice@10.0.0.1:5060", "tcp:192.0.2.7:50000"))
    assert not flows.carries_binding(PHONE)
    assert flows.carries_binding(Peer("tcp", "192.0.2.7", 50000, conn=6))


def test_the_endpoint_answers_the_transport() -> None:
    identity = LocalIdentity(frozenset({"sip.test"}), frozenset({5060}))
    store = LocationStore()
    ep = Endpoint(Server(identity), max_message_size=65535, store=store)
    assert not ep.connection_has_binding(PHONE)
    store.upsert(binding("sip:alice@10.0.0.1:5060", str(PHONE)))
    assert ep.connection_has_binding(PHONE)
    assert not Endpoint(Server(identity), max_message_size=65535).connection_has_binding(PHONE)


# ------------------------------------------------------------------ UDP flows: our socket


def test_a_udp_flow_keeps_the_socket_its_register_came_in_on() -> None:
    store = LocationStore()
    flows = RegisteredFlows(store)
    phone = Peer("udp", "203.0.113.5", 40000, conn=7)
    flows.heard(phone)
    store.upsert(binding("sip:alice@10.0.0.1:5060", str(phone)))
    assert flows.udp_socket("udp:203.0.113.5:40000") == 7
    target = binding_target(store.lookup("alice")[0], udp_socket=flows.udp_socket)
    assert target.dest == phone
    # Refreshed, and written back through /run/sr: the same flow.
    store.upsert(binding("sip:alice@10.0.0.1:5060", str(phone), expires=2000.0))
    assert flows.udp_socket(str(phone)) == 7
    # The REGISTER came in on another socket this time: that one now.
    flows.heard(Peer("udp", "203.0.113.5", 40000, conn=8))
    assert flows.udp_socket(str(phone)) == 8
    # Gone with the last binding that names it.
    store.remove("alice", store.lookup("alice")[0].key, RemoveReason.UNREGISTERED)
    assert flows.udp_socket(str(phone)) == 0
    # Unknown (reloaded at start, never heard): any socket of the family.
    store.upsert(binding("sip:alice@10.0.0.2:5060", "udp:198.51.100.9:5060"))
    target = binding_target(store.lookup("alice")[0], udp_socket=flows.udp_socket)
    assert target.dest == Peer("udp", "198.51.100.9", 5060, 0)


def test_what_registers_is_remembered_only_for_a_while() -> None:
    store = LocationStore()
    flows = RegisteredFlows(store)
    for n in range(RegisteredFlows.RECENT + 10):
        flows.heard(Peer("udp", "198.51.100.1", 1000 + n, conn=2))
    store.upsert(binding("sip:alice@10.0.0.1:5060", "udp:198.51.100.1:1000"))
    assert flows.udp_socket("udp:198.51.100.1:1000") == 0
    store.upsert(binding("sip:alice@10.0.0.2:5060", f"udp:198.51.100.1:{1009 + RegisteredFlows.RECENT}"))
    assert flows.udp_socket(f"udp:198.51.100.1:{1009 + RegisteredFlows.RECENT}") == 2
