#!/usr/bin/env python3
"""The mounted state tree: cost of a read, and what a read storm does to SIP.

    .venv/bin/python bench/fuse_bench.py [--iterations 5000] [--rate 200] [--phase-s 10]
        [--storm-procs 3] [--profile DIR]

What it does, all on 127.0.0.1 and in throw-away directories:

1. A sipd with its tree mounted in a temporary directory, over fake UNIX
   users (nss_wrapper, as the tests make them: tests/unixusers.py,
   tests/sipclient.py). ``five`` gets 5 contacts and ``fifty`` 50, written
   with ``cat >> contacts`` as a shell user would.
2. Microseconds per open/read-to-EOF/close of each ``contacts`` file
   (what ``cat`` does), and of a file with the same bytes on a tmpfs
   mounted for the run: p50, p99 and mean over ``--iterations``.
   Target: under 1 ms per open/read/close, on average and at p99.
3. SIP latency: OPTIONS over UDP at a steady ``--rate``, send and receive
   time stamped in this process: ``--phase-s`` seconds with the tree idle
   and as many while ``--storm-procs`` processes open/read/close every
   user's contacts, ``status`` and ``metrics`` in a loop, alternating in
   ``--rounds`` steps so that other load on the machine hits both alike,
   after ``--warmup-s`` seconds of the same traffic (a UDP server
   transaction lives 32 s: the daemon's heap is steady by then).
   Target: p99 during the storm at most 1.5 times the p99 without it.
4. One table, with the target and PASS/MISS per figure.

``--profile DIR`` runs the daemon under cProfile and leaves the profile
(``sipd.prof``) in DIR. Everything it starts (sipd, storm processes) is
stopped and every mount and directory it made removed, on errors, Ctrl-C
and SIGTERM too. A benchmark, not a test: it exits 0 and says why when it
cannot run here (needs root, /dev/fuse, fusermount3 and libnss_wrapper),
and never fails because a target was missed.
"""

from __future__ import annotations

import argparse
import os
import re
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests import sipclient  # noqa: E402
from tests.sipclient import Daemon, mount_point, options, running_sipd  # noqa: E402
from tests.unixusers import FakeUnix, UserSpec, fake_unix, skip_reason  # noqa: E402

CLK = os.sysconf("SC_CLK_TCK")
READ_TARGET_US = 1000.0
STORM_RATIO_TARGET = 1.5
CONTACT_COUNTS = {"five": 5, "fifty": 50}
USERS = (*(UserSpec(name, groups=("sip",)) for name in CONTACT_COUNTS), UserSpec("idle", groups=("sip",)))

#: A storm process: open/read/close of every path in turn until the deadline;
#: prints how many files it read.
STORM = """
import os, sys, time
paths, end, n = sys.argv[2:], time.monotonic() + float(sys.argv[1]), 0
while time.monotonic() < end:
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        while os.read(fd, 65536):
            pass
        os.close(fd)
        n += 1
print(n)
"""


def log(*parts: object) -> None:
    print(*parts, flush=True)


class Interrupted(Exception):
    """SIGTERM or SIGHUP: unwind and clean up as for Ctrl-C."""


