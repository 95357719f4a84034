"""srfs.files.usrloc: the contact line format and ~/.sr/usrloc on disk."""

from __future__ import annotations

import os
import random
import shutil
import stat
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from srfs.files import home
from srfs.files.home import HomeError
from srfs.files.usrloc import (
    HEADER,
    KNOWN_KEYS,
    MAX_LINE,
    Check,
    LineError,
    UsrlocFiles,
    Version,
    check_binding,
    check_file,
    choose_file,
    format_line,
    parse_file,
    parse_line,
    quote_value,
    render_file,
    tokenize,
)
from srfs.state.location import Binding
from srfs.user import User
from tests.unixusers import FakeUnix

NOW = 1_700_000_000.0

#: The first example of a contacts file in srfs(5), with ``ua`` quoted as a
#: hand-written line may have it.
EXAMPLE_LINE = (
    "sip:jan@192.0.2.10:5060;transport=udp aor=jan expires=3521 q=1.0 "
    'received=udp:203.0.113.5:40000 ua="Linksys/SPA3102-5.1.10" '
    "callid=217edcfa-3c466a22 cseq=65321"
)


def parse(line: str, now: float = NOW, user: str = "jan") -> Binding:
    return parse_line(line, user=user, default_aor=user, now=now)


def mk(contact: str = "sip:jan@192.0.2.10:5060", **kw: object) -> Binding:
    fields: dict[str, object] = {
        "aor": "jan",
        "user": "jan",
        "contact": contact,
        "expires": NOW + 3600,
        "registered": NOW - 100,
    }
    fields.update(kw)
    return Binding(**fields)  # type: ignore[arg-type]


# ----------------------------------------------------------- the srfs(5) line


def test_srfs5_example_line_parses_with_the_right_values() -> None:
    b = parse(EXAMPLE_LINE)
    assert b == Binding(
        aor="jan",
        user="jan",
        contact="sip:jan@192.0.2.10:5060;transport=udp",
        expires=NOW + 3521,
        q=1.0,
        callid="217edcfa-3c466a22",
        cseq=65321,
        received="udp:203.0.113.5:40000",
        ua="Linksys/SPA3102-5.1.10",
        registered=NOW,  # not in the line: "now"
    )
    assert not b.static
    assert b.remaining(NOW) == 3521


def test_srfs5_example_line_is_what_format_line_writes() -> None:
    b = parse(EXAMPLE_LINE)
    # ua has no space, so it need not be quoted; otherwise identical.
    assert format_line(b, NOW) == EXAMPLE_LINE.replace('"Linksys/SPA3102-5.1.10"',
                                                    "Linksys/SPA3102-5.1.10")
    assert parse(format_line(b, NOW)) == b


# ----------------------------------------------------------------- round trip

ROUND_TRIP = {
    "plain": mk(),
    "static": mk("sip:pbx@198.51.100.7:5060", aor="acme", user="jan", expires=None),
    "ua-quoting": mk(ua='Acme "Phone" 2.0 C:\\path\\ with\ttab \\"x\\"', callid="a b"),
    "ipv6": mk(
        "sip:jan@[2001:db8::10]:5062;transport=tcp",
        received="tcp:[2001:db8::99]:40000",
        q=0.5,
    ),
    "path": mk(path=("<sip:edge1.example.com;lr>", "<sip:edge2.example.com:5070;lr;ob>")),
    "outbound": mk(
        "sips:jan@192.0.2.10;ob",
        instance="<urn:uuid:00000000-0000-1000-8000-AABBCCDDEEFF>",
        reg_id=1,
        cseq=7,
        callid="x@y",
        q=0.125,
    ),
    "instance-with-space": mk(instance='"<urn:uuid:1 2>"', reg_id=2**31 - 1),
    "q0": mk(q=0.0, ua="Ü-phone ☎"),
    "alias-aor": mk(aor="+441727238471"),
}


@pytest.mark.parametrize("b", ROUND_TRIP.values(), ids=ROUND_TRIP.keys())
def test_round_trip_on_disk(b: Binding) -> None:
    line = format_line(b, NOW, on_disk=True)
    assert "\n" not in line
    # A day later the absolute times still hold.
    assert parse(line, now=NOW + 86_400) == b


@pytest.mark.parametrize("b", ROUND_TRIP.values(), ids=ROUND_TRIP.keys())
def test_round_trip_without_on_disk(b: Binding) -> None:
    line = format_line(b, NOW)
    assert "expires_at=" not in line and "registered=" not in line
    got = parse(line)
    # expires is relative to "now", registered is "now".
    assert got == replace(b, registered=NOW)
    assert got.remaining(NOW) == b.remaining(NOW)


