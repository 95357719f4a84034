#!/usr/bin/env python3
"""REGISTER with digest auth: sipd next to the Kamailio anchor, in one run.

    .venv/bin/python bench/registrar_bench.py [--quick] [--rounds 2] [--step-s 8]
        [--reg-rate 400] [--max-start 400] [--sync write-through|write-back]

What it does, all on 127.0.0.1 and in throw-away directories:

1. Provisioning. The shared ``gen_users.py`` writes ``users.csv`` (10,100
   users) and Kamailio's db into a scratch directory. sipd's users are fake
   UNIX users (nss_wrapper, as in tests/unixusers.py): one passwd line each (uid from
   a free range at 200000 or above, primary group ``sip``), a 0700 home
   owned by the user and a ``~/.sr/passwd`` with the user's MD5 and SHA-256
   HA1 for the realm ``bench.test``.
2. Memory per binding: a fresh sipd and a fresh Kamailio (1 worker) each
   get the harness's ``fill`` (10,000 distinct registrations); RSS and PSS
   before, right after, and after the transactions have timed out (Timer J,
   32 s), plus Kamailio's shm figures (``kamcmd core.shmmem``). sipd's
   figure is divided by the bindings its restart reloads.
3. Restart: SIGTERM to that sipd, then a new one on the same files; the
   time from exec to the first 200 to an OPTIONS, and the daemon's own
   "reloaded N registration(s) of M SIP user(s) in X s" line. Then the
   idle CPU of both targets with their 10k bindings.
4. The shared ``compare.py`` (Kamailio first, the reference) in mode
   ``reg-max`` (max sustained rate, from ``--max-start``), then in mode
   ``reg`` at a fixed rate both sustain (``--reg-rate``, by default half of
   sipd's max): CPU ms per registration. ``--rounds`` rounds of
   ``--step-s`` s steps, against the restarted sipd (10k bindings loaded)
   and the filled Kamailio.
5. sipd's latency at half its own max sustained rate (the target:
   p99 under 10 ms), one bench.py ``reg`` step. sipp's RTT resolution is
   1-4 ms.
6. One summary table. The raw output (compare.py folders, bench.py
   summaries, sipd and Kamailio logs, results.json) stays in the results
   directory printed at the end; the scratch directory (homes, fake passwd,
   Kamailio's db) is removed.

Every process it starts runs in a process group of its own and is stopped
on exit, Ctrl-C, SIGTERM or error. Needs root (homes are chowned to the
fake uids), sipp and libnss_wrapper; without Kamailio it measures sipd
alone. A benchmark, not a test: it exits 0 when something it needs is
missing, and prints whatever it measured.
"""

from __future__ import annotations

import argparse
import csv
import ctypes.util
import grp
import hashlib
import json
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SIPD = ROOT / ".venv" / "bin" / "sipd"
ANCHOR = ROOT.parent / "shared" / "bench" / "kamailio"
REALM = "bench.test"
UID_BASE = 200000
FILL_USERS = 10000
P99_TARGET_MS = 10.0
AUTO_FALLBACK_RATE = 50.0


def log(*parts: object) -> None:
    print(*parts, flush=True)


# ------------------------------------------------------------------ processes


class Interrupted(Exception):
    """SIGTERM or SIGHUP: unwind and clean up as for Ctrl-C."""


