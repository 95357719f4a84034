"""Random bytes from the kernel, read a page at a time.

sipd takes a few random bytes for nearly every request it answers: the
salt of each nonce, the To tag of each registrar answer, the name of each
temporary file it renames over a user's file. :func:`os.urandom` (and
:mod:`secrets`, which calls it) is one ``getrandom(2)`` per call, and
CPython lets the GIL go around it. With a worker thread busy writing
``~/.sr/usrloc``, every such call handed the GIL to the worker and had
the event loop wait to take it back: three hand-offs per registration,
each dearer than the system call itself.

Here the bytes come from the same source, ``getrandom(2)``, 4 KiB per
call; each caller takes a slice no other caller gets. They are as
unpredictable as :func:`os.urandom`'s (the kernel's generator made them),
and no byte is handed out twice: a child made by ``fork`` starts with an
empty pool, so parent and child never share what is left.
"""

from __future__ import annotations

import os
import threading

__all__ = ["POOL_SIZE", "random_bytes", "random_hex"]

#: Bytes read from the kernel at a time: a page, about 150 registrations
#: (26 bytes each: the nonce's salt, two To tags, a temporary file's name).
POOL_SIZE = 4096

_lock = threading.Lock()
_pool = b""
_taken = 0


def random_bytes(n: int) -> bytes:
    """``n`` random bytes (as :func:`secrets.token_bytes`), no more than :data:`POOL_SIZE`."""
    global _pool, _taken
    if not 0 <= n <= POOL_SIZE:
        raise ValueError(f"between 0 and {POOL_SIZE} random bytes at a time")
    with _lock:
        start = _taken
        if start + n > len(_pool):
            _pool = os.urandom(POOL_SIZE)
            start = 0
        _taken = start + n
        return _pool[start:start + n]


def random_hex(n: int) -> str:
    """``n`` random bytes as ``2n`` hexadecimal digits (as :func:`secrets.token_hex`)."""
    return random_bytes(n).hex()


def _forget() -> None:
    """In a child after ``fork``: what the parent had left is the parent's (and
    the lock may have been held by a thread the child does not have)."""
    global _lock, _pool, _taken
    _lock, _pool, _taken = threading.Lock(), b"", 0


os.register_at_fork(after_in_child=_forget)