def test_static_is_expires_never() -> None:
    b = mk(expires=None)
    line = format_line(b, NOW, on_disk=True)
    assert " expires=never" in line and "expires_at" not in line
    assert parse(line).static
    assert parse("sip:pbx@198.51.100.7").static  # no expires: static
    assert parse("sip:pbx@198.51.100.7 expires=never").static


def test_format_line_fields() -> None:
    line = format_line(mk(q=0.5, registered=NOW - 100), NOW + 100, on_disk=True)
    assert line.split() == [
        "sip:jan@192.0.2.10:5060", "aor=jan", "expires=3500", "q=0.5",
        f"expires_at={NOW + 3600:.0f}", f"registered={NOW - 100:.0f}",
    ]
    # remaining seconds round up and never go below zero
    assert " expires=1 " in format_line(mk(expires=NOW + 0.2), NOW)
    assert " expires=0 " in format_line(mk(expires=NOW - 5), NOW)
    assert " q=1.0" in format_line(mk(q=1.0), NOW)
    assert " q=0.0" in format_line(mk(q=0.0), NOW)
    assert " q=0.001" in format_line(mk(q=0.001), NOW)


def test_defaults_of_a_minimal_line() -> None:
    b = parse("sip:jan@192.0.2.10 expires=60", user="jan")
    assert (b.aor, b.user, b.q, b.callid, b.cseq, b.instance, b.reg_id, b.path) == (
        "jan", "jan", 1.0, "", 0, None, None, ()
    )
    assert (b.received, b.ua, b.expires, b.registered) == (None, None, NOW + 60, NOW)
    other = parse_line("sip:x@192.0.2.1 aor=1003", user="jan", default_aor="jan", now=NOW)
    assert (other.aor, other.user) == ("1003", "jan")


def test_expires_at_wins_over_expires() -> None:
    b = parse(f"sip:jan@192.0.2.10 expires=3600 expires_at={NOW + 42:.0f}")
    assert b.expires == NOW + 42
    b = parse(f"sip:jan@192.0.2.10 expires=never expires_at={NOW + 42:.0f}")
    assert b.expires == NOW + 42
    b = parse(f"sip:jan@192.0.2.10 expires_at={NOW - 42:.0f} registered=12")
    assert b.expires == NOW - 42 and b.registered == 12


def test_whitespace_and_quoting_in_lines() -> None:
    b = parse('  sip:jan@192.0.2.10\t\tua="a  b"   callid=""  ')
    assert b.ua == "a  b" and b.callid == ""
    b = parse('sip:jan@192.0.2.10 ua="say \\"hi\\" \\\\ bye"')
    assert b.ua == 'say "hi" \\ bye'
    b = parse('sip:jan@192.0.2.10 ua=Lin"ksys 3"102')  # quotes may start mid-token
    assert b.ua == "Linksys 3102"


# ----------------------------------------------------------------- bad lines

