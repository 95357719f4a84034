#!/usr/bin/env python3
"""Where sipd's CPU goes for one REGISTER with digest auth: py-spy on the running daemon.

    .venv/bin/python bench/profile_register.py [--rate 200] [--seconds 20]
        [--sync write-through|write-back] [--calls] [--warm] [--scratch-parent /dev/shm]
        [--mount] [--config LINE ...] [--native] [--perf] [--no-sampler]

``--calls`` profiles authenticated call setups instead, with
call_bench.py's load (the harness's ``bench.py call --auth``) and sipd
settings (MD5 only, no call records); the table is then per call.
``--warm`` lets every user register twice first (with ``--calls``: makes
the same calls once), so that the sample sees known users only, and
usrloc files that are written over their spares. The
daemon's metrics endpoint gives the worker jobs and the account cache
hits and misses per operation, before and after the load. ``--mount``
runs sipd with its state filesystem mounted (in the scratch directory),
as it runs by default: the benchmarks run it without, since Kamailio has
nothing of the kind, so this is where the tree's own cost per call and
the look at every member's ``~/.sr/config`` show.

The users, the sipd command line and the load are registrar_bench.py's:
the shared harness's users as fake UNIX users, sipd on them, and its
``bench.py reg`` mode (sipp, REGISTER answered 401, then again with
credentials) at a fixed rate. While that runs, ``py-spy record`` samples
the daemon, every thread, 200 times a second, without stopping it
(``--nonblocking``; a sample may then be torn, which a share of a few
per cent does not notice). Only samples of a thread holding the GIL
count (``--gil``): py-spy's own idle detection took the event loop's
epoll wait and fsync for work. So the table splits Python's own time;
the time in system calls is the daemon's system CPU time, given apart
from /proc.

Each sample is put to the innermost frame that belongs to a part of sipd
(see ``PARTS``): a ``re`` call made by the parser counts as parsing, a
``hashlib`` call made by the digest code as digest. The table gives each
part's share of the samples and its milliseconds of GIL time per
REGISTER that succeeded. Samples of worker threads (PAM, NSS, home files) are also
summed apart: a hop to a thread costs the main thread a wake-up, and the
thread's own work shows under its part. Garbage collection shows under
whatever frame triggered it.

py-spy sees Python frames only: the modules a wheel compiles with mypyc
(the SIP core, the registrar, the proxy, the location store) show as the
interpreted frame that called them, mostly the transport's. ``--native``
has py-spy read the native frames too, and a compiled function's frame
(its C file names its module) then counts under its module's part; py-spy
cannot do that without stopping the daemon for each sample, so the
daemon waits a little at each of them, and py-spy then takes far fewer
samples a second than asked and does not say how many it tried: the
table gives shares only. ``--perf``
also records the daemon with ``perf record`` (Debian ``linux-perf``;
DWARF call graphs, 299 Hz) over the same load and adds two tables: the
system calls of every thread (each sample put to the outermost system
call on its stack), and, for the event loop's thread, the innermost
compiled function on the stack (``module.Class.method``), which is where
the compiled code's own time and that of the interpreted and C code it
calls goes. perf's own work on the daemon's stacks adds to the CPU
figures.

The raw stacks (py-spy's collapsed "raw" format, which flamegraph.pl and
speedscope read) and the summary stay in the results directory. A
profile, not a comparison: the ratio to Kamailio comes from
registrar_bench.py. The summary also gives sipp's time to the 200 (p50,
p99); ``--no-sampler`` leaves py-spy out, for that latency and the CPU
figures as the benchmark, which samples nothing, sees them.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from registrar_bench import (  # noqa: E402
    Processes,
    guarded,
    log,
    options_probe,
    prepare,
    prerequisites,
    read_users,
    start_sipd,
    wait_until_checked,
)

#: Innermost matching frame wins; a frame is "function (path:line)".
PARTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("logging", ("/logging/", "srfs/logtext.py")),
    ("parse and build messages", ("sipd/sip/message.py", "sipd/sip/headers.py",
                                  "sipd/sip/uri.py", "sipd/sip/framing.py")),
    ("digest", ("sipd/sip/digest.py", "srfs/accounts/digestcalc.py")),
    ("transactions and timers", ("sipd/sip/transaction.py", "sipd/sip/timers.py")),
    ("accounts (NSS, PAM, ~/.sr/passwd)", ("srfs/accounts/",)),
    ("persistence (~/.sr/usrloc)", ("sipd/registrar/persistence.py", "srfs/files/")),
    ("location store", ("srfs/state/",)),
    ("registrar", ("sipd/registrar/",)),
    ("authentication flow", ("sipd/auth/",)),
    ("endpoint and core", ("sipd/endpoint.py", "sipd/core/", "sipd/sip/")),
    ("proxy", ("sipd/proxy/",)),
    ("transport (sockets)", ("sipd/io/transport.py",)),
    ("trio and thread hand-offs", ("sipd/io/workers.py",)),
    ("other I/O layer", ("sipd/io/", "sipd/cli.py")),
    ("trio and thread hand-offs", ("/trio/", "/outcome/", "/sniffio/", "/queue.py",
                                   "/threading.py")),
)
#: Samples a second.
RATE = 200
#: REGISTERs a second of --warm's pass over every user (without --calls).
WARM_RATE = 500
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>.*?)(?::\d+)?\)$")
#: A frame of a module compiled by mypyc, with ``--native``: its C file names
#: the module (``__native_sipd___registrar___server.c``).
_NATIVE_FILE = re.compile(r"__native_(?P<module>\w+)\.c$")


def source_of(where: str) -> str:
    """The frame's file as a path in the tree: a compiled module's C file as its .py."""
    m = _NATIVE_FILE.search(where)
    return m.group("module").replace("___", "/") + ".py" if m else where


def part_of(frames: list[str]) -> str:
    for frame in reversed(frames):
        m = _FRAME.match(frame)
        where = source_of(m.group("file")) if m else frame
        for name, marks in PARTS:
            if any(mark in where for mark in marks):
                return name
    return "other"


def worker_thread(frames: list[str]) -> bool:
    """A thread started for blocking work (sipd's job workers, trio's), not the event loop's."""
    return any("trio/_core/_thread_cache.py" in f or f.startswith("Workers._work ")
               for f in frames) and not any(
        "trio/_core/_run.py" in f and f.startswith("run ") for f in frames)


