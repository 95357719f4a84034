#!/usr/bin/env python3
"""sipd's memory per binding after a burst of REGISTERs with digest auth.

    .venv/bin/python bench/burst_memory.py [--sizes 10000,100000] [--devices 1,10]
        [--rate 200] [--settle-s 35] [--heap [trace|stats]] [--scratch-parent /dev/shm]

A power cut in an office or a network flap at an ITSP makes every phone
register again at once. This measures what such a burst leaves in the
daemon once it is over:

1. Provisioning as in registrar_bench.py: the shared harness's 10,100
   users as fake UNIX users (nss_wrapper), with homes and ``~/.sr/passwd``.
2. For each size (by default 10,000 bindings, one device per user, and
   100,000 bindings, ten devices for each of 10,000 users), a fresh sipd
   gets the fill: every device sends a REGISTER, is challenged (401),
   computes the digest and registers with credentials (200). Each device
   has a Call-ID of its own and a UDP socket of its own, whose address is
   its Contact (so no device looks NATed and none is probed). The load
   generator is in this script (sipp's fill registers one contact per
   user); it paces the first REGISTERs at ``--rate`` a second and
   retransmits as a UDP client does (Timer E: 0.5 s, doubling).
3. RSS and PSS of the daemon before the fill, right after it, and after
   ``--settle-s`` (the fill's server transactions live 32 s, Timer J):
   the growth per binding and the whole daemon per binding, and the
   daemon's own count of transactions alive.
4. Restart: SIGTERM, a new sipd on the same files, its "reloaded N
   registration(s) ... in X s" line, the time to its first answer to an
   OPTIONS, and its RSS with the reloaded bindings.

``--heap`` adds a measuring run per size: sipd started under tracemalloc
(``PYTHONTRACEMALLOC``) by a small wrapper (``_heap_dump.py``) that, on
SIGUSR2, writes the largest allocation sites and the counts of live
objects by type (what holds memory after the burst); ``--heap stats`` runs
it without tracemalloc, for pymalloc's arenas and glibc's free memory
(which tracemalloc's hooks distort). Its figures are a diagnosis, not the
measurement; ``--heap-when after`` dumps right after the fill instead of
after the settle.

A benchmark, not a test: it prints what it measured and exits 0 when
something it needs is missing (root, sipp's harness, libnss_wrapper).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import secrets
import selectors
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from registrar_bench import (  # noqa: E402
    REALM,
    SIPD,
    Fake,
    Processes,
    Sipd,
    free_port,
    guarded,
    log,
    memory_kb,
    options_probe,
    prepare,
    prerequisites,
    read_users,
    restart_sipd,
    start_sipd,
    stop_sipd,
    wait_until_checked,
)

TARGET_BYTES = 2048
HEAP_DUMP = Path(__file__).resolve().parent / "_heap_dump.py"


# ------------------------------------------------------------------ load generator


@dataclass
class Device:
    """One phone: a user, a UDP socket (its Contact) and its REGISTER dialog."""

    user: str
    password: str
    sock: socket.socket
    call_id: str
    cseq: int = 0
    stage: str = "idle"  # idle, challenged, done, failed
    last: bytes = b""
    sent_at: float = 0.0
    interval: float = 0.5
    tries: int = 0

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])


_PARAM = re.compile(r'(\w+)=("([^"]*)"|[^\s,]+)')


def _challenge(text: str) -> dict[str, str] | None:
    """The parameters of the first Digest WWW-Authenticate with MD5 (or none given)."""
    for line in text.split("\r\n"):
        name, _, value = line.partition(":")
        if name.strip().lower() != "www-authenticate":
            continue
        value = value.strip()
        if not value.lower().startswith("digest"):
            continue
        params = {m.group(1).lower(): (m.group(3) if m.group(3) is not None else m.group(2))
                  for m in _PARAM.finditer(value[6:])}
        if params.get("algorithm", "MD5").upper() == "MD5":
            return params
    return None


@dataclass
class Fill:
    """Register ``devices`` against ``port`` with digest auth, paced at ``rate``."""

    port: int
    devices: list[Device]
    rate: float
    expires: int = 3600
    sel: selectors.DefaultSelector = field(default_factory=selectors.DefaultSelector)
    by_call: dict[str, Device] = field(default_factory=dict)
    registered: int = 0
    failed: int = 0
    retransmissions: int = 0

    def message(self, d: Device, auth: str | None) -> bytes:
        d.cseq += 1
        uri = f"sip:127.0.0.1:{self.port}"
        lines = [
            f"REGISTER {uri} SIP/2.0",
            f"Via: SIP/2.0/UDP 127.0.0.1:{d.port};rport;branch=z9hG4bK{secrets.token_hex(8)}",
            "Max-Forwards: 70",
            f"From: <sip:{d.user}@{REALM}>;tag={secrets.token_hex(4)}",
            f"To: <sip:{d.user}@{REALM}>",
            f"Call-ID: {d.call_id}",
            f"CSeq: {d.cseq} REGISTER",
            f"Contact: <sip:{d.user}@127.0.0.1:{d.port};transport=udp>",
            f"Expires: {self.expires}",
            "User-Agent: Yealink SIP-T46S 66.86.0.15",
        ]
        if auth:
            lines.append(f"Authorization: {auth}")
        lines.append("Content-Length: 0")
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    def send(self, d: Device, data: bytes, now: float) -> None:
        d.last, d.sent_at, d.interval, d.tries = data, now, 0.5, 0
        try:
            d.sock.sendto(data, ("127.0.0.1", self.port))
        except OSError:
            pass

    def authorize(self, d: Device, chal: dict[str, str]) -> str:
        nonce, qop = chal.get("nonce", ""), chal.get("qop")
        uri = f"sip:127.0.0.1:{self.port}"
        ha1 = hashlib.md5(f"{d.user}:{chal.get('realm', REALM)}:{d.password}".encode()).hexdigest()
        ha2 = hashlib.md5(f"REGISTER:{uri}".encode()).hexdigest()
        parts = [f'username="{d.user}"', f'realm="{chal.get("realm", REALM)}"',
                 f'nonce="{nonce}"', f'uri="{uri}"', "algorithm=MD5"]
        if qop and "auth" in [q.strip() for q in qop.split(",")]:
            cnonce = secrets.token_hex(8)
            resp = hashlib.md5(f"{ha1}:{nonce}:00000001:{cnonce}:auth:{ha2}".encode()).hexdigest()
            parts += ["qop=auth", "nc=00000001", f'cnonce="{cnonce}"']
        else:
            resp = hashlib.md5(f"{ha1}:{nonce}:{ha2}".encode()).hexdigest()
        parts.append(f'response="{resp}"')
        if "opaque" in chal:
            parts.append(f'opaque="{chal["opaque"]}"')
        return "Digest " + ", ".join(parts)

    def on_datagram(self, sock: socket.socket, now: float) -> None:
        try:
            data, addr = sock.recvfrom(65535)
        except OSError:
            return
        text = data.decode(errors="replace")
        m = re.search(r"^Call-ID:\s*(\S+)", text, re.M | re.I)
        if not text.startswith("SIP/2.0 ") or m is None:
            # A request to the phone (an OPTIONS probe): answer 200.
            if text.startswith("OPTIONS "):
                self.answer_options(sock, text, addr)
            return
        d = self.by_call.get(m.group(1))
        if d is None or d.stage in ("done", "failed"):
            return
        cseq = re.search(r"^CSeq:\s*(\d+)", text, re.M | re.I)
        if cseq is None or int(cseq.group(1)) != d.cseq:
            return  # an answer to an earlier attempt
        status = int(text[8:11])
        if status < 200:
            return
        if status == 401 and d.stage == "idle":
            chal = _challenge(text)
            if chal is None:
                d.stage = "failed"
                self.failed += 1
                return
            d.stage = "challenged"
            self.send(d, self.message(d, self.authorize(d, chal)), now)
        elif status == 200 and d.stage == "challenged":
            d.stage = "done"
            self.registered += 1
        else:
            d.stage = "failed"
            self.failed += 1

    @staticmethod
    def answer_options(sock: socket.socket, text: str, addr: Any) -> None:
        head, _, _ = text.partition("\r\n\r\n")
        keep = [ln for ln in head.split("\r\n")[1:]
                if ln.split(":", 1)[0].strip().lower() in ("via", "from", "to", "call-id", "cseq")]
        resp = "SIP/2.0 200 OK\r\n" + "\r\n".join(keep) + "\r\nContent-Length: 0\r\n\r\n"
        try:
            sock.sendto(resp.encode(), addr)
        except OSError:
            pass

    def retransmit(self, now: float) -> None:
        for d in self.by_call.values():
            if d.stage in ("idle", "challenged") and d.last and now - d.sent_at >= d.interval:
                d.tries += 1
                if d.tries > 7:  # about Timer F (32 s)
                    d.stage = "failed"
                    self.failed += 1
                    continue
                d.sent_at, d.interval = now, min(d.interval * 2, 4.0)
                self.retransmissions += 1
                try:
                    d.sock.sendto(d.last, ("127.0.0.1", self.port))
                except OSError:
                    pass

    def run(self, tail_s: float = 40.0) -> float:
        """Send every first REGISTER on schedule; wait for the answers. Seconds taken."""
        socks = {id(d.sock): d.sock for d in self.devices}
        for s in socks.values():
            s.setblocking(False)
            self.sel.register(s, selectors.EVENT_READ)
        for d in self.devices:
            self.by_call[d.call_id] = d
        t0 = time.monotonic()
        last_check = t0
        i = 0
        n = len(self.devices)
        deadline: float | None = None
        while True:
            now = time.monotonic()
            while i < n and now >= t0 + i / self.rate:
                d = self.devices[i]
                self.send(d, self.message(d, None), now)
                i += 1
            if i >= n and deadline is None:
                deadline = now + tail_s
            if deadline is not None and (self.registered + self.failed >= n or now > deadline):
                break
            wait = max(0.0, min(0.05, (t0 + i / self.rate) - now)) if i < n else 0.05
            for key, _ in self.sel.select(wait):
                self.on_datagram(key.fileobj, time.monotonic())  # type: ignore[arg-type]
            if now - last_check > 0.25:
                self.retransmit(now)
                last_check = now
        for s in socks.values():
            self.sel.unregister(s)
        return time.monotonic() - t0


def make_devices(users: list[tuple[str, str]], count: int, per_user: int,
                 sockets: list[socket.socket]) -> list[Device]:
    """``count`` devices, ``per_user`` for each user, interleaved (device k of every
    user, then device k+1): the order a burst of a building's phones comes in."""
    out: list[Device] = []
    n_users = -(-count // per_user)
    if n_users > len(users):
        raise RuntimeError(f"{count} bindings at {per_user} a user need {n_users} users; "
                           f"the harness has {len(users)}")
    for k in range(per_user):
        for u in range(n_users):
            if len(out) >= count:
                break
            user, password = users[u]
            out.append(Device(user, password, sockets[k], f"{secrets.token_hex(12)}@bench"))
    return out


# ------------------------------------------------------------------ measuring


def status_counts(pid: int) -> dict[str, int]:
    """Threads and file descriptors of the daemon (a leak shows there too)."""
    try:
        threads = int(re.search(r"Threads:\s*(\d+)", Path(f"/proc/{pid}/status").read_text())
                      .group(1))  # type: ignore[union-attr]
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except (OSError, AttributeError):
        return {}
    return {"threads": threads, "fds": fds}


@dataclass
class SizeResult:
    bindings: int
    per_user: int
    rate: float
    before: tuple[int, int] = (0, 0)
    after: tuple[int, int] = (0, 0)
    settled: tuple[int, int] = (0, 0)
    fill_s: float = 0.0
    registered: int = 0
    failed: int = 0
    retransmissions: int = 0
    reloaded: int | None = None
    reload_s: float | None = None
    ready_s: float | None = None
    restarted: tuple[int, int] = (0, 0)
    settle_curve: list[tuple[float, int]] = field(default_factory=list)
    heap: dict[str, Any] = field(default_factory=dict)

    def held(self) -> int:
        return self.reloaded or self.registered

    def per(self, which: tuple[int, int], idx: int, whole: bool = False) -> float | None:
        n = self.held()
        if not n or not which[idx]:
            return None
        return (which[idx] - (0 if whole else self.before[idx])) * 1024 / n


def start_measured(procs: Processes, fake: Fake, conf: Path, port: int, log_path: Path,
                   heap: bool, trace: bool) -> Sipd:
    if not heap:
        return start_sipd(procs, fake, conf, port, log_path)
    # The same command line, through the wrapper that answers SIGUSR2 with a dump.
    cmd = [sys.executable, str(HEAP_DUMP), "--no-mount", "--no-pam", "-c", str(conf),
           "-l", f"udp:127.0.0.1:{port}", "-r", REALM, "--log-level", "info"]
    env = fake.env()
    if trace:
        env["PYTHONTRACEMALLOC"] = "1"
    with open(log_path, "ab") as logf:
        started = time.monotonic()
        p = procs.spawn(cmd, env=env, stdout=logf, stderr=logf)
    return Sipd(p, log_path, started)


def heap_dump(pid: int, out: Path) -> dict[str, Any]:
    out.unlink(missing_ok=True)
    os.kill(pid, signal.SIGUSR2)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if out.exists():
            try:
                data: dict[str, Any] = json.loads(out.read_text())
            except ValueError:
                pass
            else:
                out.unlink(missing_ok=True)  # the caller keeps it in the results
                return data
        time.sleep(0.5)
    return {}


def run_size(args: argparse.Namespace, results: Path, scratch: Path, procs: Processes,
             fake: Fake, users: list[tuple[str, str]], count: int, per_user: int,
             heap: bool) -> SizeResult:
    tag = f"{count}{'-heap' if heap else ''}"
    res = SizeResult(count, per_user, args.rate)
    # Fresh files: every size starts from empty usrloc files.
    for home in (scratch / "home").iterdir():
        for name in ("usrloc", "usrloc.tmp"):
            (home / ".sr" / name).unlink(missing_ok=True)
    conf = scratch / "sipd.conf"
    conf.write_text(f'wtmp = false\nmax_expires = 3600\nmax_contacts = {max(10, per_user)}\n'
                    f'sync = "{args.sync}"\n')
    ports: set[int] = set()
    port = free_port(ports)
    log_path = results / f"sipd-{tag}.log"
    sipd = start_measured(procs, fake, conf, port, log_path, heap, args.heap == "trace")
    if options_probe(port, 60.0) is None:
        raise RuntimeError(f"sipd did not answer OPTIONS; see {log_path}")
    wait_until_checked(sipd)
    time.sleep(1.0)
    res.before = memory_kb(sipd.pid)
    sockets = []
    for _ in range(per_user):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        s.bind(("127.0.0.1", 0))
        sockets.append(s)
    try:
        devices = make_devices(users, count, per_user, sockets)
        fill = Fill(port, devices, args.rate)
        log(f"\n== {count} bindings ({per_user} a user), fill at {args.rate:g}/s "
            f"(about {count / args.rate:.0f} s)")
        res.fill_s = fill.run()
    finally:
        for s in sockets:
            s.close()
    res.registered, res.failed, res.retransmissions = fill.registered, fill.failed, \
        fill.retransmissions
    res.after = memory_kb(sipd.pid)
    if heap and args.heap_when == "after":
        res.heap = heap_dump(sipd.pid, Path(f"/tmp/sipd-heap-{sipd.pid}.json"))
    log(f"  {res.registered} registered, {res.failed} failed, {res.retransmissions} "
        f"retransmissions in {res.fill_s:.0f} s; RSS/PSS kB {res.before[0]}/{res.before[1]} "
        f"before, {res.after[0]}/{res.after[1]} right after")
    t0 = time.monotonic()
    while time.monotonic() - t0 < args.settle_s:
        time.sleep(min(5.0, args.settle_s - (time.monotonic() - t0)))
        res.settle_curve.append((round(time.monotonic() - t0), memory_kb(sipd.pid)[0]))
    res.settled = memory_kb(sipd.pid)
    log(f"  after {args.settle_s:g} s: RSS/PSS kB {res.settled[0]}/{res.settled[1]}; "
        f"RSS every 5 s: {[kb for _, kb in res.settle_curve]}; {status_counts(sipd.pid)}")
    if heap:
        if args.heap_when == "settled":
            res.heap = heap_dump(sipd.pid, Path(f"/tmp/sipd-heap-{sipd.pid}.json"))
        (results / f"heap-{tag}.json").write_text(json.dumps(res.heap, indent=1))
        print_heap(res.heap, res.held())
        mark = Path(f"/tmp/sipd-trimmed-{sipd.pid}")
        mark.unlink(missing_ok=True)
        os.kill(sipd.pid, signal.SIGUSR1)
        deadline = time.monotonic() + 30
        while not mark.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        mark.unlink(missing_ok=True)
        trimmed = memory_kb(sipd.pid)
        log(f"  after malloc_trim(0): RSS/PSS kB {trimmed[0]}/{trimmed[1]} "
            f"({(trimmed[0] - res.before[0]) * 1024 / max(1, res.held()):.0f} B a binding "
            f"over the start)")
        stop_sipd(procs, sipd)
        return res
    sipd, restart = restart_sipd(procs, sipd, fake, conf, port, results / f"sipd-{tag}-2.log")
    res.reloaded, res.reload_s, res.ready_s = restart.reloaded, restart.reload_s, restart.ready_s
    time.sleep(1.0)
    res.restarted = memory_kb(sipd.pid)
    log(f"  restart: reloaded {res.reloaded} in {res.reload_s} s (the daemon's line); exec to "
        f"first OPTIONS 200 {res.ready_s and round(res.ready_s, 2)} s; passwords checked "
        f"{restart.checked_s and round(restart.checked_s, 2)} s after exec; RSS/PSS kB "
        f"{res.restarted[0]}/{res.restarted[1]}")
    stop_sipd(procs, sipd)
    return res


def print_heap(heap: dict[str, Any], bindings: int) -> None:
    if not heap:
        log("  no heap dump")
        return
    if "traced_kb" in heap:
        traced = heap["traced_kb"]
        log(f"  tracemalloc: {traced} kB traced ({traced * 1024 / max(1, bindings):.0f} B a "
            f"binding); largest sites, B a binding:")
    for size, count, site in heap.get("sites", [])[:15]:
        log(f"    {size / max(1, bindings):8.1f}  {count:8}  {site}")
    log("  live objects by type (count, top 15):")
    for name, count in heap.get("types", [])[:15]:
        log(f"    {count:9}  {name}")
    for k, v in [*heap.get("before_collect", {}).items(), *heap.get("extra", {}).items()]:
        log(f"    {k}: {v}")


def _f(v: float | None, fmt: str = "{:.0f}") -> str:
    return "-" if v is None else fmt.format(v)


def run(args: argparse.Namespace, results: Path, scratch: Path, procs: Processes) -> None:
    setup = prepare(results, scratch, procs)
    users = read_users(setup.data / "users.csv")
    sizes = [int(s) for s in args.sizes.split(",")]
    per = [int(p) for p in args.devices.split(",")]
    per += [per[-1]] * (len(sizes) - len(per))
    out: list[SizeResult] = []
    for count, per_user in zip(sizes, per, strict=False):
        if not args.heap_only:
            out.append(run_size(args, results, scratch, procs, setup.fake, users, count,
                                per_user, heap=False))
        if args.heap:
            run_size(args, results, scratch, procs, setup.fake, users, count, per_user,
                     heap=True)
    (results / "results.json").write_text(json.dumps([vars(r) for r in out], indent=1,
                                                     default=str))
    log("\n" + "=" * 100)
    log(f"sipd memory per binding after a fill of REGISTER+auth at {args.rate:g}/s "
        f"(sync = {args.sync}), bytes; target <= {TARGET_BYTES} B at 100k")
    hdr = (f"{'bindings':>9} {'dev/user':>8} {'RSS grow':>9} {'PSS grow':>9} {'RSS after':>10} "
           f"{'RSS whole':>10} {'restart RSS':>12} {'reload s':>9} {'ready s':>8} {'<=2KiB':>9}")
    log("           growth and whole daemon, per binding, after the settle "
        f"({args.settle_s:g} s)")
    log(hdr)
    def verdict(v: float | None) -> str:
        return "-" if v is None else ("yes" if v <= TARGET_BYTES else "NO")

    for r in out:
        grow, whole = r.per(r.settled, 0), r.per(r.settled, 0, whole=True)
        log(f"{r.held():>9} {r.per_user:>8} {_f(grow):>9} "
            f"{_f(r.per(r.settled, 1)):>9} {_f(r.per(r.after, 0)):>10} {_f(whole):>10} "
            f"{_f(r.per(r.restarted, 0, whole=True)):>12} {_f(r.reload_s, '{:.2f}'):>9} "
            f"{_f(r.ready_s, '{:.2f}'):>8} {verdict(grow) + '/' + verdict(whole):>9}")
    log("RSS grow / PSS grow: (settled - before fill) / bindings; RSS after: the same right "
        "after the fill; RSS whole: the whole daemon / bindings; restart RSS: the whole daemon "
        "after a restart on the same files / bindings; <=2KiB: RSS grow / RSS whole.")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10000,100000", help="binding counts (comma separated)")
    ap.add_argument("--devices", default="1,10",
                    help="devices (bindings) per user for each size (comma separated)")
    ap.add_argument("--rate", type=float, default=200.0, help="new registrations a second")
    ap.add_argument("--settle-s", type=float, default=35.0,
                    help="wait after the fill (UDP server transactions live 32 s)")
    ap.add_argument("--sync", choices=("write-through", "write-back"), default="write-through")
    ap.add_argument("--heap", nargs="?", const="trace", choices=("trace", "stats"),
                    help="also a measuring run with a heap breakdown: under tracemalloc "
                         "(trace: allocation sites), or without it (stats: the allocators' "
                         "own figures, which tracemalloc hides)")
    ap.add_argument("--heap-only", action="store_true",
                    help="only the measuring run of --heap, not the plain one")
    ap.add_argument("--heap-when", choices=("after", "settled"), default="settled",
                    help="when the measuring run's heap is dumped: right after the fill "
                         "(the transactions alive) or after the settle")
    ap.add_argument("--out", help="results directory (default: a new one under the temp dir)")
    ap.add_argument("--scratch-parent", default=None,
                    help="where the scratch directory (homes, usrloc files) is made")
    args = ap.parse_args()
    if args.heap_only and not args.heap:
        args.heap = "trace"
    reason = prerequisites()
    if reason:
        log(f"burst_memory: skipped: {reason}")
        return 0
    if not SIPD.exists():
        log(f"burst_memory: skipped: {SIPD} is missing")
        return 0
    return guarded(run, args, "burst")


if __name__ == "__main__":
    sys.exit(main())
