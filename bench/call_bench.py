#!/usr/bin/env python3
"""Authenticated call setups through sipd, next to the Kamailio anchor, in one run.

    .venv/bin/python bench/call_bench.py [--quick] [--rounds 2] [--step-s 8]
        [--max-start 150] [--call-rate 0] [--acc] [--sync write-back|write-through]

One sipp "call" is the harness's ``call --auth`` flow (``uac_auth.xml``):
INVITE -> 407 -> ACK -> INVITE with Proxy-Authorization -> (100) (180) 200
-> ACK -> 500 ms hold -> BYE -> 200, from a local user (a reg user of
``users.csv``) to a callee (rows 0-99, registered by the harness at its
sipp UAS). Both targets do the same work: sipd challenges calls from local
users, and Kamailio is started with ``-a`` (AUTH_INVITE), one worker.

What it does, all on 127.0.0.1 and in throw-away directories:

1. Provisioning, as ``registrar_bench.py`` does: the shared
   ``gen_users.py`` writes ``users.csv`` and Kamailio's db; sipd's users
   are fake UNIX users (nss_wrapper) with a ``~/.sr/passwd`` for the realm
   ``bench.test``. From, To and the Request-URI use the harness's default
   domain, the target's address 127.0.0.1, which is local to both (sipd:
   a listening address; Kamailio: always).
2. sipd (``--no-pam --no-mount``, ``auth_algorithms = ["MD5"]`` since sipp
   answers the first challenge only, ``acc = false`` unless ``--acc``, as
   the anchor keeps no call records) and Kamailio ``kam_start.sh -a 1``.
3. A short ``call --auth`` check step against sipd: when no call gets
   through, the bench stops there and prints what sipd logged.
4. The shared ``compare.py`` (Kamailio first, the reference) in mode
   ``call-max-auth``: max sustained call setups/s at under 1 % failures
   (the harness's pass rule), ``--rounds`` rounds of ``--step-s`` s steps.
5. ``compare.py`` in mode ``call-auth`` at one rate both sustain
   (``--call-rate``; by default half of the smaller max): CPU ms per call
   setup of each target, and the INVITE->200 latency (RTD1, which includes
   the 407 round trip; sipp's resolution is 1-4 ms).
6. One summary table, with PASS/MISS against the target (sipd's max rate
   at least half of Kamailio's). Raw output stays in the results directory
   printed at the end; the scratch directory is removed, and every process
   started here is stopped, on exit, Ctrl-C, SIGTERM or error.

Needs root (homes are chowned to the fake uids), sipp and libnss_wrapper;
without Kamailio it measures sipd alone. A benchmark, not a test: it exits
0 when something it needs is missing, and prints whatever it measured.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from registrar_bench import (  # noqa: E402
    ANCHOR,
    Kamailio,
    Processes,
    _f,
    _mean,
    _ratio,
    _rows,
    guarded,
    log,
    log_problems,
    options_probe,
    prepare,
    prerequisites,
    start_kamailio,
    start_sipd,
    stop_kamailio,
    stop_sipd,
    wait_until_checked,
)

TARGET_RATIO = 0.5
"""Issue 5: at least half of Kamailio's call rate with one worker."""
FALLBACK_RATE = 50.0


def call_prerequisites() -> str | None:
    reason = prerequisites()
    if reason:
        return reason
    for name in ("uac_auth.xml", "uas.xml"):
        if not (ANCHOR / name).exists():
            return f"the shared harness is missing: {ANCHOR / name}"
    return None


def sipd_config(args: argparse.Namespace) -> str:
    return (f'wtmp = false\nmax_expires = 3600\nsync = "{args.sync}"\n'
            f'auth_algorithms = ["MD5"]\nacc = {"true" if args.acc else "false"}\n')


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 1 round, 3 s steps, short pauses")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--step-s", type=float, default=8.0)
    ap.add_argument("--max-start", type=float, default=150.0,
                    help="first rate of mode call-max-auth, for both targets (x1.3 per step)")
    ap.add_argument("--call-rate", type=float, default=0.0,
                    help="fixed rate of mode call-auth, for both targets (CPU ms per call); "
                         "default: half of the smaller max sustained rate")
    ap.add_argument("--check-rate", type=float, default=20.0,
                    help="rate of the first check step against sipd")
    ap.add_argument("--pause-s", type=float, default=10.0,
                    help="pause between phases, for the targets to drain")
    ap.add_argument("--sync", choices=("write-through", "write-back"), default="write-back",
                    help="sipd's sync setting")
    ap.add_argument("--acc", action="store_true",
                    help="sipd writes call records (its default; the anchor keeps none)")
    ap.add_argument("--no-kamailio", action="store_true", help="measure sipd alone")
    ap.add_argument("--out", help="results directory (default: a new one under the temp dir)")
    ap.add_argument("--scratch-parent", default=None,
                    help="where the scratch directory (homes) is made; default the temp dir")
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.step_s = 1, 3.0
        args.pause_s = min(args.pause_s, 3.0)

    reason = call_prerequisites()
    if reason:
        log(f"call_bench: skipped: {reason}")
        return 0
    return guarded(run, args, "call")