BAD_LINES = [
    ("http://example.com/jan", r"not a sip: or sips: contact URI"),
    ("jan@192.0.2.10", r"not a sip: or sips: contact URI"),
    ("sip:", r"not a sip: or sips: contact URI"),
    ("sip:jan@", r"not a sip: or sips: contact URI"),
    ("<sip:jan@192.0.2.10>", r"not a sip: or sips: contact URI"),
    ("aor=jan sip:jan@192.0.2.10", r"not a sip: or sips: contact URI"),
    ("sip:jan@192.0.2.10 expires=soon", r"bad expires 'soon'"),
    ("sip:jan@192.0.2.10 expires=-5", r"bad expires '-5'"),
    ("sip:jan@192.0.2.10 expires=1.5", r"bad expires '1.5'"),
    ("sip:jan@192.0.2.10 expires=", r"bad expires ''"),
    ("sip:jan@192.0.2.10 expires=99999999999", r"bad expires"),
    ("sip:jan@192.0.2.10 expires=\u00b2", r"bad expires"),
    ("sip:jan@192.0.2.10 expires=\u0661\u0662", r"bad expires"),
    ("sip:jan@192.0.2.10 expires_at=tomorrow", r"bad expires_at 'tomorrow'"),
    ("sip:jan@192.0.2.10 expires_at=nan", r"bad expires_at 'nan'"),
    ("sip:jan@192.0.2.10 expires_at=inf", r"bad expires_at 'inf'"),
    ("sip:jan@192.0.2.10 q=high", r"bad q 'high'"),
    ("sip:jan@192.0.2.10 q=", r"bad q ''"),
    ("sip:jan@192.0.2.10 q=nan", r"bad q 'nan'"),
    ("sip:jan@192.0.2.10 q=1.5", r"q must lie between 0 and 1"),
    ("sip:jan@192.0.2.10 q=-0.1", r"q must lie between 0 and 1"),
    ("sip:jan@192.0.2.10 q=1e400", r"bad q"),
    ("sip:jan@192.0.2.10 received=203.0.113.5:40000", r"bad received '203\.0\.113\.5:40000'"),
    ("sip:jan@192.0.2.10 received=udp:203.0.113.5", r"bad received"),
    ("sip:jan@192.0.2.10 received=udp:203.0.113.5:0", r"bad received"),
    ("sip:jan@192.0.2.10 received=udp:203.0.113.5:65536", r"bad received"),
    ("sip:jan@192.0.2.10 received=sctp:203.0.113.5:5060", r"bad received"),
    ("sip:jan@192.0.2.10 received=udp:2001:db8::1:5060", r"bad received"),
    ("sip:jan@192.0.2.10 received=udp:203.0.113.5:\u0661\u0662", r"bad received"),
    ("sip:jan@192.0.2.10 q=1 q=0.5", r"attribute 'q' given twice"),
    ("sip:jan@192.0.2.10 ua=a ua=a", r"attribute 'ua' given twice"),
    ("sip:jan@192.0.2.10 transport", r"attribute without '=': 'transport'"),
    ("sip:jan@192.0.2.10 expires 60", r"attribute without '=': 'expires'"),
    ('sip:jan@192.0.2.10 ua="unterminated', r"unterminated quoted value"),
    ('sip:jan@192.0.2.10 ua="ends in backslash\\"', r"unterminated quoted value"),
    ("sip:jan@192.0.2.10 ua=" + "x" * MAX_LINE, rf"line longer than {MAX_LINE}"),
    ("", r"empty line"),
    ("   \t ", r"empty line"),
    ('sip:jan@192.0.2.10 aor="a b"', r"bad aor 'a b'"),
    ("sip:jan@192.0.2.10 aor=", r"bad aor ''"),
    ("sip:jan@192.0.2.10 cseq=abc", r"bad cseq 'abc'"),
    ("sip:jan@192.0.2.10 cseq=-1", r"bad cseq"),
    ("sip:jan@192.0.2.10 reg_id=0", r"bad reg_id '0'"),
    ("sip:jan@192.0.2.10 reg_id=x", r"bad reg_id"),
    ("sip:jan@192.0.2.10 registered=yesterday", r"bad registered 'yesterday'"),
]


@pytest.mark.parametrize(("line", "message"), BAD_LINES)
def test_bad_lines_name_the_problem(line: str, message: str) -> None:
    with pytest.raises(LineError, match=message):
        parse(line)


@pytest.mark.parametrize(
    "uri",
    [
        "sip:jan@192.0.2.10:5060;transport=udp",
        "SIP:jan@Example.COM",
        "sips:jan@example.com:5061",
        "sip:example.com",
        "sip:[2001:db8::1]",
        "sip:jan@[2001:db8::1]:5060;transport=tcp;ob",
        "sip:+441727238471;phone-context=example.com@example.com;user=phone",
        "sip:jan:secret@example.com",
        "sip:j%61n@example.com",
    ],
)
def test_good_uris(uri: str) -> None:
    assert parse(uri).contact == uri


@pytest.mark.parametrize(
    "uri",
    [
        "sip:jan@host_name",
        "sip:jan@-bad-.example.com",
        "sip:jan@example.com?Subject=x",
        "sip:jan@example.com:\u0661",  # not an ASCII port
        "sip:jan@\u212a.example.com",  # KELVIN SIGN folds to "k" only without re.ASCII
        "\u017fip:jan@example.com",  # LATIN SMALL LONG S folds to "s" likewise
        "tel:+441727238471",
    ],
)
def test_bad_uris(uri: str) -> None:
    with pytest.raises(LineError, match="not a sip: or sips: contact URI"):
        parse(uri)


def test_tokenize() -> None:
    assert tokenize("") == []
    assert tokenize("a  b\tc") == ["a", "b", "c"]
    assert tokenize('k="" x') == ["k=", "x"]
    assert tokenize('"a b"c"d e"') == ["a bcd e"]
    assert tokenize('"\\a\\\\"') == ["a\\"]
    assert tokenize("back\\slash") == ["back\\slash"]  # only special inside quotes
    with pytest.raises(LineError, match="unterminated quoted value"):
        tokenize('"abc')


def test_quote_value() -> None:
    assert quote_value("plain") == "plain"
    assert quote_value("") == '""'
    assert quote_value("a b") == '"a b"'
    assert quote_value('a"b') == '"a\\"b"'
    assert quote_value("a\\b") == '"a\\\\b"'
    assert quote_value("a\tb") == '"a\tb"'


# ----------------------------------------------------------------- the file