def breakdown(stacks: Path) -> tuple[Counter[str], int, int]:
    """Samples per part, all samples, and samples in worker threads."""
    parts: Counter[str] = Counter()
    total = workers = 0
    for line in stacks.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        if frames and frames[0].startswith("thread ("):
            frames = frames[1:]
        parts[part_of(frames)] += count
        total += count
        if worker_thread(frames):
            workers += count
    return parts, total, workers


#: Counters read from sipd's metrics endpoint before and after the load, per operation.
COUNTERS = ("sipd_jobs_started_total", "sipd_account_cache_hits_total",
            "sipd_account_cache_misses_total", "sipd_proxy_users_cached_total")
#: The group commits of ``~/.sr/usrloc`` over the load: how many, and how
#: long each took from its start to its answers (what a 200 waits for).
GROUPS = ("sipd_usrloc_group_commits_total", "sipd_usrloc_group_commit_seconds_total")


#: ``perf record`` samples per second with ``--perf``.
PERF_RATE = 299


def perf_symbol(frame: str) -> str:
    """``CPyDef_persistence___Persistence____plan`` as ``persistence.Persistence._plan``."""
    return frame.removeprefix("CPyDef_").replace("___", ".")


def perf_breakdown(script: str, main_tid: int) -> tuple[Counter[str], Counter[str], int, int]:
    """From ``perf script -F tid,ip,sym``: samples per system call (every
    thread), per innermost compiled function (the thread ``main_tid``), all
    samples and the main thread's.

    A sample is a header line (the thread id) and its stack, innermost
    frame first, one ``address symbol`` per line; samples are separated by
    a blank line.
    """
    calls: Counter[str] = Counter()
    compiled: Counter[str] = Counter()
    total = main = 0
    for block in script.split("\n\n"):
        lines = block.strip().splitlines()
        if not lines or not lines[0].strip().split()[0].isdigit():
            continue
        total += 1
        symbols = [parts[1] for parts in (line.split(None, 1) for line in lines[1:])
                   if len(parts) == 2]
        syscall = [s for s in symbols if s.startswith(("__x64_sys_", "__do_sys_"))]
        kernel = bool(symbols) and lines[1].strip().startswith("ffffffff")
        if syscall:
            calls[syscall[-1].removeprefix("__x64_sys_").removeprefix("__do_sys_")] += 1
        elif kernel:
            calls["(kernel, no system call: interrupts, page faults)"] += 1
        else:
            calls["(user space)"] += 1
        if int(lines[0].split()[0]) != main_tid:
            continue
        main += 1
        inner = next((s for s in symbols if s.startswith("CPyDef_")), None)
        if inner is not None:
            compiled[perf_symbol(inner)] += 1
        elif kernel:
            compiled["(kernel, outside compiled code)"] += 1
        else:
            compiled["(interpreted or C, outside compiled code: trio, the I/O layer)"] += 1
    return calls, compiled, total, main