def _on_signal(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(signal.Signals(signum).name)


def prerequisites() -> str | None:
    reason = skip_reason()
    if reason:
        return reason
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing"
    if shutil.which("fusermount3") is None:
        return "fusermount3 not found (Debian package fuse3)"
    return None


# ------------------------------------------------------------------ figures


@dataclass
class Dist:
    n: int
    p50: float
    p99: float
    mean: float
    worst: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Dist:
        s = sorted(values)
        if not s:
            nan = float("nan")
            return cls(0, nan, nan, nan, nan)
        return cls(len(s), s[len(s) // 2], s[min(len(s) - 1, int(len(s) * 0.99))],
                   statistics.fmean(s), s[-1])


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of process ``pid`` (all its threads)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return float("nan")
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLK


def machine_cpu() -> tuple[float, float, float]:
    """(busy, steal, total) CPU seconds of the whole machine, from /proc/stat."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    idle = f[3] + f[4]
    return (sum(f) - idle - f[7]) / CLK, f[7] / CLK, sum(f) / CLK


def read_cost_us(path: Path, iterations: int) -> Dist:
    """Microseconds per open/read-to-EOF/close of ``path``, as cat does it."""
    p = str(path)
    for _ in range(min(200, iterations)):
        fd = os.open(p, os.O_RDONLY)
        while os.read(fd, 65536):
            pass
        os.close(fd)
    out = []
    clock = time.perf_counter_ns
    for _ in range(iterations):
        t0 = clock()
        fd = os.open(p, os.O_RDONLY)
        while os.read(fd, 65536):
            pass
        os.close(fd)
        out.append((clock() - t0) / 1000)
    return Dist.of(out)


def read_row(label: str, cost: Dist) -> tuple[str, str, str, str]:
    """A row of the table for one file's open/read/close cost, with its verdict."""
    verdict = "PASS" if max(cost.p99, cost.mean) < READ_TARGET_US else "MISS"
    return (label, f"p50 {cost.p50:.0f} / p99 {cost.p99:.0f} / mean {cost.mean:.0f} us",
            f"mean, p99 < {READ_TARGET_US:.0f} us", verdict)


@dataclass
class Latency:
    sent: int
    answered: int
    ms: Dist
    samples: list[float]

    @classmethod
    def pooled(cls, parts: Sequence[Latency]) -> Latency:
        samples = [x for p in parts for x in p.samples]
        return cls(sum(p.sent for p in parts), sum(p.answered for p in parts), Dist.of(samples),
                   samples)


def sip_latency(port: int, rate: float, seconds: float) -> Latency:
    """OPTIONS at a steady ``rate``; milliseconds from sendto() to the answer."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    sock.setblocking(False)
    lport = sock.getsockname()[1]
    cseq_re = re.compile(rb"\r\n(?:CSeq|cseq|CSEQ):\s*(\d+)", re.IGNORECASE)
    count = int(rate * seconds)
    sent_at: dict[int, float] = {}
    rtts: list[float] = []
    clock = time.perf_counter
    start = clock() + 0.05
    n = 0
    # Answers still arriving up to 2 s after the last request count.
    end = start + seconds + 2.0
    try:
        while True:
            now = clock()
            if n < count and now >= start + n / rate:
                n += 1
                msg = options("sip:127.0.0.1", via_port=lport, cseq=n)
                sent_at[n] = clock()
                sock.sendto(msg, ("127.0.0.1", port))
                continue
            if len(rtts) >= count or now >= end:
                break
            wait = (start + n / rate - now) if n < count else end - now
            ready, _, _ = select.select([sock], [], [], max(0.0, wait))
            if not ready:
                continue
            t = clock()
            while True:
                try:
                    data = sock.recv(65536)
                except BlockingIOError:
                    break
                m = cseq_re.search(data)
                if m is None or not data.startswith(b"SIP/2.0 2"):
                    continue
                t0 = sent_at.pop(int(m.group(1)), None)
                if t0 is not None:
                    rtts.append((t - t0) * 1000)
    finally:
        sock.close()
    return Latency(n, len(rtts), Dist.of(rtts), rtts)


# ------------------------------------------------------------------ set-up


@contextmanager
def tmpfs_dir() -> Iterator[Path]:
    """A tmpfs mounted in a temporary directory (or /dev/shm if mounting fails)."""
    base = Path(tempfile.mkdtemp(prefix="srfs-bench-tmpfs-"))
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0755", "srfs-bench", str(base)],
                             capture_output=True).returncode == 0
    try:
        if mounted:
            yield base
        else:
            with tempfile.TemporaryDirectory(prefix="srfs-bench-", dir="/dev/shm") as shm:
                yield Path(shm)
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(base)], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


def contact_lines(user: str, count: int) -> str:
    """``count`` realistic registrations, as the tree shows phones."""
    lines = []
    for i in range(count):
        host = f"192.0.2.{i % 250 + 1}"
        lines.append(
            f"sip:{user}@{host}:{5060 + i};transport=udp expires=3600 q=1.0 "
            f'ua="Yealink SIP-T46U 108.86.0.{i}" callid={i:08x}a84b4c76e66710 cseq={100 + i}'
        )
    return "\n".join(lines) + "\n"


def wait_for(path: Path, daemon: Daemon, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            if path.exists():
                return
        except OSError:
            pass
        if time.monotonic() > deadline or not daemon.alive():
            raise RuntimeError(f"{path} did not appear: {daemon.log[-800:]}")
        time.sleep(0.05)


@contextmanager
def storm(paths: Sequence[Path], procs: int, seconds: float,
          nice: int = 0) -> Iterator[list[subprocess.Popen[str]]]:
    """``procs`` processes reading ``paths`` in a loop for ``seconds``; killed on exit."""
    cmd = [sys.executable, "-c", STORM, str(seconds), *map(str, paths)]
    if nice:
        cmd = ["nice", "-n", str(nice), *cmd]
    started = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, start_new_session=True)
               for _ in range(procs)]
    try:
        yield started
    finally:
        for p in started:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
            p.communicate()


# ------------------------------------------------------------------ run


def measure(args: argparse.Namespace, unix: FakeUnix, stack: ExitStack) -> list[tuple[str, str, str, str]]:
    scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="srfs-bench-")))
    mnt = stack.enter_context(mount_point("srfs-bench-mnt-"))
    conf = scratch / "fs.toml"
    conf.write_text(f'mount_enabled = true\nmount = "{mnt}"\nmax_contacts = 64\n')
    if args.profile:
        prof = Path(args.profile).resolve()
        prof.mkdir(parents=True, exist_ok=True)
        sipclient.SIPD = [sys.executable, "-m", "cProfile", "-o", str(prof / "sipd.prof"),
                          "-m", "sipd.cli"]
    # The build bench/run.py chose (make compiled's wheel) comes first on
    # PYTHONPATH, as for the other benchmarks. The fake users' environment
    # names only the checkout, and ``-m`` run from the checkout would put
    # it first on sys.path: -P leaves the working directory out.
    site = os.environ.get("PYTHONPATH", "")
    program = [sys.executable, "-P", "-m", "sipd.cli"] if site and not args.profile else []
    daemon = stack.enter_context(running_sipd(
        scratch, "-c", str(conf), unix=unix, mount=True, program=program,
        extra_env={"PYTHONPATH": os.pathsep.join(p for p in (site, str(ROOT)) if p)}))
    for name in CONTACT_COUNTS:
        wait_for(mnt / name, daemon)
    if args.sipd_nice:
        # Every thread of the daemon: a unit file's Nice= does the same.
        for tid in os.listdir(f"/proc/{daemon.proc.pid}/task"):
            os.setpriority(os.PRIO_PROCESS, int(tid), args.sipd_nice)

    rows: list[tuple[str, str, str, str]] = []
    shm = stack.enter_context(tmpfs_dir())
    deadline = time.monotonic() + 10
    while (build := re.search(r"sipd ready: .*build: (.+)$", daemon.log, re.M)) is None:
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    log(f"sipd {daemon.proc.pid} ({build.group(1) if build else 'build unknown'}) on "
        f"127.0.0.1:{daemon.port}, tree at {mnt}, tmpfs at {shm}")
    for name, count in CONTACT_COUNTS.items():
        contacts = mnt / name / "contacts"
        r = subprocess.run(["bash", "-c", f"cat >> {contacts}"], input=contact_lines(name, count),
                           capture_output=True, text=True, timeout=30)
        if r.returncode != 0:
            raise RuntimeError(f"writing {contacts}: {r.stderr.strip()}")
        data = contacts.read_bytes()
        got = data.count(b"\n")
        if got != count:
            raise RuntimeError(f"{contacts} lists {got} contacts, not {count}")
        copy = shm / f"{name}-contacts"
        copy.write_bytes(data)
        fuse = read_cost_us(contacts, args.iterations)
        plain = read_cost_us(copy, args.iterations)
        log(f"{count:3} contacts ({len(data)} bytes): srfs p50 {fuse.p50:7.1f} p99 {fuse.p99:7.1f} "
            f"mean {fuse.mean:7.1f} max {fuse.worst:8.1f} us; tmpfs p50 {plain.p50:5.1f} "
            f"p99 {plain.p99:5.1f} mean {plain.mean:5.1f} us ({fuse.n} iterations each)")
        rows.append(read_row(f"open/read/close, {count} contacts, srfs", fuse))
        rows.append((f"  same {len(data)} bytes on tmpfs",
                     f"p50 {plain.p50:.1f} / p99 {plain.p99:.1f} / mean {plain.mean:.1f} us",
                     "(reference)", ""))
    # The figures' files are rendered from every counter the daemon keeps
    # at each open: the costliest reads of the tree, and half the storm's.
    for name in ("status", "metrics"):
        path = mnt / name
        size = len(path.read_bytes())
        fuse = read_cost_us(path, args.iterations)
        log(f"{name} ({size} bytes): srfs p50 {fuse.p50:7.1f} p99 {fuse.p99:7.1f} "
            f"mean {fuse.mean:7.1f} max {fuse.worst:8.1f} us ({fuse.n} iterations)")
        rows.append(read_row(f"open/read/close, {name} ({size} bytes)", fuse))

    # SIP latency, tree idle and during a read storm, in alternating steps
    # so that a burst of other load on the machine hits both alike.
    paths = [mnt / "status", mnt / "metrics"] + [mnt / u.name / "contacts" for u in unix.users.values()]
    step_s = args.phase_s / args.rounds
    # Phases: tree idle, read storm, and (a diagnosis, no target) the same
    # storm at a low priority, which takes the readers' own CPU use out of
    # the competition for the machine's cores.
    phases = [("idle", None), ("storm", 0)] + ([("niced", args.diagnose_nice)]
                                               if args.diagnose_nice else [])
    lat: dict[str, list[Latency]] = {name: [] for name, _ in phases}
    cpu: dict[str, float] = dict.fromkeys(lat, 0.0)
    wall: dict[str, float] = dict.fromkeys(lat, 0.0)
    machine: dict[str, list[float]] = {name: [0.0, 0.0, 0.0] for name in lat}
    reads: dict[str, int] = dict.fromkeys(lat, 0)
    storm_s = 0.0
    log(f"SIP: OPTIONS at {args.rate:.0f}/s, {args.rounds} x {step_s:.0f} s per phase: tree idle, "
        f"read storm ({args.storm_procs} processes over {len(paths)} files)"
        + (f", the storm at nice {args.diagnose_nice}" if args.diagnose_nice else ""))
    pid = daemon.proc.pid
    if args.warmup_s > 0:
        # A UDP server transaction lives 32 s (Timer J): until then every
        # phase would find more of them alive (and a longer GC pass) than
        # the one before it.
        log(f"  warm-up: {args.warmup_s:.0f} s of OPTIONS at {args.rate:.0f}/s")
        sip_latency(daemon.port, args.rate, args.warmup_s)
    for _ in range(args.rounds):
        for name, nice in phases:
            with ExitStack() as phase:
                storms = (phase.enter_context(storm(paths, args.storm_procs, step_s + 1.0, nice))
                          if nice is not None else [])
                if storms:
                    time.sleep(0.3)
                c0, w0, m0 = cpu_seconds(pid), time.monotonic(), machine_cpu()
                lat[name].append(sip_latency(daemon.port, args.rate, step_s))
                cpu[name] += cpu_seconds(pid) - c0
                wall[name] += time.monotonic() - w0
                for i, (a, b) in enumerate(zip(machine_cpu(), m0, strict=True)):
                    machine[name][i] += a - b
                for p in storms:
                    out, _ = p.communicate(timeout=step_s + 30)
                    reads[name] += int(out.strip() or 0)
            if name == "storm":
                storm_s += step_s + 1.0
            time.sleep(0.5)
    if not daemon.alive():
        raise RuntimeError(f"sipd died: {daemon.log[-800:]}")
    pooled = {name: Latency.pooled(parts) for name, parts in lat.items()}
    for name, got in pooled.items():
        busy = 100 * cpu[name] / wall[name]
        m_busy, m_steal, m_total = machine[name]
        log(f"  {name:5} answered {got.answered}/{got.sent}: p50 {got.ms.p50:.2f} p99 {got.ms.p99:.2f} "
            f"mean {got.ms.mean:.2f} max {got.ms.worst:.2f} ms; sipd CPU ~{busy:.0f} %, machine "
            f"{100 * m_busy / m_total:.0f} % busy, {100 * m_steal / m_total:.0f} % stolen"
            + (f"; {reads[name]} files read" if name != "idle" else ""))
    base, loaded = pooled["idle"], pooled["storm"]

    reads_per_s = reads["storm"] / storm_s
    ratio = loaded.ms.p99 / base.ms.p99 if base.ms.p99 > 0 else float("nan")
    lost = (base.sent - base.answered) + (loaded.sent - loaded.answered)
    rows.append(("SIP OPTIONS, tree idle", f"p50 {base.ms.p50:.2f} / p99 {base.ms.p99:.2f} ms",
                 "(reference)", ""))
    rows.append((f"SIP OPTIONS, read storm ({reads_per_s:.0f} files/s)",
                 f"p50 {loaded.ms.p50:.2f} / p99 {loaded.ms.p99:.2f} ms", "", ""))
    rows.append(("  p99 storm / p99 idle", f"{ratio:.2f}x", f"<= {STORM_RATIO_TARGET}x",
                 "PASS" if ratio <= STORM_RATIO_TARGET and lost == 0 else "MISS"))
    if lost:
        rows.append(("  requests unanswered", str(lost), "0", "MISS"))
    if "niced" in pooled:
        niced = pooled["niced"]
        rows.append((f"  diagnosis: storm at nice {args.diagnose_nice}",
                     f"p50 {niced.ms.p50:.2f} / p99 {niced.ms.p99:.2f} ms = "
                     f"{niced.ms.p99 / base.ms.p99:.2f}x idle", "(no target)", ""))
    return rows


def table(rows: Sequence[tuple[str, str, str, str]]) -> str:
    head = ("figure", "measured", "target", "")
    widths = [max(len(r[i]) for r in (head, *rows)) for i in range(4)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in (head, *rows)]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iterations", type=int, default=5000, help="open/read/close per file")
    ap.add_argument("--rate", type=float, default=200.0, help="OPTIONS per second")
    ap.add_argument("--phase-s", type=float, default=10.0,
                    help="seconds of SIP traffic with the tree idle, and as many during the storm")
    ap.add_argument("--rounds", type=int, default=2,
                    help="the SIP phases alternate in this many idle/storm steps")
    ap.add_argument("--warmup-s", type=float, default=35.0,
                    help="SIP traffic before the SIP phases, for a steady transaction table")
    ap.add_argument("--storm-procs", type=int, default=3, help="reading processes in the storm")
    ap.add_argument("--diagnose-nice", type=int, default=19, metavar="N",
                    help="also measure SIP during the storm run at nice N (0: do not)")
    ap.add_argument("--sipd-nice", type=int, default=0, metavar="N",
                    help="run sipd at nice N (negative: ahead of the readers)")
    ap.add_argument("--profile", metavar="DIR", help="run sipd under cProfile, profile in DIR")
    args = ap.parse_args()

    reason = prerequisites()
    if reason:
        log(f"fuse_bench: skipped: {reason}")
        return 0
    old = {s: signal.signal(s, _on_signal) for s in (signal.SIGTERM, signal.SIGHUP)}
    old[signal.SIGINT] = signal.signal(signal.SIGINT, signal.default_int_handler)
    status = 0
    rows: list[tuple[str, str, str, str]] = []
    stack = ExitStack()
    try:
        unix = stack.enter_context(fake_unix(USERS, pam_service=None))
        rows = measure(args, unix, stack)
    except (KeyboardInterrupt, Interrupted) as exc:
        log(f"\ninterrupted ({str(exc) or 'SIGINT'}): cleaning up")
        status = 130
    except Exception:  # noqa: BLE001 - a benchmark reports and cleans up
        traceback.print_exc()
        status = 1
    finally:
        # No second Ctrl-C may cut the clean-up short: sipd, mounts, homes.
        for s in old:
            signal.signal(s, signal.SIG_IGN)
        stack.close()
        for s, h in old.items():
            signal.signal(s, h)
    if rows:
        log(f"\nsrfs on {os.cpu_count()} CPU(s), load average {os.getloadavg()[0]:.2f}:")
        log(table(rows))
    if args.profile:
        log(f"profile: {Path(args.profile).resolve() / 'sipd.prof'}")
    return status


if __name__ == "__main__":
    sys.exit(main())