def test_parse_file_skips_comments_and_blank_lines_and_reports_problems() -> None:
    text = "\n".join([
        "# sipd registrations",                                      # 1
        "",                                                          # 2
        f"sip:jan@192.0.2.1 expires=60 expires_at={NOW + 60:.0f}",   # 3
        "   # indented comment",                                     # 4
        "http://nope",                                               # 5
        "sip:jan@192.0.2.2 q=7",                                     # 6
        "   ",                                                       # 7
        "sip:pbx@198.51.100.7 aor=1003 expires=never",               # 8
        'sip:jan@192.0.2.3 ua="open',                                # 9
        f"sip:jan@192.0.2.4 expires=60 expires_at={NOW - 1:.0f}",    # 10: expired
        f"sip:jan@192.0.2.5 expires_at={NOW:.0f}",                   # 11: expires now
        "sip:jan@192.0.2.6 expires=0",                               # 12: expired
        "sip:jan@192.0.2.7 expires=5\r",                             # 13: CRLF
    ]) + "\n"
    bindings, problems = parse_file(text, user="jan", now=NOW)
    assert [b.contact for b in bindings] == [
        "sip:jan@192.0.2.1", "sip:pbx@198.51.100.7", "sip:jan@192.0.2.7"
    ]
    assert bindings[0].expires == NOW + 60
    assert bindings[1].static and bindings[1].aor == "1003"
    assert all(b.user == "jan" for b in bindings)
    assert len(problems) == 3
    assert problems[0].startswith("line 5: not a sip: or sips: contact URI")
    assert problems[1] == "line 6: q must lie between 0 and 1"
    assert problems[2] == "line 9: unterminated quoted value"


def test_parse_file_uses_the_user_as_default_aor() -> None:
    [b], problems = parse_file("sip:x@192.0.2.1\n", user="bob", now=NOW)
    assert problems == [] and (b.aor, b.user) == ("bob", "bob")


def test_parse_file_of_nothing() -> None:
    assert parse_file("", user="jan", now=NOW) == ([], [])
    assert parse_file("# only a comment\n\n", user="jan", now=NOW) == ([], [])


def test_render_file_round_trip() -> None:
    bindings = list(ROUND_TRIP.values())
    text = render_file(bindings, NOW)
    assert text.startswith("# ") and text.endswith("\n")
    assert text.count("\n") == len(bindings) + 1
    assert parse_file(text, user="jan", now=NOW + 60) == (bindings, [])
    # Expired ones are gone when read back later; static ones stay.
    later, _ = parse_file(text, user="jan", now=NOW + 7200)
    assert later == [b for b in bindings if b.static]


def test_unicode_line_separators_in_values_do_not_split_lines() -> None:
    # U+0085, U+2028, U+2029 and the ASCII separators are valid in a User-Agent
    # once decoded; str.splitlines() would cut the line there.
    odd = mk(ua="Phone\u2028v2\x85build\u2029x\x1c\x1d\x1e\x0b\x0c", callid="c\u2028d")
    text = render_file([odd, mk("sip:jan@192.0.2.99")], NOW)
    assert parse_file(text, user="jan", now=NOW) == ([odd, mk("sip:jan@192.0.2.99")], [])


# ----------------------------------------------------------------- hypothesis


NO_LINE_BREAK = st.text().map(lambda t: t.replace("\n", "").replace("\r", ""))


@given(NO_LINE_BREAK)
@example("")
@example(' "\\')
@example("a\\")
@example("\u2028\x1f")
def test_quote_value_tokenize_round_trip(value: str) -> None:
    assert tokenize(quote_value(value)) == [value]
    assert tokenize(f"k={quote_value(value)}") == [f"k={value}"]


@given(st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp"))))
def test_quote_value_of_printable_text(value: str) -> None:
    quoted = quote_value(value)
    assert tokenize(quoted) == [value]
    assert " " not in quoted or quoted.startswith('"')


@given(st.text(st.sampled_from(' \t\\a=\u00e9\n\x0b\x85'), max_size=40))
@example("a\x0bb \t c")
@settings(max_examples=300)
def test_a_line_without_quotes_splits_as_a_quoted_one_does(line: str) -> None:
    # A quoted empty token at the end sends the line through the character
    # loop; the line alone takes the shortcut.
    assert tokenize(line) == tokenize(line + ' ""')[:-1]


@given(st.lists(NO_LINE_BREAK, max_size=5))
def test_tokenize_of_many_quoted_values(values: list[str]) -> None:
    line = " \t ".join(quote_value(v) for v in values)
    assert tokenize(line) == values


_keys = st.sampled_from(sorted(KNOWN_KEYS) + ["x", "", "Q", "expires "])
_uris = st.sampled_from(
    ["sip:jan@192.0.2.10", "sips:[2001:db8::1]:5061;transport=tcp", "sip:a@b", "sip:", "x"]
)
_values = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["never", "0", "1", "0.5", "1e3", "-1", "nan", "2147483648", "udp:a:1"]),
    st.integers().map(str),
    st.floats().map(str),
)
_attrs = st.lists(st.tuples(_keys, _values).map(lambda kv: f"{kv[0]}={quote_value(kv[1])}"),
                  max_size=6)