def perf_report(perf_data: Path, main_tid: int, results: Path, ms_per_op: float,
                unit: str) -> dict[str, object]:
    """The two tables of ``--perf``, logged and returned for profile.json."""
    script = subprocess.run(["perf", "script", "-i", str(perf_data), "--pid", str(main_tid),
                             "-F", "tid,ip,sym"],
                            capture_output=True, text=True, errors="replace", check=True).stdout
    calls, compiled, total, main = perf_breakdown(script, main_tid)
    if not total:
        raise RuntimeError(f"perf recorded no samples; see {perf_data}")
    log(f"\nperf: {total} samples of every thread, {main} of the event loop's "
        f"({PERF_RATE} Hz, all CPU time, user and system)")
    log(f"{'where (every thread)':<60} {'share':>7} {'ms/' + unit:>12}")
    for name, n in calls.most_common(12):
        log(f"{name:<60} {100 * n / total:>6.1f}% {n / total * ms_per_op:>12.3f}")
    log(f"\n{'innermost compiled function (event loop thread)':<60} {'share':>7}")
    for name, n in compiled.most_common(25):
        log(f"{name:<60} {100 * n / max(main, 1):>6.1f}%")
    (results / "perf-script.txt").write_text(script)
    return {"samples": total, "main_samples": main,
            "system_calls": dict(calls.most_common()), "compiled": dict(compiled.most_common())}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def counters(port: int) -> dict[str, float]:
    """The :data:`COUNTERS` sipd reports now (empty if its endpoint does not answer)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return {}
    out: dict[str, float] = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in COUNTERS or name in GROUPS:
            out[name] = float(value)
    return out


def cpu_seconds(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of ``pid``, all threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def run(args: argparse.Namespace, results: Path, scratch: Path, procs: Processes) -> None:
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        raise RuntimeError("py-spy is missing: make profile installs it")
    if args.perf and shutil.which("perf") is None:
        raise RuntimeError("--perf needs perf (Debian: apt install linux-perf)")
    setup = prepare(results, scratch, procs)
    conf = scratch / "sipd.conf"
    what = "call setup with auth" if args.calls else "REGISTER+auth"
    metrics_port = free_port()
    conf.write_text(f'wtmp = false\nmax_expires = 3600\nsync = "{args.sync}"\n'
                    f'metrics_listen = "127.0.0.1:{metrics_port}"\n'
                    # As call_bench.py runs it: sipp answers the first challenge only.
                    + ('auth_algorithms = ["MD5"]\nacc = false\n' if args.calls else "")
                    + "".join(f"{line}\n" for line in args.config))
    mount = None
    if args.mount:
        mount = scratch / "run-sr"
        mount.mkdir()
    sipd = start_sipd(procs, setup.fake, conf, setup.sipd_port, results / "sipd.log", mount)
    if options_probe(setup.sipd_port, 60.0) is None:
        raise RuntimeError(f"sipd did not answer OPTIONS; see {results / 'sipd.log'}")
    wait_until_checked(sipd)
    if args.warm and args.calls:
        # The same calls once first (sipp takes the callers in order each
        # run), so the sample sees callers who called lately: accounts and
        # settings cached, as for a phone's second call.
        log(f"warming: the same {args.rate * args.seconds:.0f} calls once")
        setup.h.bench("warm_call", setup.sipd_port, sipd.pid, "call", args.rate, args.seconds,
                      ["--auth"])
    elif args.warm:
        # Every user registers twice first, so the sample sees known users only
        # (accounts cached), as a registrar does between two restarts, and
        # writes over each user's spare (the first write makes ~/.sr/usrloc,
        # the second its spare): a new inode per write was most of the
        # writing thread's system time, and a phone's usrloc has a spare
        # from its second registration on.
        users = len(read_users(setup.data / "users.csv"))
        log(f"warming: {users} users register twice at {WARM_RATE}/s")
        for n in (1, 2):
            setup.h.bench(f"warm_reg_{n}", setup.sipd_port, sipd.pid, "reg", WARM_RATE,
                          users / WARM_RATE + 1)
    log(f"sipd pid {sipd.pid}; {what} at {args.rate:g}/s for {args.seconds:g} s, "
        f"py-spy at {RATE} Hz")
    stacks = results / "stacks.txt"
    before = counters(metrics_port)
    cpu0 = time.monotonic(), cpu_seconds(sipd.pid)
    spy_proc = None if args.no_sampler else procs.spawn(
        [spy, "record", "--pid", str(sipd.pid), "--rate", str(RATE),
         "--duration", str(int(args.seconds)), "--format", "raw",
         "--full-filenames", "--threads", "--gil",
         "--native" if args.native else "--nonblocking",
         "-o", str(stacks)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    perf_data = results / "perf.data"
    perf_proc = None
    if args.perf:
        # Every CPU, the daemon's samples picked out afterwards: with -p, the
        # threads the daemon starts during the load (its workers, when the
        # users are not warm) went unrecorded.
        perf_proc = procs.spawn(["perf", "record", "-a", "-F", str(PERF_RATE), "--call-graph",
                                 "dwarf,16384", "-o", str(perf_data),
                                 "--", "sleep", str(int(args.seconds))],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if args.calls:
        summary = setup.h.bench("profile_call", setup.sipd_port, sipd.pid, "call", args.rate,
                                args.seconds, ["--auth"])
    else:
        summary = setup.h.bench("profile_reg", setup.sipd_port, sipd.pid, "reg", args.rate,
                                args.seconds)
    if spy_proc is not None:
        spy_proc.wait(timeout=args.seconds + 60)
    if perf_proc is not None:
        perf_proc.wait(timeout=args.seconds + 120)
    wall = time.monotonic() - cpu0[0]
    user1, system1 = cpu_seconds(sipd.pid)
    user, system = user1 - cpu0[1][0], system1 - cpu0[1][1]
    after = counters(metrics_port)
    steps = (summary or {}).get("steps") or [{}]
    ok = int(steps[0].get("successful") or 0)
    if ok == 0 or (spy_proc is not None and not stacks.exists()):
        raise RuntimeError(f"no profile or no registration; see {results}")
    # sipp's time from the first request to the 200 (both legs, or the
    # INVITE's), with the sampler's own load on the machine unless --no-sampler.
    latency = (steps[0].get("latency_ms") or {}).get("rtd1") or {}
    parts, total, workers = (breakdown(stacks) if spy_proc is not None
                             else (Counter[str](), 0, 0))
    per_reg = 1000 * (user + system) / ok
    # With --native, py-spy stops the daemon for each sample and keeps
    # nowhere near RATE a second (about 30 Hz here), and it counts only
    # the samples it kept: the shares hold, the milliseconds cannot be had.
    gil_ms = None if args.native or spy_proc is None else 1000 * total / RATE / ok
    unit = "call" if args.calls else "REGISTER"
    held = ("not sampled" if spy_proc is None
            else "shares only with --native" if gil_ms is None
            else f"{gil_ms:.3f} ms per {unit}")
    log(f"\n{ok} {'calls' if args.calls else 'registrations'} answered 200 in {wall:.1f} s; "
        f"sipd's CPU per {what} "
        f"({'INVITE, 407, ACK, INVITE, 180, 200, ACK, BYE, 200' if args.calls else 'both legs'}): "
        f"{per_reg:.3f} ms, of which {1000 * user / ok:.3f} ms user and "
        f"{1000 * system / ok:.3f} ms system (syscalls: sockets, file writes, fsync, thread "
        f"wake-ups); Python held the GIL {held} "
        f"({total} samples, {100 * workers / max(total, 1):.1f} % of them in worker threads)")
    log(f"sipp's time to the 200: p50 {latency.get('p50')} p90 {latency.get('p90')} "
        f"p99 {latency.get('p99')} max {latency.get('max')} ms (n={latency.get('n')})")
    # Counted over the load and everything else in the window (a few OPTIONS).
    per_op = {name: (after[name] - before.get(name, 0.0)) / ok
              for name in COUNTERS if name in after}
    log(", ".join(f"{name.removeprefix('sipd_').removesuffix('_total')} {v:.2f}"
                  for name, v in per_op.items()) + f" per {unit}")
    groups_n, groups_s = (after.get(name, 0.0) - before.get(name, 0.0) for name in GROUPS)
    groups = ({"groups": int(groups_n), "mean_ms": round(1000 * groups_s / groups_n, 3),
               "commits_per_group": round(ok / groups_n, 2)} if groups_n else None)
    log("usrloc group commits: " + (
        "none" if groups is None else
        f"{groups['groups']}, {groups['mean_ms']:.2f} ms each from start to answers, "
        f"{groups['commits_per_group']:.1f} {unit}s per group") + "\n")
    log(f"{'part (time holding the GIL)':<36} {'share':>7} {'ms/' + unit:>12}")
    rows = []
    for name, n in parts.most_common():
        share = n / total
        ms = None if gil_ms is None else share * gil_ms
        rows.append({"part": name, "samples": n, "share": round(share, 4),
                     "ms_per_register": None if ms is None else round(ms, 4)})
        log(f"{name:<36} {100 * share:>6.1f}% {'-' if ms is None else f'{ms:.3f}':>12}")
    perf = (perf_report(perf_data, sipd.pid, results, per_reg, unit)
            if perf_proc is not None else None)
    (results / "profile.json").write_text(json.dumps(
        {"rate": args.rate, "seconds": args.seconds, "sync": args.sync, "registrations": ok,
         "user_s": round(user, 3), "system_s": round(system, 3),
         "ms_per_register": round(per_reg, 4), "gil_ms_per_register": None if gil_ms is None else round(gil_ms, 4),
         "samples": total, "latency_ms": latency,
         "worker_samples": workers, "per_operation": per_op, "groups": groups, "parts": rows,
         "perf": perf}, indent=1))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, default=200.0,
                    help="REGISTERs (or calls) per second")
    ap.add_argument("--calls", action="store_true",
                    help="profile authenticated call setups (call_bench.py's load) instead")
    ap.add_argument("--seconds", type=float, default=20.0, help="how long to load and sample")
    ap.add_argument("--warm", action="store_true",
                    help="let every user register twice before sampling (known users, usrloc "
                         "files with spares); "
                         "with --calls, make the same calls once first")
    ap.add_argument("--sync", choices=("write-through", "write-back"), default="write-through")
    ap.add_argument("--mount", action="store_true",
                    help="with the state filesystem mounted, as sipd runs by default "
                         "(the benchmarks run it without)")
    ap.add_argument("--config", action="append", default=[], metavar="LINE",
                    help="a line added to sipd's configuration (e.g. 'log_level = \"warning\"'), "
                         "to see what a setting costs; may be given again")
    ap.add_argument("--native", action="store_true",
                    help="py-spy also reads native frames, so the modules compiled with mypyc "
                         "count under their own parts (it then pauses the daemon at each sample; "
                         "shares only)")
    ap.add_argument("--perf", action="store_true",
                    help="also record with perf: system calls of every thread, and the "
                         "innermost compiled function of the event loop's thread")
    ap.add_argument("--no-sampler", action="store_true",
                    help="load only, without py-spy: the CPU per operation and sipp's latency "
                         "as the benchmark sees them")
    ap.add_argument("--out", help="results directory (default: a new one under the temp dir)")
    ap.add_argument("--scratch-parent", default=None,
                    help="where homes and usrloc files are made (default: the temp dir)")
    args = ap.parse_args()
    reason = prerequisites()
    if reason:
        log(f"profile_register: skipped: {reason}")
        return 0
    return guarded(run, args, "profile")


if __name__ == "__main__":
    sys.exit(main())
