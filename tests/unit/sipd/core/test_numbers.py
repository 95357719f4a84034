"""Numbers in any spelling reach one form (sipd.core.numbers), and the alias map's DIDs."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sipd.core.numbers import SEPARATORS, NumberPlan
from sipd.core.ownership import Ownership
from srfs.files.aliases import AliasMap

DE = NumberPlan(country_code="49", national_prefix="0", international_prefix="00")
BARE = NumberPlan()


@pytest.mark.parametrize("text", [
    "+491727221221", "+49 1727 221221", "+49-1727-221221", "+49.1727.221221",
    "+49 (1727) 221-221", "01727221221", "0 1727 221221", "(0)1727-221221", "0172.722.1221",
    "00491727221221", "0049 1727 221221",
])
def test_every_spelling_of_one_german_number_is_the_same(text: str) -> None:
    assert DE.normalise(text) == "+491727221221"


@pytest.mark.parametrize(("text", "want"), [
    ("1003", "1003"),            # an extension stays
    ("10-03", "1003"),
    ("*21#", "*21#"),            # a service code stays
    ("0044 20 7946 0000", "+442079460000"),
    ("+1 (555) 123-4567", "+15551234567"),
    ("0", "0"),                  # the prefix alone is no number of the country
])
def test_other_numbers(text: str, want: str) -> None:
    assert DE.normalise(text) == want


@pytest.mark.parametrize("text", ["alice", "jan.smith", "", "+", "()", "12a4", "+49+1", "--",
                                  "1 2;x", "+#"])
def test_what_is_not_a_number(text: str) -> None:
    assert DE.normalise(text) is None


def test_without_a_country_only_the_separators_go() -> None:
    assert BARE.normalise("+49 1727 221221") == "+491727221221"
    assert BARE.normalise("01727221221") == "01727221221"
    assert BARE.normalise("0049 1727 221221") == "00491727221221"
    # A national prefix needs the country it belongs to.
    assert NumberPlan(national_prefix="0").normalise("01727221221") == "01727221221"


def test_a_global_phone_context_completes_a_local_number() -> None:
    assert BARE.normalise("1727221221", "+49") == "+491727221221"
    assert DE.normalise("1727-221221", "+49") == "+491727221221"
    # A domain context says nothing about the digits.
    assert DE.normalise("1003", "example.com") == "1003"
    # A global number ignores its context.
    assert DE.normalise("+441234", "+49") == "+441234"


@pytest.mark.parametrize("bad", [{"country_code": "+49"}, {"national_prefix": "x"},
                                 {"international_prefix": "123456789"}])
def test_a_plan_takes_digits_only(bad: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        NumberPlan(**bad)


# ------------------------------------------------------------------ properties

national = st.text("0123456789", min_size=1, max_size=12).filter(lambda d: not d.startswith("0"))
separator = st.sampled_from(list(SEPARATORS))


@st.composite
def spelled(draw: st.DrawFn, digits: str) -> str:
    """``digits`` with separators sprinkled between them."""
    out = []
    for ch in digits:
        out.append(ch)
        out.extend(draw(st.lists(separator, max_size=2)))
    return "".join(out)


@given(st.data(), national)
def test_national_international_and_e164_spellings_agree(data: st.DataObject, rest: str) -> None:
    forms = ["+49" + rest, "0" + rest, "0049" + rest]
    got = {DE.normalise(data.draw(spelled(f))) for f in forms}
    assert got == {"+49" + rest}


@given(st.text(max_size=20))
def test_normalising_is_idempotent_and_never_raises(text: str) -> None:
    once = DE.normalise(text)
    if once is not None:
        assert DE.normalise(once) == once
        assert not set(once) & set(SEPARATORS)


@given(st.text(alphabet=st.characters(whitelist_categories=("Ll", "Lu")), min_size=1))
def test_names_with_letters_are_never_numbers(name: str) -> None:
    assert DE.normalise(name) is None


# ------------------------------------------------------------------ the alias map


def owned(plan: NumberPlan = DE) -> Ownership:
    own = Ownership(None, None)
    own.aliases = AliasMap.of({"01727221221": "acme", "1003": "jan", "+441727238471": "dave"})
    own.plan = plan
    return own


@pytest.mark.parametrize("dialled", ["01727221221", "+491727221221", "+49 1727 221221",
                                     "0049-1727-221221", "(0)1727 221221"])
def test_a_did_in_any_spelling_is_the_did_as_the_map_writes_it(dialled: str) -> None:
    assert owned().number(dialled) == "01727221221"
    assert owned().number(dialled, phone=True) == "01727221221"


def test_what_the_map_does_not_hold() -> None:
    own = owned()
    assert own.number("alice") == "alice"
    assert own.number("1003") == "1003"
    assert own.number("10-03", phone=True) == "1003"
    # A number nobody owns keeps its spelling unless it is a phone number,
    # which goes on normalised.
    assert own.number("030 123456") == "030 123456"
    assert own.number("030 123456", phone=True) == "+4930123456"
    assert own.number("1727221221", phone=True, phone_context="+49") == "01727221221"


def test_without_a_country_e164_and_national_spellings_differ() -> None:
    own = owned(BARE)
    assert own.number("+491727221221") == "+491727221221"
    assert own.number("0-1727-221221") == "01727221221"
    assert own.number("+44 1727 238471") == "+441727238471"


def test_the_index_follows_the_map_and_the_plan() -> None:
    own = owned(BARE)
    assert own.number("+491727221221") == "+491727221221"
    own.plan = DE
    assert own.number("+491727221221") == "01727221221"
    own.aliases = AliasMap.of({"+491727221221": "acme"})
    assert own.number("01727221221") == "+491727221221"