@given(st.text())
@example("sip:a@b expires=\u00b2")
@example("sip:a@b cseq=" + "9" * 4090)
@example('sip:a@b ua="\\')
@settings(max_examples=300)
def test_parse_line_raises_only_line_error_on_any_text(text: str) -> None:
    try:
        b = parse(text)
    except LineError as e:
        assert str(e)
    else:
        assert isinstance(b, Binding)


@given(_uris, _attrs)
@settings(max_examples=300)
def test_parse_line_raises_only_line_error_on_structured_lines(uri: str, attrs: list[str]) -> None:
    try:
        b = parse(" ".join([uri, *attrs]))
    except LineError as e:
        assert str(e)
    else:
        assert isinstance(b, Binding)
        assert 0 <= b.q <= 1
        format_line(b, NOW, on_disk=True)  # and what was accepted can be written


_no_newline = st.text(st.characters(blacklist_characters="\r\n"))
binding_strategy = st.builds(
    Binding,
    aor=st.from_regex(r"[A-Za-z0-9\-_.!~*'()&=+$,;?/%]{1,20}", fullmatch=True),
    user=st.just("jan"),
    contact=st.sampled_from([b.contact for b in ROUND_TRIP.values()]),
    expires=st.one_of(st.none(), st.integers(0, 2 * 10**9).map(float)),
    q=st.integers(0, 1000).map(lambda n: n / 1000),
    callid=_no_newline,
    cseq=st.integers(0, 2**31),
    instance=st.one_of(st.none(), _no_newline),
    reg_id=st.one_of(st.none(), st.integers(1, 2**31)),
    path=st.lists(st.sampled_from(["<sip:p1;lr>", "<sip:[2001:db8::1]:5070;lr>", "x y"]),
                  max_size=3).map(tuple),
    received=st.one_of(st.none(), st.sampled_from(
        ["udp:203.0.113.5:40000", "tcp:[2001:db8::99]:5060", "tls:host.example:5061"])),
    ua=st.one_of(st.none(), _no_newline.filter(bool)),
    registered=st.integers(1, 2 * 10**9).map(float),
)


@given(st.lists(binding_strategy, max_size=4))
@settings(max_examples=150)
def test_render_and_parse_file_round_trip(bindings: list[Binding]) -> None:
    for b in bindings:
        line = format_line(b, NOW, on_disk=True)
        assert parse_line(line, user="jan", default_aor="jan", now=NOW + 1) == b
    keep = [b for b in bindings if b.expires is None or b.expires > NOW]
    assert parse_file(render_file(bindings, NOW), user="jan", now=NOW) == (keep, [])


# ---------------------------------------------------- UsrlocFiles in a home


def _clear(path: Path) -> None:
    if path.is_symlink() or path.exists():
        path.unlink()


@pytest.fixture
def account(unix: FakeUnix) -> Iterator[User]:
    """alice (session-wide fake user); her ~/.sr and ~/.sr/usrloc are restored afterwards."""
    fake = unix["alice"]
    sr = fake.home / ".sr"
    had_sr = os.path.lexists(sr)
    usrloc = sr / "usrloc"
    backup = unix.root / f"usrloc-backup-{os.getpid()}"
    had_usrloc = os.path.lexists(usrloc)
    if had_usrloc:
        os.rename(usrloc, backup)
    try:
        yield fake.user
    finally:
        _clear(usrloc)
        if os.path.isdir(sr) and not os.path.islink(sr):
            for name in os.listdir(sr):
                if name.startswith(".usrloc."):
                    os.unlink(sr / name)
        if had_usrloc:
            os.rename(backup, usrloc)
        if not had_sr:
            shutil.rmtree(sr, ignore_errors=True)


def sample_bindings(user: str) -> list[Binding]:
    return [
        mk(f"sip:{user}@192.0.2.10:5060", aor=user, user=user, ua="Phone 1 \"x\""),
        mk(f"sip:{user}@[2001:db8::5]", aor=user, user=user, q=0.5,
           received="udp:[2001:db8::5]:5060"),
        mk("sip:pbx@198.51.100.7", aor="1003", user=user, expires=None),
    ]


def save(files: UsrlocFiles, account: User, version: int, text: str) -> None:
    assert files.save_many([(account, version, text)]) == {account.name: None}


