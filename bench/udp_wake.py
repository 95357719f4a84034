#!/usr/bin/env python3
"""CPU per datagram of a UDP receive loop: trio's wait_readable against a bare epoll.

A plain script, not a test: ``.venv/bin/python bench/udp_wake.py
[--datagrams 20000] [--rate 3000]``. A thread sends 600-byte datagrams
on 127.0.0.1 at a steady rate; the loop under test waits until its
socket is readable, reads what is queued and answers each with a small
datagram, as sipd's UDP task does (``sipd/io/transport.py``). Run once
under trio (``trio.lowlevel.wait_readable``, one wake-up of the task per
datagram at rates where none queue up) and once on a bare
``select.epoll``, each in a child process. The figure is the loop
thread's CPU (user and system, ``time.thread_time``) per datagram: what
trio's scheduling adds to each datagram sipd receives, a call being nine
of them.
"""

from __future__ import annotations

import argparse
import select
import socket
import subprocess
import sys
import threading
import time

PAYLOAD = b"x" * 600


def _sender(port: int, count: int, rate: float) -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    start = time.perf_counter()
    for i in range(count):
        wait = start + i / rate - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        s.sendto(PAYLOAD, ("127.0.0.1", port))
    s.close()


def _sockets() -> tuple[socket.socket, socket.socket, tuple[str, int], socket.socket]:
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.setblocking(False)
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx.setblocking(False)
    return rx, tx, sink.getsockname(), sink


def _drain(rx: socket.socket, tx: socket.socket, to: tuple[str, int]) -> int:
    got = 0
    while True:
        try:
            data, _ = rx.recvfrom(65536)
        except BlockingIOError:
            return got
        got += 1
        try:
            tx.sendto(data[:10], to)
        except BlockingIOError:
            pass  # the sink is full: UDP may drop, the cost was paid


def run_trio(count: int, rate: float) -> tuple[float, int]:
    import trio

    rx, tx, to, sink = _sockets()
    sender = threading.Thread(target=_sender, args=(rx.getsockname()[1], count, rate))

    async def loop() -> tuple[float, int]:
        got = wakes = 0
        cpu = time.thread_time()
        sender.start()
        while got < count:
            with trio.move_on_after(2):
                await trio.lowlevel.wait_readable(rx)
            wakes += 1
            before = got
            got += _drain(rx, tx, to)
            if got == before and not sender.is_alive():
                break  # lost datagrams: count what came
        return (time.thread_time() - cpu) / max(got, 1), wakes

    try:
        return trio.run(loop)
    finally:
        sender.join()
        for s in (rx, tx, sink):
            s.close()


def run_epoll(count: int, rate: float) -> tuple[float, int]:
    rx, tx, to, sink = _sockets()
    sender = threading.Thread(target=_sender, args=(rx.getsockname()[1], count, rate))
    ep = select.epoll()
    ep.register(rx.fileno(), select.EPOLLIN)
    got = wakes = 0
    cpu = time.thread_time()
    sender.start()
    try:
        while got < count:
            ep.poll(2)
            wakes += 1
            before = got
            got += _drain(rx, tx, to)
            if got == before and not sender.is_alive():
                break
        return (time.thread_time() - cpu) / max(got, 1), wakes
    finally:
        sender.join()
        ep.close()
        for s in (rx, tx, sink):
            s.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--datagrams", type=int, default=20000)
    ap.add_argument("--rate", type=float, default=3000.0, help="datagrams a second")
    ap.add_argument("--child", choices=("trio", "epoll"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        per, wakes = (run_trio if args.child == "trio" else run_epoll)(args.datagrams, args.rate)
        print(f"{per * 1e6:.1f} {wakes}")
        return
    print(f"{args.datagrams} datagrams at {args.rate:g}/s, CPU of the loop thread per datagram:")
    for kind in ("trio", "epoll"):
        out = subprocess.run([sys.executable, __file__, "--child", kind,
                              "--datagrams", str(args.datagrams), "--rate", str(args.rate)],
                             capture_output=True, text=True, check=True).stdout.split()
        print(f"  {kind:<6} {out[0]:>6} us  ({out[1]} wake-ups)")


if __name__ == "__main__":
    main()