def _on_signal(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(signal.Signals(signum).name)


def _processes() -> Iterator[tuple[int, list[str]]]:
    """Every process's pid and its /proc stat fields after the command name."""
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = Path(f"/proc/{d}/stat").read_text()
        except OSError:
            continue
        yield int(d), stat[stat.rindex(")") + 2 :].split()


def _pgrp_members(pgid: int) -> list[int]:
    return [pid for pid, fields in _processes() if int(fields[2]) == pgid]


class Processes:
    """Children in process groups of their own, all stopped by :meth:`close`."""

    def __init__(self) -> None:
        self.groups: list[int] = []

    def spawn(self, cmd: Sequence[str], **kw: Any) -> subprocess.Popen[bytes]:
        p = subprocess.Popen(list(cmd), start_new_session=True, stdin=subprocess.DEVNULL, **kw)
        self.groups.append(p.pid)
        return p

    def run(self, cmd: Sequence[str], timeout: float, **kw: Any) -> int:
        """Run to completion (bounded); on timeout or interruption stop its group."""
        p = self.spawn(cmd, **kw)
        try:
            return p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            log(f"  {Path(cmd[1] if len(cmd) > 1 else cmd[0]).name}: timed out after {timeout:.0f} s")
            self.stop_group(p.pid, signal.SIGINT)
            return -1
        except BaseException:
            self.stop_group(p.pid, signal.SIGINT)
            raise

    @staticmethod
    def stop_group(pgid: int, sig: int, grace: float = 10.0) -> None:
        """``sig`` to every process of the group, SIGKILL to what is left after ``grace``."""
        members = _pgrp_members(pgid)
        if not members:
            return
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and _pgrp_members(pgid):
            time.sleep(0.1)
        if _pgrp_members(pgid):
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def close(self) -> None:
        for pgid in reversed(self.groups):
            self.stop_group(pgid, signal.SIGTERM)
        # Reap what we spawned ourselves (zombies of direct children).
        try:
            while os.waitpid(-1, os.WNOHANG)[0] > 0:
                pass
        except ChildProcessError:
            pass


def free_port(taken: set[int]) -> int:
    """A port free for UDP (and TCP) on 127.0.0.1, not already handed out."""
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port in taken:
            continue
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
                t.bind(("127.0.0.1", port))
        except OSError:
            continue
        taken.add(port)
        return port
    raise RuntimeError("no free port")


def proc_tree(pid: int) -> list[int]:
    """``pid`` and its direct children (Kamailio's workers)."""
    out = [pid] if os.path.exists(f"/proc/{pid}") else []
    out.extend(child for child, fields in _processes() if int(fields[1]) == pid)
    return out


def memory_kb(pid: int) -> tuple[int, int]:
    """(RSS, PSS) in kB summed over ``pid`` and its direct children."""
    rss = pss = 0
    for p in proc_tree(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss += int(line.split()[1])
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    pss += int(line.split()[1])
        except OSError:
            pass
    return rss, pss


# ------------------------------------------------------------------ provisioning


@dataclass
class Fake:
    """The fake UNIX user database for sipd."""

    passwd: Path
    group: Path
    gid: int
    users: int

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(LD_PRELOAD="libnss_wrapper.so", NSS_WRAPPER_PASSWD=str(self.passwd),
                   NSS_WRAPPER_GROUP=str(self.group), LC_ALL="C.UTF-8")
        for name in ("PAM_WRAPPER", "NOTIFY_SOCKET"):
            env.pop(name, None)
        return env


def read_users(path: Path) -> list[tuple[str, str]]:
    with open(path, newline="") as f:
        return [(r[0].strip(), r[1].strip()) for r in csv.reader(f) if r and not r[0].startswith("#")]


def free_id_range(count: int) -> int:
    """A base id such that base-1 .. base+count-1 are neither host uids nor gids."""
    taken = {p.pw_uid for p in pwd.getpwall()} | {g.gr_gid for g in grp.getgrall()}
    base = UID_BASE
    while any(base - 1 <= t < base + count for t in taken):
        base += 100000
    return base


def provision_unix(users: list[tuple[str, str]], scratch: Path) -> Fake:
    """passwd/group files, homes and ~/.sr/passwd for every user (uid >= 200000)."""
    base = free_id_range(len(users))
    gid = base - 1
    homes = scratch / "home"
    homes.mkdir(mode=0o755)
    homes.chmod(0o755)
    root_home = homes / "root"
    root_home.mkdir(mode=0o700)
    lines = [f"root:*:0:0:root:{root_home}:/bin/sh"]
    for i, (user, password) in enumerate(users):
        uid = base + i
        home = homes / user
        os.mkdir(home, 0o700)
        sr = home / ".sr"
        os.mkdir(sr, 0o700)
        secret = f"{user}:{REALM}:{password}".encode()
        md5 = hashlib.md5(secret).hexdigest()
        sha = hashlib.sha256(secret).hexdigest()
        fd = os.open(sr / "passwd", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, f"{user}:{REALM}:{md5}:sha256={sha}\n".encode())
            os.fchown(fd, uid, gid)
            os.fchmod(fd, 0o600)
        finally:
            os.close(fd)
        os.chown(sr, uid, gid)
        os.chown(home, uid, gid)
        lines.append(f"{user}:*:{uid}:{gid}:{user}:{home}:/bin/sh")
    passwd = scratch / "passwd"
    group = scratch / "group"
    passwd.write_text("\n".join(lines) + "\n")
    # "sip" is every fake user's primary group: no 10,000-name member list.
    group.write_text(f"root:x:0:\nsip:x:{gid}:\n")
    passwd.chmod(0o644)
    group.chmod(0o644)
    return Fake(passwd, group, gid, len(users))


# ------------------------------------------------------------------ sipd


@dataclass
class Sipd:
    proc: subprocess.Popen[bytes]
    log_path: Path
    started: float

    @property
    def pid(self) -> int:
        return self.proc.pid


def start_sipd(procs: Processes, fake: Fake, conf: Path, port: int, log_path: Path,
               mount: Path | None = None) -> Sipd:
    """sipd on ``port``, without the state filesystem unless ``mount`` says where."""
    # Log level info, not -q: the reload line is an info message, and info
    # is what a production daemon runs at (one line per new binding, none
    # per refresh). A log_level in the configuration (make profile's
    # --config) is left to speak: the command line would override it.
    where = ["-m", str(mount)] if mount is not None else ["--no-mount"]
    configured = re.search(r"^\s*log_level\s*=", conf.read_text(), re.MULTILINE)
    level = [] if configured else ["--log-level", "info"]
    cmd = [str(SIPD), *where, "--no-pam", "-c", str(conf), "-l", f"udp:127.0.0.1:{port}",
           "-r", REALM, *level]
    with open(log_path, "ab") as logf:
        started = time.monotonic()
        p = procs.spawn(cmd, env=fake.env(), stdout=logf, stderr=logf)
    return Sipd(p, log_path, started)


def options_probe(port: int, deadline_s: float) -> float | None:
    """Seconds until sipd on ``port`` answers an OPTIONS with 200, polling every 20 ms."""
    t0 = time.monotonic()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        lport = s.getsockname()[1]
        s.settimeout(0.02)
        n = 0
        while time.monotonic() - t0 < deadline_s:
            n += 1
            msg = (f"OPTIONS sip:127.0.0.1:{port} SIP/2.0\r\n"
                   f"Via: SIP/2.0/UDP 127.0.0.1:{lport};branch=z9hG4bK{secrets.token_hex(8)}\r\n"
                   "Max-Forwards: 70\r\n"
                   f"From: <sip:probe@127.0.0.1>;tag={secrets.token_hex(4)}\r\n"
                   "To: <sip:127.0.0.1>\r\n"
                   f"Call-ID: {secrets.token_hex(10)}@127.0.0.1\r\n"
                   f"CSeq: {n} OPTIONS\r\n"
                   "Content-Length: 0\r\n\r\n")
            try:
                s.sendto(msg.encode(), ("127.0.0.1", port))
            except OSError:
                pass
            end = time.monotonic() + 0.02
            while time.monotonic() < end:
                try:
                    data = s.recv(65535)
                except (TimeoutError, OSError):
                    break
                if data.startswith(b"SIP/2.0 200"):
                    return time.monotonic() - t0
    return None


def stop_sipd(procs: Processes, sipd: Sipd, timeout: float = 120.0) -> float | None:
    """SIGTERM, wait for the exit (it writes what is not on disk); seconds taken."""
    if sipd.proc.poll() is not None:
        return None
    t0 = time.monotonic()
    sipd.proc.send_signal(signal.SIGTERM)
    try:
        sipd.proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        log(f"  sipd {sipd.pid} did not stop in {timeout:.0f} s: killing it")
        procs.stop_group(sipd.pid, signal.SIGKILL, grace=5)
        return None
    return time.monotonic() - t0


def log_problems(paths: Sequence[Path]) -> tuple[int, int, list[tuple[int, str]]]:
    """(errors, warnings, most frequent messages) in sipd's logs."""
    counts: dict[str, int] = {}
    errors = warnings = 0
    for path in paths:
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            m = re.search(r"(\S+): (ERROR|WARNING|CRITICAL): (.*)", line)
            if m is None:
                if "Traceback" in line:
                    counts["Traceback"] = counts.get("Traceback", 0) + 1
                continue
            if m.group(2) == "WARNING":
                warnings += 1
            else:
                errors += 1
            # Numbers, user names and addresses vary: group by the shape.
            shape = re.sub(r"\d+", "N", f"{m.group(1)}: {m.group(2)}: {m.group(3)}")[:160]
            counts[shape] = counts.get(shape, 0) + 1
    top = sorted(((n, s) for s, n in counts.items()), reverse=True)[:8]
    return errors, warnings, top


# ------------------------------------------------------------------ Kamailio


@dataclass
class Kamailio:
    pid: int
    port: int
    run_dir: Path
    pgid: int

    @property
    def ctl(self) -> str:
        return f"unix:{self.run_dir}/kam_anchor_{self.port}.ctl"


def start_kamailio(procs: Processes, data: Path, run_dir: Path, port: int,
                   results: Path, flags: Sequence[str] = ()) -> Kamailio | None:
    """The anchor with 1 worker; ``flags`` go to kam_start.sh (``-a``: INVITEs challenged)."""
    if shutil.which("kamailio") is None or not (ANCHOR / "kam_start.sh").exists():
        log("Kamailio or the shared anchor harness is missing: measuring sipd alone")
        return None
    env = {**os.environ, "BENCH_DATA": str(data), "RUN_DIR": str(run_dir)}
    with open(results / "kam_start.out", "wb") as out:
        p = procs.spawn(["sh", str(ANCHOR / "kam_start.sh"), *flags, "-d", str(data), "-r",
                         str(run_dir), "1", str(port)], env=env, stdout=out,
                        stderr=subprocess.STDOUT)
        rc = p.wait(timeout=60)
    pidfile = run_dir / f"kam_anchor_{port}.pid"
    if rc != 0 or not pidfile.exists():
        log(f"Kamailio did not start: {(results / 'kam_start.out').read_text()[-600:]}")
        return None
    return Kamailio(int(pidfile.read_text()), port, run_dir, p.pid)


def stop_kamailio(procs: Processes, kam: Kamailio, results: Path) -> None:
    subprocess.run(["sh", str(ANCHOR / "kam_stop.sh"), "-r", str(kam.run_dir), str(kam.port)],
                   capture_output=True, timeout=30, check=False)
    procs.stop_group(kam.pgid, signal.SIGKILL, grace=2)
    logf = kam.run_dir / f"kam_anchor_{kam.port}.log"
    if logf.exists():
        shutil.copy(logf, results / "kamailio.log")


def kam_shm(kam: Kamailio) -> dict[str, int]:
    """Kamailio's shm figures (bytes): used, real_used, ..."""
    if shutil.which("kamcmd") is None:
        return {}
    try:
        r = subprocess.run(["kamcmd", "-s", kam.ctl, "core.shmmem"], capture_output=True,
                           text=True, timeout=10, check=False)
    except subprocess.TimeoutExpired:
        return {}
    return {k: int(v) for k, v in re.findall(r"(\w+):\s*(\d+)", r.stdout)}


# ------------------------------------------------------------------ harness


@dataclass
class Harness:
    procs: Processes
    data: Path
    results: Path
    sipp_ports: tuple[int, int, int]

    def env(self) -> dict[str, str]:
        return {**os.environ, "BENCH_DATA": str(self.data)}

    def port_args(self) -> list[str]:
        reg, uac, uas = self.sipp_ports
        return ["--reg-port", str(reg), "--uac-port", str(uac), "--uas-port", str(uas)]

    def bench(self, name: str, target_port: int, pid: int, mode: str, rate: float,
              duration: float, extra: Sequence[str] = (),
              timeout: float | None = None) -> dict[str, Any] | None:
        """One bench.py run; its summary.json, or None."""
        out = self.results / name
        cmd = [sys.executable, str(ANCHOR / "bench.py"), f"127.0.0.1:{target_port}", mode,
               str(rate), str(duration), "--pid", str(pid), "--out", str(out),
               *self.port_args(), *extra]
        with open(self.results / f"{name}.out", "wb") as f:
            self.procs.run(cmd, timeout=timeout or duration * 3 + 120, env=self.env(), stdout=f,
                           stderr=subprocess.STDOUT)
        try:
            summary: dict[str, Any] = json.loads((out / "summary.json").read_text())
        except (OSError, ValueError):
            log(f"  bench.py {mode} wrote no summary; see {self.results / (name + '.out')}")
            return None
        return summary

    def compare(self, name: str, targets: Sequence[str], modes: str, start: float,
                step_s: float, rounds: int, extra: Sequence[str] = ()) -> list[dict[str, Any]]:
        """compare.py; ``start`` is the (start) rate of reg and call modes alike,
        ``extra`` goes to every bench.py run."""
        out = self.results / name
        cmd = [sys.executable, str(ANCHOR / "compare.py")]
        for t in targets:
            cmd += ["--target", t]
        cmd += ["--modes", modes, "--reg-start", str(start), "--call-start", str(start),
                "--step-s", str(step_s), "--rounds", str(rounds), "--out", str(out), "--",
                *self.port_args(), *extra]
        log("+ " + " ".join(cmd))
        with open(self.results / f"{name}.out", "wb") as f:
            self.procs.run(cmd, timeout=3600 * rounds, env=self.env(), stdout=f,
                           stderr=subprocess.STDOUT)
        text = (self.results / f"{name}.out").read_text(errors="replace")
        table = text[text.find("rate/s = max sustained"):] if "rate/s = max" in text else text[-3000:]
        log(table.rstrip())
        try:
            rows: list[dict[str, Any]] = json.loads((out / "compare.json").read_text())
        except (OSError, ValueError):
            return []
        return rows


# ------------------------------------------------------------------ measurements


@dataclass
class MemResult:
    name: str
    before: tuple[int, int]
    after: tuple[int, int] = (0, 0)
    settled: tuple[int, int] = (0, 0)
    registered: int = 0
    """Registrations the fill saw answered with 200."""
    bindings: int = 0
    """Bindings the target holds (sipd: its reload line; else ``registered``)."""
    shm_before: dict[str, int] = field(default_factory=dict)
    shm_after: dict[str, int] = field(default_factory=dict)

    def per_binding(self, which: str, index: int) -> float | None:
        """Bytes per binding: ``which`` is after/settled, index 0 RSS, 1 PSS."""
        if not self.bindings:
            return None
        value: tuple[int, int] = getattr(self, which)
        return (value[index] - self.before[index]) * 1024 / self.bindings

    def shm_per_binding(self, key: str) -> float | None:
        if not self.bindings or key not in self.shm_before or key not in self.shm_after:
            return None
        return (self.shm_after[key] - self.shm_before[key]) / self.bindings


def fill(h: Harness, res: MemResult, port: int, pid: int, rate: float) -> None:
    """Register the 10,000 fill users once; RSS/PSS right after."""
    seconds = FILL_USERS / rate
    summary = h.bench(f"fill_{res.name}", port, pid, "fill", rate, seconds,
                      ["--reg-users", str(FILL_USERS)], timeout=seconds * 3 + 120)
    step = summary["steps"][0] if summary and summary.get("steps") else {}
    res.registered = res.bindings = int(step.get("successful") or 0)
    res.after = memory_kb(pid)
    log(f"  {res.name}: fill at {rate:g}/s: {res.registered} registered, failed "
        f"{step.get('failed')}, retrans {step.get('retransmissions')}; RSS/PSS kB "
        f"{res.before[0]}/{res.before[1]} before, {res.after[0]}/{res.after[1]} right after")


def cpu_percent(pid: int, seconds: float) -> float:
    """CPU use of ``pid`` and its direct children over ``seconds``, in % of one core."""
    clk = os.sysconf("SC_CLK_TCK")

    def ticks() -> int:
        total = 0
        for p in proc_tree(pid):
            try:
                stat = Path(f"/proc/{p}/stat").read_text()
            except OSError:
                continue
            f = stat[stat.rindex(")") + 2 :].split()
            total += int(f[11]) + int(f[12])
        return total

    t0, c0 = time.monotonic(), ticks()
    time.sleep(seconds)
    return 100.0 * (ticks() - c0) / clk / (time.monotonic() - t0)


@dataclass
class Restart:
    stop_s: float | None = None
    ready_s: float | None = None
    reloaded: int | None = None
    users: int | None = None
    reload_s: float | None = None
    #: Exec to the password check's end (see wait_until_checked).
    checked_s: float | None = None


#: sipd's line once the last of its start's work, the members' password
#: check, which runs once it serves, is done.
_CHECKED_RE = re.compile(r"checked the passwords of \d+ SIP user\(s\)")


def wait_until_checked(sipd: Sipd, timeout: float = 120.0) -> float | None:
    """Seconds from sipd's exec to its password-check line, or None: what a
    benchmark measures after a start (CPU, memory) must not take in the
    start's own work."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _CHECKED_RE.search(sipd.log_path.read_text(errors="replace")):
            return time.monotonic() - sipd.started
        time.sleep(0.05)
    return None


#: sipd's line once it has read the usrloc files back at start.
_RELOADED_RE = re.compile(r"reloaded (\d+) registration\(s\) of (\d+) SIP user\(s\) in ([\d.]+) s")


def start_timed(procs: Processes, fake: Fake, conf: Path, port: int,
                log_path: Path) -> tuple[Sipd, Restart]:
    """Start sipd on the files there are, timed as a restart: exec to its
    first answer (``ready_s`` None if it never answered), its reload line,
    and the end of its password check."""
    r = Restart()
    sipd = start_sipd(procs, fake, conf, port, log_path)
    answered = options_probe(port, deadline_s=180.0)
    if answered is not None:
        r.ready_s = time.monotonic() - sipd.started
        r.checked_s = wait_until_checked(sipd)
    m = _RELOADED_RE.search(log_path.read_text(errors="replace"))
    if m:
        r.reloaded, r.users, r.reload_s = int(m.group(1)), int(m.group(2)), float(m.group(3))
    return sipd, r


def restart_sipd(procs: Processes, old: Sipd, fake: Fake, conf: Path, port: int,
                 log_path: Path) -> tuple[Sipd, Restart]:
    stop_s = stop_sipd(procs, old)
    sipd, r = start_timed(procs, fake, conf, port, log_path)
    r.stop_s = stop_s
    return sipd, r


# ------------------------------------------------------------------ report


def _rows(rows: list[dict[str, Any]], target: str, mode: str) -> list[dict[str, Any]]:
    return [r for r in rows if r["target"] == target and r["mode"] == mode]


def _mean(values: Sequence[float | None]) -> float | None:
    vs = [v for v in values if v is not None]
    return statistics.fmean(vs) if vs else None


def _f(v: float | None, fmt: str = "{:.0f}") -> str:
    return "-" if v is None else fmt.format(v)


def _ratio(a: float | None, b: float | None) -> str:
    return "-" if a is None or not b else f"{a / b:.2f}"


# ------------------------------------------------------------------ main


def prerequisites() -> str | None:
    if os.geteuid() != 0:
        return "needs root: the fake users' homes are chowned to their uids"
    if not SIPD.exists():
        return f"{SIPD} is missing (make setup)"
    if shutil.which("sipp") is None:
        return "sipp is missing (apt-get install sip-tester)"
    if ctypes.util.find_library("nss_wrapper") is None:
        return "libnss_wrapper.so is missing (apt-get install libnss-wrapper)"
    for name in ("bench.py", "compare.py", "gen_users.py", "reg_auth.xml"):
        if not (ANCHOR / name).exists():
            return f"the shared harness is missing: {ANCHOR / name}"
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 1 round, 3 s steps, short settling")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--step-s", type=float, default=8.0)
    ap.add_argument("--max-start", type=float, default=100.0,
                    help="first rate of mode reg-max, for both targets (x1.3 per step)")
    ap.add_argument("--reg-rate", type=float, default=0.0,
                    help="fixed rate of mode reg, for both targets (CPU ms per registration); "
                         "default: half of sipd's max sustained rate")
    ap.add_argument("--half-s", type=float, default=10.0,
                    help="duration of the half-max latency step")
    ap.add_argument("--fill-rate", type=float, default=200.0, help="sipd's fill rate")
    ap.add_argument("--kam-fill-rate", type=float, default=2000.0, help="Kamailio's fill rate")
    ap.add_argument("--settle-s", type=float, default=35.0,
                    help="wait after the fills before the settled memory reading "
                         "(UDP server transactions live 32 s)")
    ap.add_argument("--pause-s", type=float, default=20.0,
                    help="pause between phases, for the targets to drain")
    ap.add_argument("--idle-s", type=float, default=5.0,
                    help="how long idle CPU is sampled after the restart")
    ap.add_argument("--sync", choices=("write-through", "write-back"), default="write-through",
                    help="sipd's sync setting")
    ap.add_argument("--no-kamailio", action="store_true", help="measure sipd alone")
    ap.add_argument("--out", help="results directory (default: a new one under the temp dir)")
    ap.add_argument("--scratch-parent", default=None,
                    help="where the scratch directory (homes, usrloc files) is made; default "
                         "the temp dir. /dev/shm takes the disk (sipd's fsyncs) out of the figures")
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.step_s, args.half_s = 1, 3.0, 3.0
        args.pause_s = min(args.pause_s, 5.0)

    reason = prerequisites()
    if reason:
        log(f"registrar_bench: skipped: {reason}")
        return 0

    return guarded(run, args, "registrar")


def guarded(body: Callable[[argparse.Namespace, Path, Path, Processes], None],
            args: argparse.Namespace, name: str) -> int:
    """Run ``body(args, results, scratch, procs)``, then stop every process it
    started and remove the scratch directory, on return, error, Ctrl-C,
    SIGTERM or SIGHUP. ``args.out`` and ``args.scratch_parent`` choose the
    directories."""
    results = (Path(args.out) if args.out
               else Path(tempfile.mkdtemp(prefix=f"sipd-{name}-bench-")))
    results.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f"sipd-{name}-scratch-", dir=args.scratch_parent))
    procs = Processes()
    old_handlers = {s: signal.signal(s, _on_signal) for s in (signal.SIGTERM, signal.SIGHUP)}
    # Ctrl-C must interrupt even when started from a shell that ignores SIGINT.
    old_handlers[signal.SIGINT] = signal.signal(signal.SIGINT, signal.default_int_handler)
    status = 0
    try:
        body(args, results, scratch, procs)
    except (KeyboardInterrupt, Interrupted) as exc:
        log(f"\ninterrupted ({str(exc) or 'SIGINT'}): cleaning up")
        status = 130
    except Exception:  # noqa: BLE001 - a benchmark reports and cleans up
        traceback.print_exc()
        status = 1
    finally:
        for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(s, signal.SIG_IGN)
        try:
            procs.close()
            log(f"removing {scratch} (10k homes: can take a while on a busy disk)")
        except OSError:
            pass  # stdout gone (a closed pipe): still remove the scratch directory
        finally:
            _unmount_below(scratch)
            shutil.rmtree(scratch, ignore_errors=True)
        for s, h in old_handlers.items():
            signal.signal(s, h)
        log(f"raw output: {results}")
    return status


def _unmount_below(top: Path) -> None:
    """Detach what is still mounted below ``top`` (a state filesystem whose
    sipd was killed), so that removing ``top`` neither fails nor leaves it."""
    from srfs.fs.fuse import parse_mountinfo

    try:
        mounts = parse_mountinfo(Path("/proc/self/mountinfo").read_bytes())
    except OSError:
        return
    prefix = str(top.resolve()) + "/"
    for entry in mounts:
        if entry.mount_point.startswith(prefix):
            subprocess.run(["umount", "-l", entry.mount_point], check=False,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@dataclass
class Setup:
    """What every side-by-side bench starts from: ports, the harness, the users."""

    data: Path
    run_dir: Path
    sipd_port: int
    kam_port: int
    h: Harness
    fake: Fake


def prepare(results: Path, scratch: Path, procs: Processes) -> Setup:
    """Scratch layout, free ports, and the harness's users provisioned for both targets."""
    scratch.chmod(0o755)  # the fake users must reach their homes
    data = scratch / "data"
    run_dir = scratch / "run"
    run_dir.mkdir()
    ports: set[int] = set()
    sipd_port, kam_port = free_port(ports), free_port(ports)
    h = Harness(procs, data, results, (free_port(ports), free_port(ports), free_port(ports)))
    t0 = time.monotonic()
    rc = procs.run([sys.executable, str(ANCHOR / "gen_users.py"), "--out", str(data)],
                   timeout=120, env=h.env(), stdout=subprocess.DEVNULL)
    if rc != 0:
        raise RuntimeError("gen_users.py failed")
    users = read_users(data / "users.csv")
    t1 = time.monotonic()
    fake = provision_unix(users, scratch)
    log(f"provisioned {len(users)} users: gen_users.py {t1 - t0:.1f} s; fake UNIX users, "
        f"homes and ~/.sr/passwd {time.monotonic() - t1:.1f} s (uids from {fake.gid + 1})")
    return Setup(data, run_dir, sipd_port, kam_port, h, fake)


def run(args: argparse.Namespace, results: Path, scratch: Path, procs: Processes) -> None:
    # 1. provisioning
    setup = prepare(results, scratch, procs)
    data, run_dir, h, fake = setup.data, setup.run_dir, setup.h, setup.fake
    sipd_port, kam_port = setup.sipd_port, setup.kam_port
    conf = scratch / "sipd.conf"
    conf.write_text(f'wtmp = false\nmax_expires = 3600\nsync = "{args.sync}"\n')

    kam: Kamailio | None = None
    if not args.no_kamailio:
        kam = start_kamailio(procs, data, run_dir, kam_port, results)
    sipd = start_sipd(procs, fake, conf, sipd_port, results / "sipd-1.log")
    if options_probe(sipd_port, 60.0) is None:
        raise RuntimeError(f"sipd did not answer OPTIONS; see {results / 'sipd-1.log'}")
    wait_until_checked(sipd)
    log(f"sipd pid {sipd.pid} on udp:127.0.0.1:{sipd_port} (sync = {args.sync})"
        + (f"; kamailio pid {kam.pid} on udp:127.0.0.1:{kam_port}" if kam else ""))

    # 2. memory per binding (fresh processes)
    log(f"\n== memory per binding: {FILL_USERS} registrations each")
    time.sleep(1.0)
    mems = [MemResult("sipd", memory_kb(sipd.pid))]
    if kam:
        mems.append(MemResult("kamailio", memory_kb(kam.pid), shm_before=kam_shm(kam)))
    fill(h, mems[0], sipd_port, sipd.pid, args.fill_rate)
    if kam:
        fill(h, mems[1], kam_port, kam.pid, args.kam_fill_rate)
    log(f"  waiting {args.settle_s:g} s for the transactions to end (Timer J is 32 s)")
    time.sleep(args.settle_s)
    mems[0].settled = memory_kb(sipd.pid)
    if kam:
        mems[1].settled = memory_kb(kam.pid)
        mems[1].shm_after = kam_shm(kam)
    for m in mems:
        log(f"  {m.name}: RSS/PSS kB settled {m.settled[0]}/{m.settled[1]}")

    # 3. restart with 10k users' usrloc files
    log("\n== restart")
    sipd, restart = restart_sipd(procs, sipd, fake, conf, sipd_port, results / "sipd-2.log")
    log(f"  SIGTERM to exit {_f(restart.stop_s, '{:.2f}')} s; exec to first OPTIONS 200 "
        f"{_f(restart.ready_s, '{:.2f}')} s; log: 'reloaded {restart.reloaded} registration(s) "
        f"of {restart.users} SIP user(s) in {restart.reload_s} s'; passwords checked "
        f"{_f(restart.checked_s, '{:.2f}')} s after exec")
    if restart.ready_s is None:
        raise RuntimeError(f"restarted sipd never answered; see {results / 'sipd-2.log'}")
    if restart.reloaded is not None:
        # What sipd really held: a 200 that came after sipp gave up still counts.
        mems[0].bindings = restart.reloaded
    if restart.reloaded != FILL_USERS:
        log(f"  warning: reloaded {restart.reloaded} registrations, expected {FILL_USERS} "
            f"(the fill saw {mems[0].registered} answered)")
    idle = {"sipd": cpu_percent(sipd.pid, args.idle_s)}
    if kam:
        idle["kamailio"] = cpu_percent(kam.pid, args.idle_s)
    log("  idle CPU with the bindings loaded: "
        + ", ".join(f"{k} {v:.1f} %" for k, v in idle.items()))

    targets = [f"sipd=127.0.0.1:{sipd_port}:{sipd.pid}"]
    if kam:
        targets.insert(0, f"kam=127.0.0.1:{kam_port}:{kam.pid}")

    # 4. compare.py: max sustained rate, then a fixed rate both sustain
    log(f"\n== compare.py reg-max from {args.max_start:g}/s")
    maxed = h.compare("compare_reg_max", targets, "reg-max", args.max_start, args.step_s,
                      args.rounds)
    sipd_max = _mean([r["rate"] for r in _rows(maxed, "sipd", "reg-max")])
    reg_rate = args.reg_rate or (round(sipd_max / 2) if sipd_max else AUTO_FALLBACK_RATE)
    time.sleep(args.pause_s)
    log(f"\n== compare.py reg at {reg_rate:g}/s")
    fixed = h.compare("compare_reg", targets, "reg", reg_rate, args.step_s, args.rounds)

    # 5. sipd at half its max
    half: dict[str, Any] = {}
    if sipd_max:
        rate = round(sipd_max / 2)
        time.sleep(args.pause_s)
        log(f"\n== sipd at half its max sustained rate: {rate}/s for {args.half_s:g} s")
        summary = h.bench("half_max_sipd", sipd_port, sipd.pid, "reg", rate, args.half_s)
        if summary and summary.get("steps"):
            st = summary["steps"][0]
            lat = st.get("latency_ms", {}).get("rtd1") or {}
            half = {"rate": rate, "p50": lat.get("p50"), "p90": lat.get("p90"),
                    "p99": lat.get("p99"), "max": lat.get("max"), "n": lat.get("n"),
                    "pass": st.get("pass"), "why": st.get("why"),
                    "cpu_ms_op": st.get("target_cpu_ms_per_op")}
            log(f"  p50 {half['p50']} p90 {half['p90']} p99 {half['p99']} max {half['max']} ms "
                f"(n={half['n']}), cpu {half['cpu_ms_op']} ms/op, "
                f"{'PASS' if half['pass'] else 'FAIL: ' + str(half['why'])}")
    else:
        log("\n== sipd passed no reg-max step: no half-max latency step")

    final_stop = stop_sipd(procs, sipd)
    if kam:
        stop_kamailio(procs, kam, results)
    errors, warnings, top = log_problems([results / "sipd-1.log", results / "sipd-2.log"])

    # 6. summary
    report = {"args": vars(args), "results": str(results), "reg_rate": reg_rate,
              "memory": [vars(m) for m in mems], "restart": vars(restart), "idle_cpu_pct": idle,
              "fixed": fixed, "max": maxed, "half": half, "final_stop_s": final_stop,
              "sipd_log": {"errors": errors, "warnings": warnings, "top": top}}
    (results / "results.json").write_text(json.dumps(report, indent=1, default=str))
    print_summary(args, reg_rate, mems, restart, idle, fixed, maxed, half, kam is not None)
    log(f"\nsipd log: {errors} error(s), {warnings} warning(s)")
    for n, shape in top:
        log(f"  {n:6}x {shape}")


def print_summary(args: argparse.Namespace, reg_rate: float, mems: list[MemResult],
                  restart: Restart, idle: dict[str, float], fixed: list[dict[str, Any]],
                  maxed: list[dict[str, Any]], half: dict[str, Any], with_kam: bool) -> None:
    def per_round(rows: list[dict[str, Any]], key: str, fmt: str) -> str:
        return ", ".join(_f(r.get(key), fmt) for r in rows) or "-"

    s_max, k_max = _rows(maxed, "sipd", "reg-max"), _rows(maxed, "kam", "reg-max")
    s_fix, k_fix = _rows(fixed, "sipd", "reg"), _rows(fixed, "kam", "reg")
    sm, km = _mean([r["rate"] for r in s_max]), _mean([r["rate"] for r in k_max])
    sc, kc = _mean([r["cpu_ms_op"] for r in s_fix]), _mean([r["cpu_ms_op"] for r in k_fix])
    smem = mems[0]
    kmem = mems[1] if len(mems) > 1 else None
    w = 46

    def row(label: str, sv: str, kv: str = "", ratio: str = "", note: str = "") -> None:
        log(f"{label:{w}} {sv:>17} {kv:>17} {ratio:>9}{'  ' + note if note else ''}")

    log("\n" + "=" * 100)
    log(f"REGISTER with digest auth (401 + 200), one process / one worker each, UDP on "
        f"127.0.0.1; {args.rounds} round(s) of {args.step_s:g} s steps, sipd sync = {args.sync}")
    row("", "sipd", "kamailio", "sipd/kam")
    row("max sustained rate, reg/s (mean of rounds)", _f(sm), _f(km), _ratio(sm, km))
    row("  per round", per_round(s_max, "rate", "{:.0f}"), per_round(k_max, "rate", "{:.0f}"))
    row(f"CPU ms per registration at {reg_rate:g}/s", _f(sc, "{:.3f}"), _f(kc, "{:.3f}"),
        _ratio(sc, kc))
    row("  per round", per_round(s_fix, "cpu_ms_op", "{:.3f}"),
        per_round(k_fix, "cpu_ms_op", "{:.3f}"))
    row("  step passed", ", ".join("yes" if r.get("passed") else "NO" for r in s_fix) or "-",
        ", ".join("yes" if r.get("passed") else "NO" for r in k_fix) or "-")
    if half:
        p99 = half.get("p99")
        verdict = "-" if p99 is None else ("meets" if p99 < P99_TARGET_MS else "MISSES")
        row("sipd p50 / p99 at half its max, ms",
            f"{_f(half.get('p50'))} / {_f(p99)}", "", "",
            f"at {half['rate']}/s; {verdict} p99 < {P99_TARGET_MS:g} ms")
    else:
        row("sipd p50 / p99 at half its max, ms", "-")
    for label, which, idx in ((f"bytes/binding, PSS, {args.settle_s:g} s after", "settled", 1),
                              (f"bytes/binding, RSS, {args.settle_s:g} s after", "settled", 0),
                              ("bytes/binding, PSS, right after the fill", "after", 1)):
        sv = smem.per_binding(which, idx)
        kv = kmem.per_binding(which, idx) if kmem else None
        row(label, _f(sv), _f(kv), _ratio(sv, kv))
    row("  bindings counted", str(smem.bindings), str(kmem.bindings) if kmem else "")
    log(f"  (a Python heap keeps its high-water mark: sipd's figure includes the UDP "
        f"transactions alive during the fill, about {args.fill_rate:g}/s x 2 x 32 s)")
    if kmem:
        row("kamailio shm per binding, used / real_used", "",
            f"{_f(kmem.shm_per_binding('used'))} / {_f(kmem.shm_per_binding('real_used'))}")
    row("idle CPU with the bindings loaded, %", _f(idle.get("sipd"), "{:.1f}"),
        _f(idle.get("kamailio"), "{:.1f}"))
    row("restart: exec to first OPTIONS 200, s", _f(restart.ready_s, "{:.2f}"))
    row("  reload line: bindings / users / s",
        f"{restart.reloaded} / {restart.users} / {restart.reload_s}", "", "",
        "N == 10000: ok" if restart.reloaded == FILL_USERS else "N != 10000")
    if not with_kam:
        log("(no Kamailio in this run: no ratios)")
    log("Ratios come from one run on one machine; absolute figures move 10-40 % between runs.")


if __name__ == "__main__":
    sys.exit(main())