def run(args: argparse.Namespace, results: Path, scratch: Path, procs: Processes) -> None:
    # 1. provisioning
    setup = prepare(results, scratch, procs)
    data, run_dir, h, fake = setup.data, setup.run_dir, setup.h, setup.fake
    sipd_port, kam_port = setup.sipd_port, setup.kam_port
    conf = scratch / "sipd.conf"
    conf.write_text(sipd_config(args))

    # 2. the targets
    kam: Kamailio | None = None
    if not args.no_kamailio:
        kam = start_kamailio(procs, data, run_dir, kam_port, results, flags=["-a"])
    sipd_log = results / "sipd.log"
    sipd = start_sipd(procs, fake, conf, sipd_port, sipd_log)
    if options_probe(sipd_port, 60.0) is None:
        raise RuntimeError(f"sipd did not answer OPTIONS; see {sipd_log}")
    wait_until_checked(sipd)
    log(f"sipd pid {sipd.pid} on udp:127.0.0.1:{sipd_port} (sync = {args.sync}, "
        f"acc = {'true' if args.acc else 'false'}, auth_algorithms = [\"MD5\"])"
        + (f"; kamailio -a pid {kam.pid} on udp:127.0.0.1:{kam_port}" if kam else ""))

    # 3. does an authenticated call get through sipd at all?
    log(f"\n== check: call --auth through sipd at {args.check_rate:g} cps for 3 s")
    check = h.bench("check_sipd", sipd_port, sipd.pid, "call", args.check_rate, 3.0, ["--auth"])
    step = check["steps"][0] if check and check.get("steps") else {}
    # Only whether calls get through counts here: sipp keeps the last <200
    # RTT samples of a run to itself, so this short step has no latency.
    log(f"  attempted {step.get('attempted')}, successful {step.get('successful')}, "
        f"failed {step.get('failed')}, retrans {step.get('retransmissions')}")
    targets = [f"sipd=127.0.0.1:{sipd_port}:{sipd.pid}"]
    if kam:
        targets.insert(0, f"kam=127.0.0.1:{kam_port}:{kam.pid}")
    maxed: list[dict[str, Any]] = []
    fixed: list[dict[str, Any]] = []
    call_rate = args.call_rate
    if not step.get("successful"):
        log("  no call got through sipd: no comparison (see the log lines below)")
    else:
        # 4. max sustained call setups/s
        time.sleep(args.pause_s)
        log(f"\n== compare.py call-max-auth from {args.max_start:g} cps")
        maxed = h.compare("compare_call_max", targets, "call-max-auth", args.max_start,
                          args.step_s, args.rounds)
        s_max = _mean([r["rate"] for r in _rows(maxed, "sipd", "call-max-auth")])
        k_max = _mean([r["rate"] for r in _rows(maxed, "kam", "call-max-auth")])
        if not call_rate:
            known = [v for v in (s_max, k_max) if v]
            call_rate = round(min(known) / 2) if known else FALLBACK_RATE
        # 5. CPU per call and latency at one rate both sustain
        time.sleep(args.pause_s)
        log(f"\n== compare.py call-auth at {call_rate:g} cps")
        fixed = h.compare("compare_call", targets, "call-auth", call_rate, args.step_s,
                          args.rounds)

    stop_sipd(procs, sipd)
    if kam:
        stop_kamailio(procs, kam, results)
    errors, warnings, top = log_problems([sipd_log])

    report = {"args": vars(args), "results": str(results), "call_rate": call_rate,
              "check": step, "max": maxed, "fixed": fixed,
              "sipd_log": {"errors": errors, "warnings": warnings, "top": top}}
    (results / "results.json").write_text(json.dumps(report, indent=1, default=str))
    print_summary(args, call_rate, maxed, fixed, kam is not None)
    log(f"\nsipd log: {errors} error(s), {warnings} warning(s)")
    for n, shape in top:
        log(f"  {n:6}x {shape}")
    if not step.get("successful"):
        tail = sipd_log.read_text(errors="replace").splitlines()[-15:]
        log("last lines of sipd's log:")
        for line in tail:
            log(f"  {line[:200]}")