def test_save_writes_usrloc_owned_by_the_user_mode_0600(account: User) -> None:
    files = UsrlocFiles()
    text = render_file(sample_bindings(account.name), NOW)
    save(files, account, 1, text)
    sr = Path(account.home) / ".sr"
    st_sr = os.lstat(sr)
    assert stat.S_ISDIR(st_sr.st_mode) and st_sr.st_uid == account.uid
    assert stat.S_IMODE(st_sr.st_mode) == 0o700
    st_file = os.lstat(sr / "usrloc")
    assert stat.S_ISREG(st_file.st_mode)
    assert (st_file.st_uid, st_file.st_gid) == (account.uid, account.gid)
    assert stat.S_IMODE(st_file.st_mode) == 0o600
    assert (sr / "usrloc").read_text() == text
    assert not [n for n in os.listdir(sr) if n.startswith(".usrloc.")]  # no temp files


def test_load_returns_the_bindings(account: User) -> None:
    bindings = sample_bindings(account.name)
    expired = mk("sip:old@192.0.2.66", aor=account.name, user=account.name, expires=NOW + 5)
    save(UsrlocFiles(), account, 1, render_file([*bindings, expired], NOW))
    assert UsrlocFiles.load(account, NOW) == ([*bindings, expired], [])
    assert UsrlocFiles.load(account, NOW + 10) == (bindings, [])
    assert UsrlocFiles.load(account, NOW + 10**6) == ([bindings[2]], [])


def test_load_of_a_missing_file(account: User) -> None:
    assert UsrlocFiles.load(account, NOW) == ([], [])  # no usrloc (and maybe no ~/.sr)
    home.open_sr(account, create=True).close()
    assert UsrlocFiles.load(account, NOW) == ([], [])


def test_load_reports_bad_lines_by_number(account: User) -> None:
    good = format_line(sample_bindings(account.name)[0], NOW, on_disk=True)
    home.write_file(account, "usrloc", f"# c\n{good}\nsip:x q=9\n".encode(), fsync=False)
    bindings, problems = UsrlocFiles.load(account, NOW)
    assert bindings == sample_bindings(account.name)[:1]
    assert problems == ["line 3: q must lie between 0 and 1"]


def test_an_older_version_never_overwrites_a_newer_one(account: User) -> None:
    path = Path(account.home) / ".sr" / "usrloc"
    files = UsrlocFiles()
    v1 = render_file(sample_bindings(account.name)[:1], NOW)
    v2 = render_file(sample_bindings(account.name), NOW)
    v3 = render_file([], NOW)
    save(files, account, 2, v2)
    save(files, account, 1, v1)
    assert path.read_text() == v2
    save(files, account, 2, v1)  # the same version again: already done
    assert path.read_text() == v2
    assert UsrlocFiles.load(account, NOW) == (sample_bindings(account.name), [])
    save(files, account, 3, v3)
    assert path.read_text() == v3
    assert UsrlocFiles.load(account, NOW) == ([], [])


def test_versions_are_per_user(unix: FakeUnix, account: User) -> None:
    files = UsrlocFiles()
    save(files, account, 10, render_file([], NOW))
    bob = unix["bob"]
    bob_sr = bob.home / ".sr"
    had_sr = os.path.lexists(bob_sr)
    had_usrloc = os.path.lexists(bob_sr / "usrloc")
    if had_usrloc:
        pytest.skip("bob already has a usrloc from another test")
    try:
        text = render_file(sample_bindings("bob"), NOW)
        save(files, bob.user, 1, text)  # bob's first write is not "older"
        assert (bob_sr / "usrloc").read_text() == text
    finally:
        _clear(bob_sr / "usrloc")
        if not had_sr:
            shutil.rmtree(bob_sr, ignore_errors=True)


def test_concurrent_saves_leave_the_newest_version(account: User) -> None:
    files = UsrlocFiles()
    texts = {v: render_file([mk(f"sip:v{v}@192.0.2.1", aor=account.name,
                                user=account.name)], NOW) for v in range(1, 17)}
    order = list(texts)
    random.Random(7).shuffle(order)
    start = threading.Barrier(len(order))
    errors: list[BaseException] = []

    def save_one(v: int) -> None:
        try:
            start.wait()
            save(files, account, v, texts[v])
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=save_one, args=(v,)) for v in order]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert errors == []
    assert (Path(account.home) / ".sr" / "usrloc").read_text() == texts[16]


