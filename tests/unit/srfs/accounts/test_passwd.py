"""The ~/.sr/passwd format: htdigest compatibility, the SHA-256 field, edits."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from srfs.accounts import passwd
from srfs.accounts.digestcalc import base_algorithm, ha1, hexdigest
from srfs.accounts.passwd import Entry, parse


def htdigest_line(user: str, realm: str, password: str) -> str:
    """What ``htdigest`` writes: user:realm:md5(user:realm:password)."""
    digest = hashlib.md5(f"{user}:{realm}:{password}".encode()).hexdigest()
    return f"{user}:{realm}:{digest}"


def apache_ha1(text: str, user: str, realm: str) -> str | None:
    """How Apache's mod_authn_file finds the hash: third field up to the next ':'."""
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        fields = line.split(":")
        if len(fields) >= 3 and fields[0] == user and fields[1] == realm:
            return fields[2]
    return None


def htdigest_change(text: str, user: str, realm: str, password: str) -> str:
    """What ``htdigest`` does to an existing file: first matching line replaced."""
    out, done = [], False
    for line in text.splitlines():
        fields = line.split(":")
        if not done and not line.startswith("#") and fields[:2] == [user, realm]:
            out.append(htdigest_line(user, realm, password))
            done = True
        else:
            out.append(line)
    return "\n".join(out) + "\n"


# --- known answers -----------------------------------------------------------

# RFC 7616 §3.9.1: the HA1 values are not printed there, so check them
# through the full responses the RFC gives for qop=auth.
RFC7616 = {
    "MD5": "8ca523f5e9506fed4657c9700eebdbec",
    "SHA-256": "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1",
}


@pytest.mark.parametrize("algorithm", ["MD5", "SHA-256"])
def test_rfc7616_vectors_through_the_file(algorithm: str) -> None:
    user, realm, password = "Mufasa", "http-auth@example.org", "Circle of Life"
    stored = parse(parse("").set(user, realm, password)).lookup(user, realm, algorithm)
    assert stored == ha1(user, realm, password, algorithm)
    ha2 = hexdigest(algorithm, b"GET:/dir/index.html")
    response = hexdigest(
        algorithm,
        f"{stored}:7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v:00000001:"
        f"f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ:auth:{ha2}".encode(),
    )
    assert response == RFC7616[algorithm]


def test_rfc2617_ha1() -> None:
    assert ha1("Mufasa", "testrealm@host.com", "Circle Of Life") == (
        "939e7578ed9e3c518a452acee763bce9"
    )


def test_sha256_ha1_is_sha256_of_user_realm_password() -> None:
    assert ha1("jan", "example.org", "pässword", "SHA-256") == (
        hashlib.sha256("jan:example.org:pässword".encode()).hexdigest()
    )


def test_algorithm_names() -> None:
    assert base_algorithm("md5") == "MD5"
    assert base_algorithm("SHA-256-sess") == "SHA-256"
    assert base_algorithm("MD5-sess") == "MD5"
    for bad in ("SHA-512-256", "SHA1", ""):
        with pytest.raises(ValueError):
            base_algorithm(bad)


# --- htdigest compatibility ----------------------------------------------------


def test_parses_htdigest_lines() -> None:
    text = "# made by htdigest\n" + htdigest_line("jan", "example.org", "secret") + "\n"
    pf = parse(text)
    assert pf.problems == ()
    assert pf.lookup("jan", "example.org", "MD5") == ha1("jan", "example.org", "secret")
    assert pf.lookup("jan", "example.org", "SHA-256") is None
    assert pf.lookup("jan", "other.org") is None
    assert pf.lookup("Jan", "example.org") is None  # exact match, like Apache


def test_written_lines_still_work_for_htdigest_readers() -> None:
    text = parse("").set("jan", "example.org", "secret")
    assert apache_ha1(text, "jan", "example.org") == ha1("jan", "example.org", "secret")
    md5, sha = ha1("jan", "example.org", "secret"), ha1("jan", "example.org", "secret", "SHA-256")
    assert text == f"jan:example.org:{md5}:sha256={sha}\n"


def test_htdigest_password_change_drops_the_old_sha256_value() -> None:
    # The reason the SHA-256 HA1 shares the MD5 line: htdigest rewrites that
    # line, so no credential of the old password can survive it.
    text = parse("").set("jan", "example.org", "old")
    text = htdigest_change(text, "jan", "example.org", "new")
    pf = parse(text)
    assert pf.lookup("jan", "example.org", "MD5") == ha1("jan", "example.org", "new")
    assert pf.lookup("jan", "example.org", "SHA-256") is None


# --- parsing -------------------------------------------------------------------

MD5 = "0" * 32
SHA = "a" * 64


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("jan:example.org", "expected user:realm:HA1"),
        ("jan", "expected user:realm:HA1"),
        (f":example.org:{MD5}", "empty user name"),
        (f"jan::{MD5}", "empty realm"),
        ("jan:example.org:xyz", "not 32 hex digits"),
        (f"jan:example.org:{MD5}1", "not 32 hex digits"),
        (f"jan:example.org:{MD5}:sha256=abc", "not 64 hex digits"),
        (f"jan:example.org:{MD5}:{SHA}", "expected key=value"),
        ("jan:example.org:", "no HA1 at all"),
        (f" jan:example.org:{MD5}", "surrounding spaces"),
    ],
)
def test_bad_lines_are_skipped_with_a_reason(line: str, reason: str) -> None:
    pf = parse(f"{line}\nok:example.org:{MD5}\n")
    assert len(pf.problems) == 1
    assert pf.problems[0].lineno == 1
    assert reason in pf.problems[0].reason
    assert [e.user for e in pf.entries] == ["ok"]