def _mb(kb: float | None) -> float | None:
    return None if kb is None else kb / 1024


def print_summary(args: argparse.Namespace, call_rate: float, maxed: list[dict[str, Any]],
                  fixed: list[dict[str, Any]], with_kam: bool) -> None:
    def per_round(rows: list[dict[str, Any]], key: str, fmt: str) -> str:
        return ", ".join(_f(r.get(key), fmt) for r in rows) or "-"

    s_max, k_max = _rows(maxed, "sipd", "call-max-auth"), _rows(maxed, "kam", "call-max-auth")
    s_fix, k_fix = _rows(fixed, "sipd", "call-auth"), _rows(fixed, "kam", "call-auth")
    sm, km = _mean([r["rate"] for r in s_max]), _mean([r["rate"] for r in k_max])
    sc, kc = _mean([r["cpu_ms_op"] for r in s_fix]), _mean([r["cpu_ms_op"] for r in k_fix])
    w = 46

    def row(label: str, sv: str, kv: str = "", ratio: str = "", note: str = "") -> None:
        log(f"{label:{w}} {sv:>17} {kv:>17} {ratio:>9}{'  ' + note if note else ''}")

    log("\n" + "=" * 100)
    log(f"Call setups with INVITE auth (407), INVITE..BYE with 500 ms hold, one process / one "
        f"worker each, UDP on 127.0.0.1; {args.rounds} round(s) of {args.step_s:g} s steps; "
        f"sipd sync = {args.sync}, acc = {'true' if args.acc else 'false'}")
    row("", "sipd", "kamailio", "sipd/kam")
    if sm is not None and km:
        verdict = (f"{'PASS' if sm / km >= TARGET_RATIO else 'MISS'} "
                   f"(target >= {TARGET_RATIO:g} x Kamailio)")
    else:
        verdict = "- (no ratio)"
    row("max sustained call setups/s (mean of rounds)", _f(sm), _f(km), _ratio(sm, km), verdict)
    row("  per round", per_round(s_max, "rate", "{:.0f}"), per_round(k_max, "rate", "{:.0f}"))
    row("  INVITE->200 p50 / p99 at the max, ms",
        f"{_f(_mean([r['p50'] for r in s_max]))} / {_f(_mean([r['p99'] for r in s_max]))}",
        f"{_f(_mean([r['p50'] for r in k_max]))} / {_f(_mean([r['p99'] for r in k_max]))}")
    row("  PSS at the max, MB", _f(_mean([_mb(r.get("pss_kb")) for r in s_max])),
        _f(_mean([_mb(r.get("pss_kb")) for r in k_max])), "",
        "transactions and dialogs of the last steps included")
    row(f"CPU ms per call setup at {call_rate:g} cps", _f(sc, "{:.3f}"), _f(kc, "{:.3f}"),
        _ratio(sc, kc))
    row("  per round", per_round(s_fix, "cpu_ms_op", "{:.3f}"),
        per_round(k_fix, "cpu_ms_op", "{:.3f}"))
    row("  step passed", ", ".join("yes" if r.get("passed") else "NO" for r in s_fix) or "-",
        ", ".join("yes" if r.get("passed") else "NO" for r in k_fix) or "-")
    row(f"INVITE->200 p50 / p99 at {call_rate:g} cps, ms",
        f"{_f(_mean([r['p50'] for r in s_fix]))} / {_f(_mean([r['p99'] for r in s_fix]))}",
        f"{_f(_mean([r['p50'] for r in k_fix]))} / {_f(_mean([r['p99'] for r in k_fix]))}",
        "", "RTD1: first INVITE to 200, 407 round trip included")
    if not with_kam:
        log("(no Kamailio in this run: no ratios)")
    log("Ratios come from one run on one machine; absolute figures move 10-40 % between runs.")


if __name__ == "__main__":
    sys.exit(main())
