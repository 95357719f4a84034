"""CPU per REGISTER with digest auth of the sans-IO core alone: no sockets, no files.

A plain script, not a test: ``.venv/bin/python bench/core_register.py
[--users N] [--registrations N] [--rate R] [--compiled | --site DIR]
[--no-gc]``. Each
registration is the daemon benchmark's: a REGISTER answered 401, then the
same with credentials (MD5, qop=auth, as sipp sends them) answered 200,
through the endpoint, the registrar, the authenticator and the location
store of the registrar unit tests, in one process. Every user registers
twice first, so the figure is a refresh of a known user, as ``make profile
PROFILE_ARGS=--warm`` measures it. The clock moves as at R registrations a
second (847) and the timers due run, as in the daemon.

Only sipd's side is timed: the two calls of ``Endpoint.receive`` and the
timer passes, not making the phone's requests or reading the answers. The
accounts are known (the account cache's check that ``~/.sr/passwd`` did not
change always says so), and with no persistence behind the endpoint a
change is applied at once: what the daemon adds (the sockets, trio's
scheduling, ``~/.sr/usrloc`` and its writing thread) is what ``make profile``
measures on top. On a shared machine this figure moves far less from run
to run than the daemon's, so it is the one to compare builds by; take the
lowest of a few runs. ``--compiled`` puts ``build/compiled/site`` (``make
compiled``) first on the path, ``--site`` another build's unpacked wheel
(to compare two builds); ``--no-gc`` turns the cycle collector off.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--users", type=int, default=1000)
    ap.add_argument("--registrations", type=int, default=20000)
    ap.add_argument("--rate", type=float, default=847.0, help="registrations a second of the clock")
    ap.add_argument("--compiled", action="store_true")
    ap.add_argument("--site", type=Path, help="a build's unpacked wheel to run instead")
    ap.add_argument("--no-gc", action="store_true")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    if args.compiled:
        sys.path.insert(0, str(ROOT / "build" / "compiled" / "site"))
    if args.site:
        sys.path.insert(0, str(args.site))
    from sipd.io.compiled import build

    bench = Bench(args.users)
    if args.no_gc:
        gc.disable()
    else:
        from sipd.io.heap import tune_gc
        tune_gc()  # the daemon's settings
    step = 1.0 / args.rate
    for i in range(2 * args.users):  # every user known and registered: refreshes from here on
        bench.register(i % args.users, step)
    bench.challenge_cpu = bench.register_cpu = 0.0
    for i in range(args.registrations):
        bench.register(i % args.users, step)
    n = args.registrations
    total = bench.challenge_cpu + bench.register_cpu
    print(f"build: {build()}; collector {'off' if args.no_gc else 'on'}; {args.users} users: "
          f"{total / n * 1e6:.1f} µs of CPU per REGISTER+auth "
          f"(401: {bench.challenge_cpu / n * 1e6:.1f}, 200: {bench.register_cpu / n * 1e6:.1f})")


class Bench:
    """The registrar unit tests' endpoint with ``users`` users and the daemon's account cache."""

    def __init__(self, users: int) -> None:
        import secrets

        from sipd.auth.authenticator import Authenticator, RecentAccounts
        from sipd.auth.throttle import Throttle
        from sipd.core.identity import LocalIdentity
        from sipd.core.peer import Peer
        from sipd.endpoint import Endpoint
        from sipd.registrar.admission import BindingRules
        from sipd.registrar.register import Registrar, RegistrarPolicy
        from sipd.registrar.server import Registration, Server
        from sipd.sip.digest import NonceManager, ha1
        from srfs.accounts.directory import Account
        from srfs.state.location import LocationStore
        from srfs.user import User

        self.realm = "bench.test"
        self.accounts = {
            f"u{i}": Account(User(f"u{i}", 200000 + i, 200000 + i, f"/home/u{i}"), True, "",
                             {"MD5": ha1(f"u{i}", self.realm, f"pw-{i}", "MD5")})
            for i in range(users)
        }
        identity = LocalIdentity(frozenset({self.realm, "127.0.0.1"}), frozenset({5060}))
        store = LocationStore()
        auth = Authenticator(self.realm, NonceManager(secrets.token_bytes(32), lifetime=300),
                             throttle=Throttle(), identity=identity,
                             lookup=lambda name, rhost: self.accounts.get(name),
                             accounts=RecentAccounts(lambda account: True))
        registration = Registration(
            registrar=Registrar(RegistrarPolicy(), store, BindingRules(identity)), auth=auth)
        self.endpoint = Endpoint(Server(identity, registration), max_message_size=65535,
                                 store=store)
        self.endpoint.wall_offset = 1_800_000_000.0
        self.peer = Peer("udp", "127.0.0.1", 5062, conn=1)
        self.now = 0.0
        self.cseq = 0
        self.challenge_cpu = 0.0
        self.register_cpu = 0.0

    def register(self, i: int, step: float) -> None:
        from sipd.core.work import run_inline
        from sipd.sip.message import Response, parse

        self.cseq += 1
        started = time.process_time()
        out = run_inline(self.endpoint.receive(self._request(i, None), self.peer, self.now),
                         self.now)
        self.challenge_cpu += time.process_time() - started
        challenge = parse(out[0].data)
        assert isinstance(challenge, Response) and challenge.status == 401, challenge
        request = self._request(i, challenge)
        started = time.process_time()
        out = run_inline(self.endpoint.receive(request, self.peer, self.now), self.now)
        self.now += step
        out += run_inline(self.endpoint.handle_timer(self.now), self.now)
        self.register_cpu += time.process_time() - started
        answer = parse(out[0].data)
        assert isinstance(answer, Response) and answer.status == 200, answer

    def _request(self, i: int, challenge: Any) -> bytes:
        import re

        from sipd.sip.digest import response

        user = f"u{i}"
        lines = [
            f"REGISTER sip:{self.realm} SIP/2.0",
            f"Via: SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bK-{self.cseq}-{i}",
            "Max-Forwards: 70",
            f"From: <sip:{user}@{self.realm}>;tag={self.cseq}",
            f"To: <sip:{user}@{self.realm}>",
            f"Call-ID: reg-{i}@127.0.0.1",
            f"CSeq: {self.cseq} REGISTER",
            f"Contact: <sip:{user}@127.0.0.1:5062>",
            "Expires: 3600",
        ]
        if challenge is not None:
            found = re.search(r'nonce="([^"]+)"', challenge.get_all("WWW-Authenticate")[0])
            assert found is not None, challenge
            nonce = found.group(1)
            uri = f"sip:{self.realm}"
            digest = response(self.accounts[user].ha1["MD5"], nonce, "REGISTER", uri, "MD5",
                              qop="auth", nc="00000001", cnonce="6b8b4567")
            lines.append(
                f'Authorization: Digest username="{user}",realm="{self.realm}",'
                f'cnonce="6b8b4567",nc=00000001,qop=auth,uri="{uri}",nonce="{nonce}",'
                f'response="{digest}",algorithm=MD5')
        return ("\r\n".join(lines) + "\r\nContent-Length: 0\r\n\r\n").encode()


if __name__ == "__main__":
    main()
