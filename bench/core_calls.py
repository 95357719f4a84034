"""CPU per call of the sans-IO core alone: endpoint, transactions and proxy, no sockets.

A plain script, not a test: ``.venv/bin/python bench/core_calls.py
[--calls N] [--rate R] [--auth] [--compiled] [--no-gc]``. It runs N calls
(INVITE from another domain, 100, 180, 200, BYE, 200) through the
endpoint and proxy of the proxy unit tests, in one process, and prints
the CPU per call. The clock moves as at R calls a second (300) and the
timers due run after each call, so transactions end as in the daemon.
``--auth`` makes them the daemon benchmark's calls instead: a local
caller challenged (INVITE, 407, ACK), then INVITE with credentials, 180,
200, ACK and BYE along the Record-Route, with the daemon's call tracker
(no call records) and the users' settings known without a look-up.
``--compiled`` puts ``build/compiled/site`` (``make compiled``) first on
the path, for the mypyc-compiled build; ``--no-gc`` turns the cycle
collector off, to see its share (it runs with the daemon's settings
otherwise). The figure includes making the phones' messages and reading
the proxy's; the daemon's own (``make profile``) adds the sockets,
trio's scheduling and the worker threads.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--calls", type=int, default=4000)
    ap.add_argument("--auth", action="store_true")
    ap.add_argument("--rate", type=float, default=300.0, help="calls a second of the clock")
    ap.add_argument("--compiled", action="store_true")
    ap.add_argument("--no-gc", action="store_true")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    if args.compiled:
        sys.path.insert(0, str(ROOT / "build" / "compiled" / "site"))
    from sipd.io.compiled import build
    from tests.unit.sipd.proxy.test_proxy import BOB1, CALLER, Net, answer, invite, requests

    net = authenticating_net() if args.auth else Net()
    net.bind("bob", BOB1)
    if args.no_gc:
        gc.disable()
    else:
        from sipd.io.heap import tune_gc
        tune_gc()  # the daemon's settings

    def plain_call(i: int) -> None:
        (req, _), = requests(net.send(invite(call_id=f"c{i}"), CALLER), "INVITE")
        net.send(answer(req, 180), BOB1)
        net.send(answer(req, 200), BOB1)
        bye = invite(method="BYE", call_id=f"c{i}", to_tag="uas1", cseq=2)
        for r, p in requests(net.send(bye, CALLER), "BYE"):
            net.send(answer(r, 200), p)

    one_call = authenticated_call(net) if args.auth else plain_call

    def call(i: int) -> None:
        # Time moves as at --rate calls a second, and the timers due run as
        # the daemon runs them: transactions end, and the heap stays the
        # size a steady load gives it (32 s of Timers J, K, L and M).
        one_call(i)
        assert net.tick(net.now + 1 / args.rate) == []

    for i in range(200):  # first-use costs out of the figure
        call(i)
    started = time.process_time()
    for i in range(args.calls):
        call(1000 + i)
    cpu = time.process_time() - started
    print(f"build: {build()}; collector {'off' if args.no_gc else 'on'}: "
          f"{cpu / args.calls * 1000:.3f} ms of CPU per call")


def authenticating_net() -> Any:
    """The unit tests' proxy, with the daemon's call tracker and cached users."""
    from sipd.proxy.calltrack import CallTracker
    from srfs.files.userconfig import UserConfig
    from srfs.state.calls import CallTable
    from tests.unit.sipd.proxy.test_proxy import Net, Users

    class KnownUsers(Users):
        def find_cached(self, name: str) -> tuple[bool, UserConfig] | None:
            return self.find(name)

    return Net(users=KnownUsers(), hooks=CallTracker(CallTable(), acc_enabled=False))


def authenticated_call(net: Any) -> Callable[[int], None]:
    from sipd.sip.message import Request, Response
    from tests.unit.sipd.proxy.test_proxy import (
        BOB1,
        CALLER,
        REALM,
        answer,
        credentials,
        invite,
        requests,
    )

    uri = f"sip:bob@{REALM}"
    frm = f"sip:alice@{REALM}"

    def in_dialog(method: str, call_id: str, cseq: int, route: list[str]) -> bytes:
        extra = "".join(f"Route: {r}\r\n" for r in route)
        return invite("sip:bob@192.0.2.20:5070", frm=frm, method=method, call_id=call_id,
                      to_tag="uas1", cseq=cseq, extra=extra)

    def call(i: int) -> None:
        call_id = f"a{i}"
        branch = f"z9hG4bK{call_id}"
        out = net.send(invite(uri, frm=frm, call_id=call_id, branch=branch), CALLER)
        challenge = out[-1][0]
        assert isinstance(challenge, Response) and challenge.status == 407
        # The ACK of a non-2xx answer has the INVITE's branch (RFC 3261 17.1.1.3).
        assert net.send(invite(uri, frm=frm, method="ACK", call_id=call_id, branch=branch,
                               to_tag=challenge.to.tag or ""), CALLER) == []
        auth = "Proxy-Authorization: " + credentials(challenge, uri) + "\r\n"
        out = net.send(invite(uri, frm=frm, extra=auth, cseq=2, call_id=call_id), CALLER)
        (req, _), = requests(out, "INVITE")
        assert isinstance(req, Request)
        # The callee copies the Record-Route into its answers (RFC 3261 12.1.1).
        rr = tuple(("Record-Route", v) for v in req.get_all("Record-Route"))
        net.send(answer(req, 180, extra=rr), BOB1)
        (ok, _), = net.send(answer(req, 200, extra=rr), BOB1)
        route = list(reversed(ok.values("Record-Route")))
        (_, _), = requests(net.send(in_dialog("ACK", call_id, 2, route), CALLER), "ACK")
        (bye, peer), = requests(net.send(in_dialog("BYE", call_id, 3, route), CALLER), "BYE")
        net.send(answer(bye, 200), peer)

    return call


if __name__ == "__main__":
    main()
