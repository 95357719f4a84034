#!/usr/bin/env python3
"""OPTIONS answered per second over UDP: sipd and Kamailio side by side.

    .venv/bin/python bench/options_rate.py [--step-s 5] [--start 500] [--factor 1.4]
        [--out DIR]

Starts sipd (and, when Kamailio and the shared anchor harness are present,
the anchor Kamailio with one worker) on 127.0.0.1, then offers OPTIONS with
sipp at rising rates, each rate to both targets in turn. A step passes when
at most 1 % of the requests fail, sipp retransmitted at most 1 %, and the
achieved rate is at least 95 % of the offered one. Prints, per target, the
highest passing rate, the first failing one and the CPU time per request,
and the ratio sipd/Kamailio. A benchmark, not a test: it never fails on a
slow machine.

sipd answers OPTIONS to itself with 200 through a server transaction.
The anchor's configuration answers an OPTIONS without a user part with a
stateless 484; both parse, check Max-Forwards and build a reply, so the
figures compare the cost of answering a request.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.sipclient import free_port  # noqa: E402

ANCHOR = ROOT.parent / "shared" / "bench" / "kamailio"
SCENARIO = (ROOT / "tests" / "sipp" / "options.xml").read_text()
CLK = os.sysconf("SC_CLK_TCK")


@dataclass
class Target:
    name: str
    port: int
    pid: int
    expect: int  # the status code this target answers OPTIONS with


@dataclass
class Step:
    rate: int
    attempted: int
    successful: int
    failed: int
    retrans: int
    achieved: float
    cpu_ms_per_op: float

    @property
    def passed(self) -> bool:
        return (
            self.attempted > 0
            and self.failed <= 0.01 * self.attempted
            and self.retrans <= 0.01 * self.attempted
            and self.achieved >= 0.95 * self.rate
        )


def cpu_seconds(pid: int) -> float:
    total = 0
    pids = [pid]
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = Path(f"/proc/{d}/stat").read_text()
                if int(stat[stat.rindex(")") + 2 :].split()[1]) == pid:
                    pids.append(int(d))
            except (OSError, ValueError):
                pass
    for p in pids:
        try:
            stat = Path(f"/proc/{p}/stat").read_text()
            f = stat[stat.rindex(")") + 2 :].split()
            total += int(f[11]) + int(f[12])
        except OSError:
            pass
    return total / CLK


def run_step(target: Target, rate: int, seconds: float, work: Path) -> Step:
    scen = work / f"options_{target.expect}.xml"
    scen.write_text(SCENARIO.replace('<recv response="200">', f'<recv response="{target.expect}">')
                    .replace('check_it="true"', f'check_it="{"true" if target.expect == 200 else "false"}"'))
    rundir = work / f"{target.name}_{rate}"
    rundir.mkdir()
    count = int(rate * seconds)
    cmd = ["sipp", f"127.0.0.1:{target.port}", "-sf", str(scen), "-t", "u1",
           "-i", "127.0.0.1", "-p", str(free_port()), "-nostdin",
           "-m", str(count), "-r", str(rate), "-rp", "1000", "-l", str(max(rate, 100)),
           "-buff_size", "4194304", "-max_recv_loops", "10000",
           "-timeout", f"{int(seconds + 20)}s", "-recv_timeout", "2000",
           "-trace_stat", "-stf", "stat.csv", "-fd", "1"]
    cpu0 = cpu_seconds(target.pid)
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, cwd=rundir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         stdin=subprocess.DEVNULL)
    try:
        p.wait(timeout=seconds + 40)
    except subprocess.TimeoutExpired:
        p.send_signal(signal.SIGINT)
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    wall = time.monotonic() - t0
    cpu = cpu_seconds(target.pid) - cpu0
    rows: list[list[str]] = []
    if (rundir / "stat.csv").exists():
        with open(rundir / "stat.csv") as f:
            rows = list(csv.reader(f, delimiter=";"))
    # sipp ends each row with a ';', so rows may be one field longer.
    last = dict(zip(rows[0], rows[-1], strict=False)) if len(rows) >= 2 else {}

    def gi(k: str) -> int:
        try:
            return int(float(last.get(k, "0") or 0))
        except ValueError:
            return 0

    attempted = gi("TotalCallCreated")
    successful = gi("SuccessfulCall(C)")
    # The calls are created over count/rate seconds; a late tail of answers
    # does not lower the offered rate.
    achieved = attempted / max(wall - 0.5, count / rate) if attempted else 0.0
    return Step(rate, attempted, successful, gi("FailedCall(C)"), gi("Retransmissions(C)"),
                achieved, 1000 * cpu / successful if successful else float("nan"))


def start_sipd(port: int) -> subprocess.Popen[bytes]:
    p = subprocess.Popen([str(ROOT / ".venv" / "bin" / "sipd"), "--no-mount", "--no-pam", "-q",
                          "-c", "/dev/null", "-l", f"udp:127.0.0.1:{port}", "-r", "127.0.0.1"],
                         stdin=subprocess.DEVNULL)
    time.sleep(1.5)
    if p.poll() is not None:
        raise SystemExit("sipd did not start")
    return p


def start_kamailio(port: int, work: Path) -> int | None:
    if shutil.which("kamailio") is None or not (ANCHOR / "kam_start.sh").exists():
        print("Kamailio or the anchor harness is missing: measuring sipd alone")
        return None
    env = {**os.environ, "BENCH_DATA": str(work / "kamdata"), "RUN_DIR": str(work)}
    r = subprocess.run(["sh", str(ANCHOR / "kam_start.sh"), "1", str(port)], env=env,
                       capture_output=True, text=True)
    if r.returncode != 0:
        print(f"Kamailio did not start: {r.stdout}{r.stderr}")
        return None
    return int((work / f"kam_anchor_{port}.pid").read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--step-s", type=float, default=5.0)
    ap.add_argument("--start", type=int, default=500)
    ap.add_argument("--factor", type=float, default=1.4)
    ap.add_argument("--max-rate", type=int, default=40000)
    ap.add_argument("--out", type=Path, default=None,
                    help="where to keep the raw data (default: a new directory in the temp dir)")
    args = ap.parse_args()
    work = args.out or Path(tempfile.mkdtemp(prefix="sipd-bench-options-"))
    work.mkdir(parents=True, exist_ok=True)
    sp = free_port()
    sipd = start_sipd(sp)
    targets = [Target("sipd", sp, sipd.pid, 200)]
    kp = free_port()
    kam_pid = start_kamailio(kp, work)
    if kam_pid:
        targets.append(Target("kamailio", kp, kam_pid, 484))
    results: dict[str, list[Step]] = {t.name: [] for t in targets}
    try:
        rate = args.start
        live = list(targets)
        round_no = 0
        while live and rate <= args.max_rate:
            order = live if round_no % 2 == 0 else list(reversed(live))
            for t in order:
                step = run_step(t, rate, args.step_s, work)
                results[t.name].append(step)
                print(f"{t.name:9} offered {rate:6}/s achieved {step.achieved:8.0f}/s "
                      f"failed {step.failed:5} retrans {step.retrans:5} "
                      f"cpu {step.cpu_ms_per_op:6.3f} ms/op  {'pass' if step.passed else 'FAIL'}",
                      flush=True)
                time.sleep(1)
            live = [t for t in live if results[t.name][-1].passed]
            rate = int(rate * args.factor)
            round_no += 1
    finally:
        sipd.send_signal(signal.SIGTERM)
        sipd.wait(10)
        if kam_pid:
            subprocess.run(["sh", str(ANCHOR / "kam_stop.sh"), "-r", str(work), str(kp)],
                           capture_output=True)
    print("\nOPTIONS over UDP, one process each, same run:")
    best: dict[str, int] = {}
    for name, steps in results.items():
        passed = [s for s in steps if s.passed]
        failed = [s for s in steps if not s.passed]
        best[name] = max((s.rate for s in passed), default=0)
        cpu = [s.cpu_ms_per_op for s in passed]
        print(f"  {name:9} max sustained {best[name]:6}/s; first failing "
              f"{failed[0].rate if failed else '-'}; cpu {min(cpu) if cpu else float('nan'):.3f}"
              f"-{max(cpu) if cpu else float('nan'):.3f} ms/op")
    if "kamailio" in best and best["kamailio"]:
        print(f"  ratio sipd/kamailio (max sustained rate): {best['sipd'] / best['kamailio']:.2f}")
    print(f"raw data: {work}")


if __name__ == "__main__":
    main()
