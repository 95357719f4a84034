"""The unmount helper: the one process that keeps CAP_SYS_ADMIN after start-up.

Unmounting ``/run/sr`` needs CAP_SYS_ADMIN (libfuse calls ``umount2``
itself when it runs as root, and fusermount3 cannot get the capability
back once it is out of the bounding set). sipd gives that capability up
when it starts serving, so right after mounting it starts this helper,
which keeps CAP_SYS_ADMIN alone and does one thing: it waits for a line on
standard input, or for the end of it, and then unmounts the tree, if the
mount at that path is still the one sipd made (same device number).

- ``unmount`` from sipd at SIGTERM: unmount, answer one line, exit.
- End of input: sipd is gone (killed, crashed). Unmount all the same, so
  a dead ``/run/sr`` ("Transport endpoint is not connected") is never
  left behind for the next start or for users' shells.

sipd cannot make it do more: it holds fewer capabilities than the helper,
so it may not ptrace it or read its memory. The helper ignores SIGINT,
SIGTERM and SIGHUP (Ctrl-C and ``systemctl stop`` signal every process of
the group or unit) and leaves when sipd is done with it. It imports
nothing but the standard library and :mod:`sipd.io.capabilities`: the
less code runs with CAP_SYS_ADMIN, the better.

Run as ``python -m sipd.io.unmounter --device MAJOR:MINOR MOUNTPOINT``;
it prints ``ready`` once it holds only CAP_SYS_ADMIN.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import errno
import os
import re
import signal
import sys

from sipd.io.capabilities import UNMOUNT, CapabilityError, limit_this_thread

__all__ = ["detach", "main", "top_device"]

MNT_FORCE = 1
MNT_DETACH = 2
_OCTAL = re.compile(rb"\\([0-7]{3})")


def top_device(mountpoint: str, mountinfo: bytes) -> str | None:
    """The ``major:minor`` of the top mount at ``mountpoint``, or None.

    A few lines of proc(5)'s mountinfo format rather than srfs.fs.fuse's
    parser, which would bring pyfuse3 and trio into this process.
    """
    found = None
    for line in mountinfo.split(b"\n"):
        fields = line.split(b" ")
        if len(fields) < 5:
            continue
        where = _OCTAL.sub(lambda m: bytes([int(m[1], 8) & 0xFF]), fields[4])
        if os.fsdecode(where) == mountpoint:
            found = fields[2].decode("ascii", "replace")
    return found


def detach(mountpoint: str, device: str) -> str:
    """Unmount ``mountpoint`` if ``device`` is still mounted on top there; what happened.

    MNT_DETACH takes the mount away at once, open files or not; MNT_FORCE
    aborts the FUSE connection too. Without it, a file still open in the
    tree would keep the connection, and so sipd's FUSE loop, alive, and
    libfuse would then try (and, without the capability, fail) to unmount
    again; aborted, the loop ends and libfuse finds nothing left to do.
    """
    with open("/proc/self/mountinfo", "rb") as f:
        current = top_device(mountpoint, f.read())
    if current != device:
        return "gone"
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
    if libc.umount2(os.fsencode(mountpoint), MNT_FORCE | MNT_DETACH) != 0:
        code = ctypes.get_errno() or errno.EIO
        return f"failed: {os.strerror(code)}"
    return "unmounted"


def main(argv: list[str] | None = None) -> int:
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    parser = argparse.ArgumentParser(prog="sipd-unmounter")
    parser.add_argument("--device", required=True, metavar="MAJOR:MINOR")
    parser.add_argument("mountpoint")
    args = parser.parse_args(argv)
    os.chdir("/")  # hold no directory of anyone's
    try:
        limit_this_thread(UNMOUNT)
    except CapabilityError as exc:
        print(f"sipd: unmount helper: {exc}", file=sys.stderr)
        return 1
    print("ready", flush=True)
    # "unmount" from sipd, or the end of input when sipd is gone.
    sys.stdin.readline()
    outcome = detach(args.mountpoint, args.device)
    try:
        print(outcome, flush=True)
    except BrokenPipeError:
        # sipd is gone; nobody to tell, and nothing left to flush at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    if outcome.startswith("failed"):
        print(f"sipd: unmount helper: cannot unmount {args.mountpoint}: {outcome[8:]}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