def test_comments_blank_lines_crlf_and_case() -> None:
    pf = parse(f"# comment\n\n   \n  # indented\r\njan:example.org:{MD5.upper()}\r\n")
    assert pf.problems == ()
    assert pf.entries == (Entry("jan", "example.org", MD5, None),)


def test_sha256_only_entry() -> None:
    pf = parse(f"jan:example.org::sha256={SHA.upper()}\n")
    assert pf.lookup("jan", "example.org", "MD5") is None
    assert pf.lookup("jan", "example.org", "SHA-256") == SHA
    assert pf.lookup("jan", "example.org", "sha-256-sess") == SHA
    with pytest.raises(ValueError):
        pf.lookup("jan", "example.org", "SHA-512-256")


def test_unknown_fields_are_ignored() -> None:
    pf = parse(f"jan:example.org:{MD5}:sha512-256=abcd:sha256={SHA}\n")
    assert pf.problems == ()
    assert pf.lookup("jan", "example.org", "SHA-256") == SHA


def test_first_entry_wins_and_duplicates_are_reported() -> None:
    pf = parse(f"jan:example.org:{MD5}\njan:example.org:{'1' * 32}\njan:other:{'2' * 32}\n")
    assert pf.lookup("jan", "example.org") == MD5
    assert pf.lookup("jan", "other") == "2" * 32
    assert [(p.lineno, "line 1 is used" in p.reason) for p in pf.problems] == [(2, True)]


def test_invalid_utf8_line_is_reported_and_kept() -> None:
    data = b"\xffbad:example.org:" + MD5.encode() + b"\n"
    pf = parse(data)
    assert [p.reason for p in pf.problems] == ["not valid UTF-8"]
    text = pf.set("jan", "example.org", "pw")
    assert passwd.encode(text).startswith(data)


def test_form_feed_does_not_split_lines() -> None:
    pf = parse(f"# a\x0cb\njan:example.org:{MD5}\n")
    assert pf.text() == f"# a\x0cb\njan:example.org:{MD5}\n"
    assert pf.lookup("jan", "example.org") == MD5


# --- editing -------------------------------------------------------------------


def test_set_replaces_in_place_and_keeps_everything_else() -> None:
    original = (
        "# SIP passwords\n"
        f"bob:example.org:{MD5}\n"
        f"jan:example.org:{'1' * 32}\n"
        "this line is broken\n"
        f"jan:other.org:{'2' * 32}\n"
        f"jan:example.org:{'3' * 32}\n"
        "# end\n"
    )
    text = parse(original).set("jan", "example.org", "new")
    new = Entry.from_password("jan", "example.org", "new").render()
    assert text == (
        "# SIP passwords\n"
        f"bob:example.org:{MD5}\n"
        f"{new}\n"
        "this line is broken\n"
        f"jan:other.org:{'2' * 32}\n"
        "# end\n"
    )


def test_set_appends_and_adds_the_final_newline() -> None:
    text = parse(f"bob:example.org:{MD5}").set("jan", "example.org", "pw")
    assert text.startswith(f"bob:example.org:{MD5}\njan:example.org:")
    assert text.endswith("\n") and text.count("\n") == 2


def test_delete() -> None:
    original = f"# c\njan:a:{MD5}\nbob:a:{MD5}\njan:b:{MD5}\njan:a:{'1' * 32}\n"
    assert parse(original).delete("jan", "a") == f"# c\nbob:a:{MD5}\njan:b:{MD5}\n"
    assert parse(original).delete("jan") == f"# c\nbob:a:{MD5}\n"
    assert parse(original).delete("nobody", "a") == original


@pytest.mark.parametrize(
    ("user", "realm"),
    [
        ("ja:n", "example.org"),
        ("jan", "exa:mple"),
        ("", "r"),
        ("jan", ""),
        ("#jan", "r"),
        ("j\nan", "r"),
    ],
)
def test_set_refuses_what_cannot_be_stored(user: str, realm: str) -> None:
    with pytest.raises(ValueError):
        parse("").set(user, realm, "pw")


names = st.text(
    alphabet=st.characters(blacklist_characters=":#", blacklist_categories=("C", "Z")),
    min_size=1,
    max_size=20,
)


@settings(database=None)  # no .hypothesis directory left behind
@given(user=names, realm=names, password=st.text(max_size=40), other=st.text(max_size=40))
def test_set_then_lookup_round_trip(user: str, realm: str, password: str, other: str) -> None:
    text = parse(f"# x\nbob:{realm}:{MD5}\n").set(user, realm, other)
    text = parse(text).set(user, realm, password)
    pf = parse(text)
    assert pf.problems == ()
    assert pf.lookup(user, realm, "MD5") == ha1(user, realm, password, "MD5")
    assert pf.lookup(user, realm, "SHA-256") == ha1(user, realm, password, "SHA-256")
    assert parse(pf.delete(user, realm)).lookup(user, realm) is None