def test_a_planted_symlink_is_replaced_never_followed(unix: FakeUnix, account: User) -> None:
    sr = Path(account.home) / ".sr"
    home.open_sr(account, create=True).close()
    # A file alice could write herself: only the no-follow rule protects it.
    target = Path(account.home) / "usrloc-target"
    target.write_bytes(b"precious\n")
    os.chown(target, account.uid, account.gid)
    target.chmod(0o600)
    before = os.stat(target)
    link = sr / "usrloc"
    os.symlink(target, link)
    os.lchown(link, account.uid, account.gid)
    try:
        # Reading does not follow it either.
        with pytest.raises(HomeError, match=r"^~alice/\.sr/usrloc is a symlink$"):
            UsrlocFiles.load(account, NOW)
        text = render_file(sample_bindings(account.name), NOW)
        save(UsrlocFiles(), account, 1, text)
        st_link = os.lstat(link)
        assert stat.S_ISREG(st_link.st_mode)  # the link itself was replaced
        assert st_link.st_uid == account.uid and stat.S_IMODE(st_link.st_mode) == 0o600
        assert link.read_text() == text
        after = os.stat(target)
        assert target.read_bytes() == b"precious\n"
        assert (after.st_ino, after.st_size, after.st_mtime_ns) == (
            before.st_ino, before.st_size, before.st_mtime_ns
        )
        assert UsrlocFiles.load(account, NOW) == (sample_bindings(account.name), [])
    finally:
        target.unlink()


def test_a_dangling_symlink_creates_nothing_at_its_target(unix: FakeUnix, account: User) -> None:
    sr = Path(account.home) / ".sr"
    home.open_sr(account, create=True).close()
    target = Path(account.home) / "usrloc-created"
    os.symlink(target, sr / "usrloc")
    save(UsrlocFiles(), account, 1, render_file([], NOW))
    assert not os.path.lexists(target)
    assert stat.S_ISREG(os.lstat(sr / "usrloc").st_mode)


def test_line_breaks_in_values_never_split_the_line() -> None:
    b = Binding(aor="jan", user="jan", contact="sip:jan@192.0.2.1", expires=None,
                ua="evil\r\nsip:attacker@203.0.113.1 aor=jan", callid="a\nb")
    line = format_line(b, NOW, on_disk=True)
    assert "\n" not in line and "\r" not in line
    back = parse_line(line, user="jan", default_aor="jan", now=NOW)
    assert back.ua == "evil  sip:attacker@203.0.113.1 aor=jan" and back.callid == "a b"
    assert parse_file(render_file([b], NOW), user="jan", now=NOW)[0] == [back]


def test_unknown_attribute_refused() -> None:
    with pytest.raises(LineError, match="unknown attribute 'expire'"):
        parse_line("sip:jan@192.0.2.1 expire=0", user="jan", default_aor="jan", now=NOW)


# --- check_binding's length rule ----------------------------------------------------


def _line_bytes(b: Binding) -> int:
    return len(format_line(b, b.registered, on_disk=True).encode("utf-8", "surrogateescape"))


