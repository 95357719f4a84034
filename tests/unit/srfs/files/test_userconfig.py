"""srfs.files.userconfig: the ~/.sr/config format, its keys and the in-memory cache."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from srfs.files import userconfig
from srfs.files.userconfig import (
    EMPTY,
    KEYS,
    ConfigValueError,
    Problem,
    UserConfig,
    UserConfigs,
    parse,
    remove_key,
    set_value,
    validate,
)

# ------------------------------------------------------------------ validators

# (key, value, normalised value or None when it must be refused)
VALIDATION_CASES: list[tuple[str, str, str | None]] = [
    # display_name
    ("display_name", "Jan Jansen", "Jan Jansen"),
    ("display_name", "  Jan  ", "Jan"),
    ("display_name", "Zoë Ærøskøbing", "Zoë Ærøskøbing"),
    ("display_name", "Jan #2 (desk)", "Jan #2 (desk)"),
    ("display_name", '"quoted"', '"quoted"'),
    ("display_name", "x" * 64, "x" * 64),
    ("display_name", "x" * 65, None),
    ("display_name", "", None),
    ("display_name", "   ", None),
    ("display_name", "Jan\tJansen", None),
    ("display_name", "Jan\x00", None),
    ("display_name", "Jan\x7f", None),
    ("display_name", "Ja\x85n", None),  # NEL inside (strip() would eat it at the ends)
    ("display_name", "Jan\x85", "Jan"),
    ("display_name", "a\u2028b", None),
    ("display_name", "a\u202eb", None),
    ("display_name", "a\u2066b", None),
    ("display_name", "bad\udcffbyte", None),
    # dnd
    ("dnd", "yes", "yes"),
    ("dnd", "no", "no"),
    ("dnd", "YES", "yes"),
    ("dnd", "True", "yes"),
    ("dnd", "false", "no"),
    ("dnd", "on", "yes"),
    ("dnd", "OFF", "no"),
    ("dnd", "1", "yes"),
    ("dnd", "0", "no"),
    ("dnd", " yes ", "yes"),
    ("dnd", "y", None),
    ("dnd", "2", None),
    ("dnd", "", None),
    ("dnd", "yes please", None),
    # forward / forward_noanswer
    ("forward", "sip:bob@example.org", "sip:bob@example.org"),
    ("forward", "SIP:bob@Example.org", "sip:bob@Example.org"),
    ("forward", "sips:bob@example.org:5061;transport=tls", "sips:bob@example.org:5061;transport=tls"),
    ("forward", "sip:+441727238471@gw.example.org;user=phone",
     "sip:+441727238471@gw.example.org;user=phone"),
    ("forward", "sip:[2001:db8::1]:5060", "sip:[2001:db8::1]:5060"),
    ("forward", "sip:192.0.2.7", "sip:192.0.2.7"),
    ("forward", "tel:+441727238471", "tel:+441727238471"),
    ("forward", "tel:+44-1727-238471", "tel:+44-1727-238471"),
    ("forward", "TEL:+1(555)0100", "tel:+1(555)0100"),
    ("forward", "tel:1003;phone-context=example.org", "tel:1003;phone-context=example.org"),
    ("forward", "tel:*21#", "tel:*21#"),
    ("forward", "  sip:bob@example.org  ", "sip:bob@example.org"),
    ("forward", "bob", None),
    ("forward", "+441727238471", None),
    ("forward", "mailto:bob@example.org", None),
    ("forward", "http://example.org/", None),
    ("forward", "sip:", None),
    ("forward", "sip:bob@", None),
    ("forward", "sip:bob@exa mple.org", None),
    ("forward", 'sip:bob@example.org"', None),
    ("forward", "sip:bob@example.org>", None),
    ("forward", "sip:bob@example.org?subject=hi", None),
    ("forward", "sip:bob@example.org:0", None),
    ("forward", "sip:bob@example.org:65536", None),
    ("forward", "sip:bob@example.org:65535", "sip:bob@example.org:65535"),
    ("forward", "sip:b\u00f6b@example.org", None),
    ("forward", "sip:bob@example.org\r\nX: y", None),
    ("forward", "tel:", None),
    ("forward", "tel:+", None),
    ("forward", "tel:+44 1727", None),
    ("forward", "sip:bob@" + "a" * 300, None),
    ("forward", "", None),
    ("forward_noanswer", "sip:voicemail@example.org", "sip:voicemail@example.org"),
    ("forward_noanswer", "tel:+441727238471", "tel:+441727238471"),
    ("forward_noanswer", "voicemail", None),
    # ring_timeout
    ("ring_timeout", "1", "1"),
    ("ring_timeout", "30", "30"),
    ("ring_timeout", "300", "300"),
    ("ring_timeout", "030", "30"),
    ("ring_timeout", " 45 ", "45"),
    ("ring_timeout", "0", None),
    ("ring_timeout", "301", None),
    ("ring_timeout", "-5", None),
    ("ring_timeout", "+5", None),
    ("ring_timeout", "5s", None),
    ("ring_timeout", "5.0", None),
    ("ring_timeout", "1_0", None),
    ("ring_timeout", "\u0663", None),  # Arabic-Indic three: int() would take it
    ("ring_timeout", "99999999999", None),
    ("ring_timeout", "", None),
    # caller_id
    ("caller_id", "jan", "jan"),
    ("caller_id", "1003", "1003"),
    ("caller_id", "+441727238471", "+441727238471"),
    ("caller_id", "jan.smith", "jan.smith"),
    ("caller_id", "jan_s-2", "jan_s-2"),
    ("caller_id", " 1003 ", "1003"),
    ("caller_id", "", None),
    ("caller_id", "+", None),
    ("caller_id", "jan smith", None),
    ("caller_id", "sip:jan@example.org", None),
    ("caller_id", "-jan", None),
    ("caller_id", "x" * 65, None),
    ("caller_id", "j\u00e4n", None),
]


@pytest.mark.parametrize(("key", "value", "expected"), VALIDATION_CASES)
def test_validate(key: str, value: str, expected: str | None) -> None:
    if expected is None:
        with pytest.raises(ConfigValueError) as info:
            validate(key, value)
        assert info.value.reason and str(info.value) == info.value.reason
    else:
        assert validate(key, value) == expected
        # Normalising is idempotent: the stored form validates to itself.
        assert validate(key, expected) == expected


def test_every_key_has_a_case_in_the_table() -> None:
    assert {k for k, _, _ in VALIDATION_CASES} == set(KEYS)


@pytest.mark.parametrize("key", list(KEYS))
def test_key_table_entries_document_themselves(key: str) -> None:
    spec = KEYS[key]
    assert spec.name == key
    assert spec.doc.endswith(".")
    assert validate(key, spec.example) == spec.example


def test_key_table_lists_the_spec_keys_in_order() -> None:
    assert list(KEYS) == [
        "display_name", "dnd", "forward", "forward_noanswer", "ring_timeout", "caller_id"
    ]


def test_key_table_is_read_only() -> None:
    with pytest.raises(TypeError):
        KEYS["x"] = KEYS["dnd"]  # type: ignore[index]


@pytest.mark.parametrize("key", ["colour", "", "DND_X", "forward noanswer"])
def test_validate_refuses_unknown_keys(key: str) -> None:
    with pytest.raises(ConfigValueError, match="unknown setting"):
        validate(key, "yes")


def test_validate_takes_keys_in_any_case() -> None:
    assert validate("DND", "on") == "yes"


def test_config_value_error_is_a_value_error() -> None:
    assert issubclass(ConfigValueError, ValueError)


# ------------------------------------------------------------------ parsing

SAMPLE = """\
# my settings
display_name = Jan Jansen

