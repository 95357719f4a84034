"""baresip and linphone register and call each other through one sipd on its defaults.

sipd runs on its built-in defaults: the harness gives it only its listen
addresses, the realm, the fake users and no mount. Over UDP, then over TCP,
with no restart in between:

1. baresip as alice calls baresip as bob; bob answers, alice hangs up, bob
   quits (which unregisters).
2. Over UDP, between the calls: a guesser at the phones' own address,
   127.0.0.1, sends REGISTERs for carol with a wrong password: five 401s,
   then 403, the (user, address) block. The phones at that address go on
   registering and calling afterwards.
3. linphone as bob registers; alice's baresip calls it, linphone answers,
   alice hangs up; linphone calls alice, alice answers, linphone hangs up;
   linphone unregisters and quits, and alice's baresip quits.

What a user sees is checked: the registrations in ``~/.sr/usrloc``, the
call established on both sides (baresip's output, linphone-daemon's call
events and ``call-status``), the BYE reaching the other phone, and the
unregistrations.

Which digest algorithm linphone answers with is read from its own log.
Debian's linphone-daemon says ``User-Agent: Unknown`` (liblinphone leaves
the name to the application), which sipd does not know: it is offered MD5
alone, the UDP round's case. The Linphone applications name themselves;
the TCP round's linphone takes linphonec's name, which sipd's built-in
``sha256_user_agents`` knows: offered SHA-256 then MD5, it answers with
SHA-256, for its REGISTER and for its INVITE.

The two tests after the first hold two rules the field taught: a
guesser at a phone's own address (behind the same NAT) never locks that
phone's user out, and a second phone of a user whose first chose SHA-256
is still offered MD5 after it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.test_baresip import (
    Baresip,
    Binding,
    baresip_install,
    bindings,
    bindings_at,
    quit_and_unregister,
    running_baresip,
    wait_registered,
)
from tests.linphone import (
    Linphone,
    contact_port,
    digest_algorithms,
    linphone_daemon,
    messages,
    offered,
    running_linphone,
    sent_messages,
)
from tests.phone import Phone
from tests.sipclient import Daemon, running_sipd, status_of, wait_for
from tests.unixusers import FakeUnix, give_passwords

REALM = "test.invalid"
#: What linphonec 5.1.65 (Debian 12) sends; the Linphone applications all
#: name themselves "Linphone..." likewise.
LINPHONEC_AGENT = "Linphonec/5.1.65"
#: linphone-daemon's own User-Agent.
DAEMON_AGENT = "Unknown"
#: Wrong-password REGISTERs from one address: the fifth failure for one
#: user name starts the (user, address) block, so the sixth is refused.
GUESSES = 6
#: baresip modules for calls: /dial, /accept, /hangup.
CALL_MODULES = ("menu.so",)
BYE_ANSWERED = r"SIP/2\.0 200 OK\s*\n(?:[^\n]+\n)*?CSeq: \d+ BYE"


@pytest.fixture
def passwords(unix: FakeUnix) -> Iterator[dict[str, str]]:
    """Fresh passwords for alice and bob, and no registrations of other tests."""
    baresip_install()
    linphone_daemon()
    for name in ("alice", "bob"):
        (unix[name].home / ".sr" / "usrloc").unlink(missing_ok=True)
    yield give_passwords(unix, REALM, ("alice", "bob"))
    for name in ("alice", "bob"):
        (unix[name].home / ".sr" / "usrloc").unlink(missing_ok=True)


@pytest.fixture
def sipd(tmp_path: Path, unix: FakeUnix, passwords: dict[str, str]) -> Iterator[Daemon]:
    """sipd on its built-in defaults (running_sipd passes an empty configuration file)."""
    with running_sipd(tmp_path, unix=unix) as daemon:
        yield daemon


def from_sipd(sipd: Daemon, start: str) -> str:
    """A message that came to a baresip from sipd, as its SIP trace shows it."""
    return rf"^(?:UDP|TCP) 127\.0\.0\.1:{sipd.port} -> \S+\s*\n{start}"


def registered(unix: FakeUnix, phone: Baresip | Linphone, user: str, transport: str,
               agent: str) -> Binding:
    """``phone``'s one binding, as ``user``'s ~/.sr/usrloc lists it."""
    if isinstance(phone, Baresip):
        binding = wait_registered(unix, phone, user)
    else:
        phone.wait_registered(f"{user}'s linphone registers")
        # The 200 OK came after the binding was on disk (sipd's default sync).
        ours = bindings_at(unix, contact_port(phone.log), user)
        assert len(ours) == 1, (bindings(unix, user), phone.ladder())
        [binding] = ours
    assert binding.attrs.get("aor") == user, binding
    assert binding.transport == transport, binding
    assert binding.attrs.get("ua", "").startswith(agent), binding
    return binding


def guess_password(sipd: Daemon, user: str) -> None:
    """GUESSES REGISTERs for ``user`` with a wrong password, from 127.0.0.1."""
    answers = []
    for _ in range(GUESSES):
        with Phone(sipd.port, user, "not-the-password") as guesser:
            answers.append(status_of(guesser.register()))
    assert answers == [401] * (GUESSES - 1) + [403], answers
    assert f'auth throttling: user "{user}" from 127.0.0.1' in sipd.log, sipd.log


def baresip_calls_baresip(sipd: Daemon, alice: Baresip, bob: Baresip) -> None:
    """alice dials bob, bob answers, alice hangs up."""
    established = alice.count("Call established: sip:bob@")
    answered = alice.count(from_sipd(sipd, BYE_ANSWERED))
    alice.command(f"/dial sip:bob@{REALM}")
    bob.wait_log("Incoming call from: .*sip:alice@", "bob's phone rings")
    bob.command("/accept")
    bob.wait_log("Call established: sip:alice@", "bob's call established")
    alice.wait_log("Call established: sip:bob@", "alice's call established", established)
    alice.command("/hangup")
    bob.wait_log(from_sipd(sipd, "BYE sip:"), "bob's phone got alice's BYE")
    bob.wait_log(r"sip:alice@\S+: session closed", "bob's call over")
    alice.wait_log(from_sipd(sipd, BYE_ANSWERED), "alice's BYE answered", answered)


def baresip_calls_linphone(sipd: Daemon, alice: Baresip, bob: Linphone) -> None:
    """alice's baresip dials bob, bob's linphone answers, alice hangs up."""
    established = alice.count("Call established: sip:bob@")
    answered = alice.count(from_sipd(sipd, BYE_ANSWERED))
    alice.command(f"/dial sip:bob@{REALM}")
    ringing = bob.wait_event("LinphoneCallIncomingReceived", "bob's phone rings")
    assert ringing["From"] == f"sip:alice@{REALM}", ringing
    call = ringing["Id"]
    bob.ok(f"answer {call}")
    bob.wait_event("LinphoneCallStreamsRunning", "bob's call established", call)
    status = bob.ok(f"call-status {call}").fields
    assert (status["State"], status["Direction"]) == ("LinphoneCallStreamsRunning", "in"), status
    alice.wait_log("Call established: sip:bob@", "alice's call established", established)
    alice.command("/hangup")
    bob.wait_event("LinphoneCallEnd", "alice's BYE ends bob's call", call)
    assert any(way == "<" and text.startswith("BYE sip:") for way, text in messages(bob.log))
    alice.wait_log(from_sipd(sipd, BYE_ANSWERED), "alice's BYE answered", answered)


def linphone_calls_baresip(sipd: Daemon, bob: Linphone, alice: Baresip) -> None:
    """bob's linphone dials alice, alice's baresip answers, bob hangs up."""
    rings = alice.count("Incoming call from: .*sip:bob@")
    established = alice.count("Call established: sip:bob@")
    byes = alice.count(from_sipd(sipd, "BYE sip:"))
    closed = alice.count(r"sip:bob@\S+: session closed")
    call = bob.ok(f"call sip:alice@{REALM}").fields["Id"]
    alice.wait_log("Incoming call from: .*sip:bob@", "alice's phone rings", rings)
    alice.command("/accept")
    bob.wait_event("LinphoneCallStreamsRunning", "bob's call established", call)
    status = bob.ok(f"call-status {call}").fields
    assert (status["State"], status["Direction"]) == ("LinphoneCallStreamsRunning", "out"), status
    alice.wait_log("Call established: sip:bob@", "alice's call established", established)
    bob.ok(f"terminate {call}")
    alice.wait_log(from_sipd(sipd, "BYE sip:"), "alice's phone got bob's BYE", byes)
    alice.wait_log(r"sip:bob@\S+: session closed", "alice's call over", closed)
    bob.wait_event("LinphoneCallReleased", "bob's call over", call)


def unregister_and_quit(unix: FakeUnix, phone: Linphone, user: str) -> None:
    """``unregister ALL``: a REGISTER with Expires: 0 removes the binding; then quit."""
    port = contact_port(phone.log)
    phone.ok("unregister ALL")
    wait_for(lambda: not bindings_at(unix, port, user), f"linphone out of {user}'s usrloc")
    assert any(text.startswith("REGISTER ") and re.search(r"^Expires: 0\s*$", text, re.MULTILINE)
               for text in sent_messages(phone.log)), phone.ladder()
    assert phone.quit() == 0, phone.tail()


def one_round(sipd: Daemon, unix: FakeUnix, passwords: dict[str, str], tmp: Path,
              transport: str, linphone_agent: str | None, guess: bool) -> None:
    tmp = tmp / transport
    tmp.mkdir()
    with running_baresip(tmp, sipd.port, transport, user="alice", password=passwords["alice"],
                         modules=CALL_MODULES) as alice:
        registered(unix, alice, "alice", transport, "baresip")
        with running_baresip(tmp, sipd.port, transport, user="bob", password=passwords["bob"],
                             modules=CALL_MODULES) as bob:
            registered(unix, bob, "bob", transport, "baresip")
            baresip_calls_baresip(sipd, alice, bob)
            quit_and_unregister(unix, bob, "bob")
        if guess:
            guess_password(sipd, "carol")
        with running_linphone(tmp, sipd.port, transport, "bob", passwords["bob"], domain=REALM,
                              user_agent=linphone_agent) as linphone:
            registered(unix, linphone, "bob", transport, linphone_agent or DAEMON_AGENT)
            baresip_calls_linphone(sipd, alice, linphone)
            linphone_calls_baresip(sipd, linphone, alice)
            # A Linphone's User-Agent is offered SHA-256 then MD5, and linphone
            # takes SHA-256; a User-Agent sipd does not know, MD5 alone. The
            # INVITE's 407 offers first what the REGISTER used.
            if linphone_agent:
                offer, algorithm = ["SHA-256", "MD5"], "SHA-256"
            else:
                offer, algorithm = ["MD5"], "MD5"
            assert offered(linphone.log, 401) == [offer], linphone.ladder()
            assert [o[:1] for o in offered(linphone.log, 407)] == [[algorithm]], linphone.ladder()
            assert digest_algorithms(linphone.log, "REGISTER", "Authorization") == [algorithm]
            assert digest_algorithms(linphone.log, "INVITE", "Proxy-Authorization") == [algorithm]
            unregister_and_quit(unix, linphone, "bob")
        # baresip never got anything but MD5 to answer.
        assert set(alice.challenged_with()) == {"MD5"}, alice.tail()
        quit_and_unregister(unix, alice, "alice")


def test_baresip_and_linphone_call_each_other_over_udp_and_tcp(
    sipd: Daemon, unix: FakeUnix, passwords: dict[str, str], tmp_path: Path
) -> None:
    one_round(sipd, unix, passwords, tmp_path, "udp", None, guess=True)
    one_round(sipd, unix, passwords, tmp_path, "tcp", LINPHONEC_AGENT, guess=False)
    assert sipd.alive(), sipd.log
    assert "Traceback" not in sipd.log, sipd.log


def test_a_guesser_at_a_phones_address_does_not_lock_out_that_phones_user(
    sipd: Daemon, unix: FakeUnix, passwords: dict[str, str], tmp_path: Path
) -> None:
    with running_baresip(tmp_path, sipd.port, "udp", user="alice", password=passwords["alice"],
                         account_params=";answermode=auto") as alice, \
         running_linphone(tmp_path, sipd.port, "udp", "bob", passwords["bob"],
                          domain=REALM) as bob:
        registered(unix, alice, "alice", "udp", "baresip")
        registered(unix, bob, "bob", "udp", DAEMON_AGENT)
        guess_password(sipd, "bob")
        # bob's own phone, registered at that address before the guesses, calls.
        call = bob.ok(f"call sip:alice@{REALM}").fields["Id"]
        bob.wait_event("LinphoneCallStreamsRunning", "bob's call established", call)
        bob.ok(f"terminate {call}")
        bob.wait_event("LinphoneCallReleased", "bob's call over", call)


def test_a_second_linphone_that_holds_an_md5_ha1_registers_after_one_chose_sha256(
    sipd: Daemon, unix: FakeUnix, passwords: dict[str, str], tmp_path: Path
) -> None:
    with running_linphone(tmp_path, sipd.port, "udp", "bob", passwords["bob"], domain=REALM,
                          user_agent=LINPHONEC_AGENT) as first:
        registered(unix, first, "bob", "udp", LINPHONEC_AGENT)
        assert digest_algorithms(first.log, "REGISTER", "Authorization") == ["SHA-256"]
        with running_linphone(tmp_path, sipd.port, "tcp", "bob", passwords["bob"],
                              domain=REALM, user_agent=LINPHONEC_AGENT, md5_ha1=True) as second:
            registered(unix, second, "bob", "tcp", LINPHONEC_AGENT)
            unregister_and_quit(unix, second, "bob")
        unregister_and_quit(unix, first, "bob")