def test_a_binding_whose_line_is_one_byte_too_long_is_refused() -> None:
    base = Binding("jan", "jan", "sip:jan@192.0.2.10", NOW + 60, ua="", registered=NOW)
    # ua= plus a bare value: each character of it is one byte of the line.
    room = MAX_LINE - _line_bytes(replace(base, ua="x")) + 1
    fits = replace(base, ua="x" * room)
    assert _line_bytes(fits) == MAX_LINE and check_binding(fits) is None
    over = replace(base, ua="x" * (room + 1))
    assert check_binding(over) == f"contact line longer than {MAX_LINE} bytes"
    # Four bytes a character, and quoted: the rule counts the line's bytes.
    wide = replace(base, ua='"\U0001f600' * (MAX_LINE // 5))
    assert _line_bytes(wide) > MAX_LINE
    assert check_binding(wide) == f"contact line longer than {MAX_LINE} bytes"


_WIDE = st.text(st.sampled_from('a"\\ \U0001f600\u00e9'), max_size=600)
_BIG = st.one_of(st.integers(0, 10**16), st.just(10**15 - 1))


@given(ua=_WIDE, callid=_WIDE, instance=_WIDE, path=st.lists(_WIDE, max_size=3),
       cseq=_BIG, reg_id=_BIG, registered=st.floats(0, 1e16), ttl=st.floats(0, 1e16),
       q=st.one_of(st.floats(0, 1), st.just(1e300)))
@example(ua='"\U0001f600' * 670, callid="", instance="", path=[], cseq=0, reg_id=0,
         registered=NOW, ttl=60.0, q=0.5)  # 1,340 characters, 4,020 bytes of them
@settings(max_examples=300)
def test_no_line_over_the_limit_passes_the_length_rule(
        ua: str, callid: str, instance: str, path: list[str], cseq: int, reg_id: int,
        registered: float, ttl: float, q: float) -> None:
    b = Binding("jan", "jan", "sip:jan@192.0.2.10", registered + ttl, q=q, callid=callid,
                cseq=cseq, instance=instance, reg_id=reg_id, path=tuple(path),
                received="udp:192.0.2.10:5060", ua=ua, registered=registered)
    refused = check_binding(b)
    assert (refused == f"contact line longer than {MAX_LINE} bytes") == (_line_bytes(b) > MAX_LINE)



# --- the checksummed first line, and the spare read in place of a damaged file -----

RUN, OTHER_RUN = "0123456789abcdef", "fedcba9876543210"


def written(seq: int, run: str = RUN, bindings: list[Binding] | None = None) -> bytes:
    return render_file(bindings if bindings is not None else [mk(f"sip:jan@192.0.2.{seq}")],
                       NOW, Version(run, seq)).encode()


def test_a_versioned_file_names_its_write_and_checks_whole() -> None:
    data = written(7)
    first = data.decode().split("\n", 1)[0]
    assert first.startswith(HEADER) and first.endswith(f"; write {RUN}.7 crc32 {first[-8:]}")
    assert check_file(data) == (Check.WHOLE, Version(RUN, 7))
    # Its first line is a comment: the lines read as before.
    assert parse_file(data.decode(), user="jan", now=NOW) == ([mk("sip:jan@192.0.2.7")], [])
    assert check_file(render_file([mk()], NOW).encode()) == (Check.PLAIN, None)


@pytest.mark.parametrize("damage", [
    lambda d: d.replace(b"192.0.2.7", b"192.0.2.8"),      # a line changed (an edit)
    lambda d: d[:-10],                                     # cut short
    lambda d: d + b"sip:more@192.0.2.9\n",                 # a line added
    lambda d: d[:40] + b"\0" * (len(d) - 40),              # blocks never written
    lambda d: d.split(b"\n", 1)[0],                        # the first line alone
    lambda d: d.replace(b" crc32 ", b" crc32 0"),           # the line itself mangled
])
def test_any_change_below_the_first_line_checks_damaged(damage: Any) -> None:
    assert check_file(damage(written(7)))[0] is Check.DAMAGED


@pytest.mark.parametrize("data", [
    b"", b"sip:jan@192.0.2.1 expires=60\n", b"# my phones\nsip:jan@192.0.2.1\n",
    (HEADER + "\nsip:jan@192.0.2.1\n").encode(),
])
def test_a_file_without_a_checksum_is_plain(data: bytes) -> None:
    assert check_file(data) == (Check.PLAIN, None)


def test_choose_file_takes_the_spare_only_where_the_file_cannot_be_the_last_write() -> None:
    last, before, first = written(3), written(2), written(1)
    assert choose_file(last, before) == (last, None)
    assert choose_file(last, None) == (last, None)
    # Blocks not all written: the spare holds the write before.
    torn = last[:60] + b"\0" * 20
    chosen, why = choose_file(torn, before)
    assert chosen == before and why is not None and "spare" in why
    # None written: the file still holds the spare's old text, an earlier write.
    chosen, why = choose_file(first, before)
    assert chosen == before and why is not None and "older than its spare" in why
    # Of another run, the numbers say nothing: the file as it is.
    assert choose_file(written(1, OTHER_RUN), before) == (written(1, OTHER_RUN), None)
    # Without a checksum (an edit that took the first line out), as it is.
    edited = b"sip:jan@192.0.2.200 expires=60\n"
    assert choose_file(edited, before) == (edited, None)
    # Damaged, with no whole spare to fall back on: as it is, and why.
    chosen, why = choose_file(torn, torn)
    assert chosen == torn and why is not None and "read as it is" in why
    assert choose_file(torn, None)[0] == torn


def put(account: User, name: str, data: bytes) -> None:
    path = Path(account.home) / ".sr" / name
    path.write_bytes(data)
    os.chown(path, account.uid, account.gid)
    path.chmod(0o600)


def test_load_reads_the_spare_in_place_of_a_file_a_crash_cut_short(
        account: User, caplog: pytest.LogCaptureFixture) -> None:
    home.open_sr(account, create=True).close()
    before = sample_bindings(account.name)
    put(account, "usrloc", written(5, bindings=[mk("sip:jan@192.0.2.5")])[:70] + b"\0" * 30)
    put(account, home.spare_name("usrloc"), written(4, bindings=before))
    with caplog.at_level("WARNING", logger="srfs.usrloc"):
        assert UsrlocFiles.load(account, NOW) == (before, [])
    assert f"~{account.name}/.sr/usrloc" in caplog.text and "spare" in caplog.text
    # A spare that is not the user's own is not read: the file as it is.
    os.chown(Path(account.home) / ".sr" / home.spare_name("usrloc"), 0, 0)
    bindings, _ = UsrlocFiles.load(account, NOW)
    assert bindings != before


def test_load_takes_a_whole_file_over_an_older_spare(account: User) -> None:
    home.open_sr(account, create=True).close()
    now = sample_bindings(account.name)
    put(account, "usrloc", written(5, bindings=now))
    put(account, home.spare_name("usrloc"), written(4, bindings=now[:1]))
    assert UsrlocFiles.load(account, NOW) == (now, [])