dnd=no
   # an indented comment
forward   =   tel:+441727238471
colour = blue
this line is nonsense
"""


def test_parse_sample() -> None:
    cfg = parse(SAMPLE)
    assert dict(cfg.values) == {
        "display_name": "Jan Jansen",
        "dnd": "no",
        "forward": "tel:+441727238471",
    }
    assert cfg.text == SAMPLE
    assert [str(p) for p in cfg.problems] == [
        "line 7: unknown key 'colour' (ignored)",
        "line 8: expected key = value",
    ]


# (text, values, problem line numbers)
PARSE_CASES: list[tuple[str, dict[str, str], list[int]]] = [
    ("", {}, []),
    ("\n\n", {}, []),
    ("# only a comment\n", {}, []),
    ("dnd = yes", {"dnd": "yes"}, []),  # no final newline
    ("dnd = yes\r\n", {"dnd": "yes"}, []),  # CRLF
    ("DND = On\n", {"dnd": "yes"}, []),  # keys in any case, values normalised
    ("dnd = yes\ndnd = no\n", {"dnd": "no"}, [2]),  # last wins, noted
    ("dnd = yes\ndnd = maybe\n", {"dnd": "yes"}, [2]),  # a bad later line is ignored
    ("dnd = maybe\n", {}, [1]),
    ("ring_timeout = 0\nring_timeout = 20\n", {"ring_timeout": "20"}, [1]),
    ('display_name = "  Jan  "\n', {"display_name": "Jan"}, []),
    ('display_name = ""Jan""\n', {"display_name": '"Jan"'}, []),
    ('display_name = "\n', {"display_name": '"'}, []),
    ("display_name = a = b\n", {"display_name": "a = b"}, []),
    ("display_name = x # not a comment\n", {"display_name": "x # not a comment"}, []),
    ("= yes\n", {}, [1]),
    ("1dnd = yes\n", {}, [1]),
    ("dnd-x = yes\n", {}, [1]),
    ("dnd =\n", {}, [1]),
    ("future_key = 1\n", {}, [1]),
    ("\tdnd\t=\tyes\t\n", {"dnd": "yes"}, []),
    ("dnd = yes\fx\n", {}, [1]),  # a form feed does not end a line
    ("a\u2028dnd = yes\n", {}, [1]),  # nor does a Unicode line separator
]


@pytest.mark.parametrize(("text", "values", "problem_lines"), PARSE_CASES)
def test_parse_cases(text: str, values: dict[str, str], problem_lines: list[int]) -> None:
    cfg = parse(text)
    assert dict(cfg.values) == values
    assert [p.lineno for p in cfg.problems] == problem_lines
    assert all(p.reason for p in cfg.problems)


def test_parse_bytes_keeps_bad_utf8_for_rewrites() -> None:
    data = b"# caf\xe9\ndnd = on\n"
    cfg = parse(data)
    assert dict(cfg.values) == {"dnd": "yes"}
    assert userconfig.encode(cfg.text) == data
    new = set_value(cfg.text, "dnd", "no")
    assert userconfig.encode(new) == b"# caf\xe9\ndnd = no\n"


def test_parse_bad_utf8_value_is_a_problem_not_a_crash() -> None:
    cfg = parse(b"display_name = Jan\xff\n")
    assert dict(cfg.values) == {}
    assert cfg.problems[0].lineno == 1


def test_problem_str() -> None:
    assert str(Problem(3, "bad")) == "line 3: bad"


def test_duplicate_problem_names_the_overridden_line() -> None:
    cfg = parse("dnd = yes\n# x\ndnd = no\n")
    assert str(cfg.problems[0]) == "line 3: dnd set again; line 1 is overridden"


# ------------------------------------------------------------------ editing

# (text before, key, value, text after)
SET_CASES: list[tuple[str, str, str, str]] = [
    ("", "dnd", "yes", "dnd = yes\n"),
    ("# hi\n", "dnd", "on", "# hi\ndnd = yes\n"),
    ("# hi", "dnd", "yes", "# hi\ndnd = yes\n"),
    ("dnd = no\n", "dnd", "yes", "dnd = yes\n"),
    ("# a\ndnd = no\n# b\n", "dnd", "yes", "# a\ndnd = yes\n# b\n"),
    ("DND=no\n", "dnd", "yes", "dnd = yes\n"),
    ("dnd = no\n", "DND", "1", "dnd = yes\n"),
    # duplicates collapse onto the line in force (the last)
    ("dnd = yes\nx = 1\ndnd = no\n", "dnd", "yes", "x = 1\ndnd = yes\n"),
    # an invalid line for the key is replaced too: no stale line stays
    ("dnd = maybe\n", "dnd", "no", "dnd = no\n"),
    # other keys, unknown keys, junk and blank lines stay byte for byte
    ("colour = blue\n\njunk line\nforward = sip:a@b\n", "dnd", "yes",
     "colour = blue\n\njunk line\nforward = sip:a@b\ndnd = yes\n"),
    ("a = 1\r\ndnd = no\r\n", "dnd", "yes", "a = 1\r\ndnd = yes\n"),
    # commented-out settings are comments, not settings
    ("# dnd = yes\n", "dnd", "no", "# dnd = yes\ndnd = no\n"),
    ("x\n", "display_name", " Jan ", "x\ndisplay_name = Jan\n"),
    ("", "display_name", '"Q"', 'display_name = ""Q""\n'),
    ("", "ring_timeout", "007", "ring_timeout = 7\n"),
]


@pytest.mark.parametrize(("before", "key", "value", "after"), SET_CASES)
def test_set_value(before: str, key: str, value: str, after: str) -> None:
    result = set_value(before, key, value)
    assert result == after
    assert parse(result).get(key.lower()) == validate(key, value)


@pytest.mark.parametrize(("key", "value"), [("dnd", "maybe"), ("colour", "blue"),
                                            ("forward", "bob"), ("display_name", "a\nb")])
def test_set_value_refuses_bad_input_and_leaves_nothing_half_done(key: str, value: str) -> None:
    with pytest.raises(ConfigValueError):
        set_value("dnd = no\n", key, value)


# (text before, key, text after)
REMOVE_CASES: list[tuple[str, str, str]] = [
    ("", "dnd", ""),
    ("dnd = yes\n", "dnd", ""),
    ("# a\ndnd = yes\n# b\n", "dnd", "# a\n# b\n"),
    ("dnd = yes\nx = 1\nDND = no\n", "dnd", "x = 1\n"),
    ("dnd = maybe\n", "dnd", ""),
    ("colour = blue\ndnd = yes\n", "colour", "dnd = yes\n"),  # unknown keys can go too
    ("# dnd = yes\n", "dnd", "# dnd = yes\n"),
    ("x = 1", "dnd", "x = 1"),  # untouched, even the missing final newline
    ("x = 1\r\ndnd = 1\r\n", "dnd", "x = 1\r\n"),
]


@pytest.mark.parametrize(("before", "key", "after"), REMOVE_CASES)
def test_remove_key(before: str, key: str, after: str) -> None:
    assert remove_key(before, key) == after
    assert parse(after).get(key.lower()) is None


_OTHER_LINES = st.one_of(
    st.just(""),
    st.just("# comment"),
    st.just("colour = blue"),
    st.just("not a setting"),
    st.just("display_name = Jan"),
    st.just("ring_timeout = 20"),
    st.just("dnd = maybe"),
    st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\n"), max_size=30),
)


@settings(max_examples=150, deadline=None)
@given(lines=st.lists(_OTHER_LINES, max_size=8), value=st.sampled_from(["yes", "no", "on", "0"]))
def test_set_then_remove_keeps_every_other_line(lines: list[str], value: str) -> None:
    others = [line for line in lines if userconfig._key_of(line) != "dnd"]
    text = "".join(line + "\n" for line in others)
    new = set_value(text, "dnd", value)
    assert parse(new).get("dnd") == validate("dnd", value)
    assert [line for line in new.split("\n")[:-1] if userconfig._key_of(line) != "dnd"] == others
    assert remove_key(new, "dnd") == text
    for key, spec in parse(text).values.items():
        assert parse(new).get(key) == spec


# ------------------------------------------------------------------ UserConfig


def test_user_config_accessors() -> None:
    cfg = parse("dnd = on\nring_timeout = 25\n")
    assert cfg.flag("dnd") is True
    assert cfg.integer("ring_timeout") == 25
    assert cfg.get("forward") is None
    assert cfg.integer("forward") is None
    assert parse("dnd = off\n").flag("dnd") is False
    assert EMPTY.flag("dnd") is False


def test_user_config_set_and_remove_return_new_configs() -> None:
    cfg = parse("# keep\n")
    cfg2 = cfg.set("forward", "sip:bob@example.org")
    assert cfg2.get("forward") == "sip:bob@example.org"
    assert cfg2.text == "# keep\nforward = sip:bob@example.org\n"
    assert cfg.get("forward") is None  # the original is unchanged
    assert cfg2.remove("forward").text == "# keep\n"


def test_user_config_values_cannot_be_changed_in_place() -> None:
    cfg = parse("dnd = on\n")
    with pytest.raises(TypeError):
        cfg.values["dnd"] = "no"  # type: ignore[index]


def test_empty_config() -> None:
    assert EMPTY == UserConfig()
    assert dict(EMPTY.values) == {} and EMPTY.text == "" and EMPTY.problems == ()


# ------------------------------------------------------------------ UserConfigs


def test_user_configs_cache() -> None:
    cache = UserConfigs()
    assert cache.get("jan") is EMPTY
    assert "jan" not in cache and len(cache) == 0
    cfg = cache.load("jan", b"dnd = on\n")
    assert cache.get("jan") is cfg and cfg.flag("dnd")
    cache.load("bob", "forward = tel:+1555")
    assert list(cache) == ["bob", "jan"] and len(cache) == 2
    assert cache.load("bob", None) is EMPTY
    cache.put("jan", parse("dnd = no\n"))
    assert not cache.get("jan").flag("dnd")
    cache.forget("jan")
    cache.forget("nobody")
    assert "jan" not in cache and cache.get("jan") is EMPTY
