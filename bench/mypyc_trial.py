"""Pure Python against mypyc-compiled: the per-message work of sipd.sip.

A plain script, not a test: ``.venv/bin/python bench/mypyc_trial.py``.
It copies sipd/ into a temporary directory, compiles there the modules
setup.py compiles for a wheel (``sipd.io.compiled.MYPYC_MODULES``) with mypyc
(which ships with mypy, a test dependency; a C compiler and the Python
headers are needed), then times the same
workloads in child processes, alternating the checkout (pure) and the
compiled copy so that a noisy machine hits both alike. Each child reports
the best of several timeit repeats per workload; the table gives the
median over the rounds.

Workloads:
  parse REGISTER   parse() + validate() of a REGISTER with Authorization
  parse INVITE     the same for an INVITE with SDP
  REGISTER+auth    what the registrar's own code asks of the SIP layer for
                   one authenticated REGISTER: parse + validate, the
                   request checks, Authorization parsed and verified, the
                   nonce checked, the 200 OK built with its Contact and
                   serialised
  200 OK only      make_response() + to_bytes() of that answer
  OPTIONS endpoint  an OPTIONS to the server through the sans-IO endpoint:
                   parse, checks, a server transaction, the answer's bytes
                   (the endpoint and the registrar are compiled too)
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import timeit
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]



def modules() -> tuple[str, ...]:
    """What setup.py compiles into a wheel (read in the parent only: a child
    must import sipd from the tree it times)."""
    sys.path.insert(0, str(ROOT))
    from sipd.io.compiled import MYPYC_MODULES

    return MYPYC_MODULES


def compile_copy(dest: Path, names: tuple[str, ...]) -> None:
    shutil.copytree(ROOT / "sipd", dest / "sipd", ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    mypyc = Path(sys.executable).with_name("mypyc")
    cmd = [str(mypyc) if mypyc.exists() else "mypyc", *(f"sipd/{m.replace('.', '/')}.py" for m in names)]
    done = subprocess.run(cmd, cwd=dest, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"mypyc failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")


def child(root: str, number: int) -> None:
    sys.path.insert(0, root)
    from sipd.io.compiled import build
    from sipd.sip import digest
    from sipd.sip.checks import check_request
    from sipd.sip.message import Request, make_response, parse

    # bench_parse puts the checkout on sys.path: import it once sipd is loaded.
    sys.path.append(str(ROOT / "bench"))
    from bench_parse import INVITE, REGISTER

    compiled = build() == "compiled with mypyc"
    nonces = digest.NonceManager(b"k" * 32, random=lambda n: b"\x01" * n)
    nonce = nonces.make(1000.0, "example.com")
    ha1 = digest.ha1("jan", "example.com", "secret")
    # The benchmark REGISTER with a nonce of ours and the right response, so
    # that every step of the check runs (the repeated nc then makes it STALE
    # after the first call, which costs the same).
    register = REGISTER.replace(b"5f8c3a7e1b2d4c6e8f0a1b2c3d4e5f60718293a4", nonce.encode())
    probe = parse(register)
    assert isinstance(probe, Request)
    creds = digest.parse_credentials(probe.get("Authorization") or "")
    right = digest.response(ha1, nonce, "REGISTER", creds.uri, creds.algorithm,
                            creds.qop, creds.nc, creds.cnonce)
    register = register.replace(creds.response.encode(), right.encode())
    probe = parse(register)
    assert isinstance(probe, Request)
    first = digest.check_credentials(
        digest.parse_credentials(probe.get("Authorization") or ""), "REGISTER", ha1,
        nonces=nonces, counts=digest.NonceCounts(), now=1001.0, bound="example.com",
    )
    assert first is digest.AuthResult.OK, first
    counts = digest.NonceCounts()
    supported = frozenset(("path", "outbound", "gruu"))

    def parse_validate(data: bytes) -> Callable[[], object]:
        def run() -> object:
            msg = parse(data)
            msg.validate()
            return msg

        return run

    def answer(req: Request) -> bytes:
        contact = req.contacts[0]
        resp = make_response(
            req, 200, "OK",
            (("Server", "sipd"), ("Contact", f"{contact};expires=3600"),
             ("Date", "Sat, 05 Dec 2026 07:46:00 GMT")),
            to_tag="8c1e2f3a4b",
        )
        return resp.to_bytes()

    def register_auth() -> object:
        req = parse(register)
        req.validate()
        assert isinstance(req, Request)
        check_request(req, supported)
        req.uri  # noqa: B018
        req.to.uri  # noqa: B018
        creds = digest.parse_credentials(req.get("Authorization") or "")
        digest.check_credentials(
            creds, req.method, ha1, nonces=nonces, counts=counts, now=1001.0, bound="example.com"
        )
        req.expires  # noqa: B018
        return answer(req)

    parsed = parse(register)
    assert isinstance(parsed, Request)
    parsed.validate()

    def ok_only() -> object:
        return answer(parsed)

    # The whole sans-IO receive path of a request to the server itself:
    # parse, checks, a new server transaction, the registrar's 200, the
    # bytes out. Each OPTIONS is a new transaction (its own branch).
    from sipd.core.identity import LocalIdentity
    from sipd.core.peer import Peer
    from sipd.endpoint import Endpoint
    from sipd.registrar.server import Server

    endpoint = Endpoint(
        Server(LocalIdentity(frozenset({"sip.test", "192.0.2.1"}), frozenset({5060}))),
        max_message_size=65535,
    )
    peer = Peer("udp", "192.0.2.7", 40000, conn=1)
    sequence = iter(range(10**9))

    def options_via_endpoint() -> object:
        n = next(sequence)
        data = (
            f"OPTIONS sip:sip.test SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 192.0.2.7:40000;branch=z9hG4bK{n:012x};rport\r\n"
            "Max-Forwards: 70\r\n"
            f"From: <sip:tester@example.com>;tag={n:08x}\r\n"
            "To: <sip:server@example.com>\r\n"
            f"Call-ID: {n:016x}@192.0.2.7\r\n"
            "CSeq: 1 OPTIONS\r\n"
            "Content-Length: 0\r\n\r\n"
        ).encode()
        out = endpoint.receive(data, peer, n * 1e-4)
        if n % 1000 == 999:
            endpoint.handle_timer(n * 1e-4)  # Timer J ends transactions as in a daemon
        return out

    def best_us(fn: Callable[[], object]) -> float:
        fn()
        return min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e6

    out = {
        "compiled": compiled,
        "parse REGISTER": best_us(parse_validate(register)),
        "parse INVITE": best_us(parse_validate(INVITE)),
        "REGISTER+auth": best_us(register_auth),
        "200 OK only": best_us(ok_only),
        "OPTIONS endpoint": best_us(options_via_endpoint),
    }
    print(json.dumps(out))


def run_child(root: Path, number: int) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, __file__, "--child", str(root), "--number", str(number)],
        capture_output=True, text=True, check=True,
    )
    result: dict[str, float] = json.loads(done.stdout)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5, help="alternating pure/compiled runs")
    ap.add_argument("--number", type=int, default=2000, help="calls per timeit repeat")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.number)
        return
    names = modules()
    with tempfile.TemporaryDirectory(prefix="sipd-mypyc-") as tmp:
        compile_copy(Path(tmp), names)
        pure: list[dict[str, float]] = []
        native: list[dict[str, float]] = []
        for _ in range(args.rounds):
            pure.append(run_child(ROOT, args.number))
            native.append(run_child(Path(tmp), args.number))
    assert not any(r["compiled"] for r in pure) and all(r["compiled"] for r in native)
    print(f"Python {sys.version.split()[0]}; microseconds per operation, median of "
          f"{args.rounds} rounds (each the best of 5 timeit repeats)")
    print(f"compiled with mypyc: sipd/sip/{{{','.join(names)}}}.py")
    print()
    print(f"{'workload':<16} {'pure':>10} {'compiled':>10} {'speed-up':>9}")
    for key in ("parse REGISTER", "parse INVITE", "REGISTER+auth", "200 OK only",
                "OPTIONS endpoint"):
        a = statistics.median(r[key] for r in pure)
        b = statistics.median(r[key] for r in native)
        print(f"{key:<16} {a:>8.1f}us {b:>8.1f}us {a / b:>8.2f}x")


if __name__ == "__main__":
    main()
