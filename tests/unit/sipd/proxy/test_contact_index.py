"""The proxy's index of registered contacts: a request inside a dialog finds its phone."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sipd.proxy.routing import ContactIndex
from srfs.state.location import Binding, LocationStore, contact_key

NOW = 1_800_000_000.0
INSTANCE = "<urn:uuid:00000000-0000-0000-0000-000000000001>"


def binding(contact: str, instance: str | None = None, received: str | None = "udp:198.51.100.7:40000",
            registered: float = NOW) -> Binding:
    return Binding("jan", "jan", contact, NOW + 600, instance=instance,
                   reg_id=1 if instance else None, received=received, registered=registered)


def never_live(transport: str, host: str, port: int) -> None:
    return None


@given(
    scheme=st.sampled_from(["sip", "SIP", "sips", "tel", "uri", " sip", "urn"]),
    user=st.text("aJ%4e0-", max_size=6),
    host=st.sampled_from(["example.com", "EXAMPLE.com", "[2001:DB8::1]", "192.0.2.1"]),
    rest=st.sampled_from(["", ":5060", ":05070", ";transport=UDP", ";ob;lr", "?x=y", " "]),
    instance=st.sampled_from([None, INSTANCE]),
)
def test_the_index_key_is_the_contacts_key(scheme: str, user: str, host: str, rest: str,
                                           instance: str | None) -> None:
    # Taken from the binding's own key where that is the contact's.
    b = binding(f"{scheme}:{user}@{host}{rest}", instance)
    assert b.contact_identity == contact_key(b.contact)


@pytest.mark.parametrize("instance", [None, INSTANCE])
def test_a_dialog_request_finds_the_phone_by_any_spelling_of_its_contact(
        instance: str | None) -> None:
    store = LocationStore()
    index = ContactIndex(store)
    store.upsert(binding("sip:jan@192.0.2.10:5060;transport=udp", instance))
    target = index.hop("sip:jan@192.0.2.10;TRANSPORT=UDP", never_live)
    assert target is not None and (target.host, target.port) == ("198.51.100.7", 40000)
    # Another contact: with an instance, the same binding moved, and its
    # old contact leads nowhere now; without, a second binding.
    store.upsert(binding("sip:jan@192.0.2.11:5060", instance, "udp:198.51.100.8:40001"))
    old = index.hop("sip:jan@192.0.2.10:5060;transport=udp", never_live)
    assert (old is None) == (instance is not None)
    new = index.hop("sip:jan@192.0.2.11", never_live)
    assert new is not None and (new.host, new.port) == ("198.51.100.8", 40001)


def test_an_index_built_from_a_loaded_store_finds_its_contacts() -> None:
    store = LocationStore()
    store.upsert(binding("SIP:jan@Example.COM", None))
    store.upsert(binding("tel:+15551234567", None))
    index = ContactIndex(store)
    target = index.hop("sip:jan@example.com:5060", never_live)
    assert target is not None and target.port == 40000
