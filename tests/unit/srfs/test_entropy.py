"""Random bytes from a pool the kernel fills a page at a time (srfs.entropy)."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator

import pytest

from srfs import entropy


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """The sizes asked of os.urandom, from an empty pool."""
    asked: list[int] = []
    real = os.urandom

    def urandom(n: int) -> bytes:
        asked.append(n)
        return real(n)

    monkeypatch.setattr(os, "urandom", urandom)
    entropy._forget()
    yield asked
    entropy._forget()


def test_a_page_serves_many_callers_and_no_byte_twice(reads: list[int]) -> None:
    taken = [entropy.random_bytes(8) for _ in range(entropy.POOL_SIZE // 8)]
    assert reads == [entropy.POOL_SIZE]
    assert all(len(t) == 8 for t in taken)
    # Each caller got its own slice of the page: together they are the page.
    assert len(set(taken)) == len(taken)
    entropy.random_bytes(8)
    assert reads == [entropy.POOL_SIZE] * 2


def test_what_does_not_fit_comes_from_a_new_page(reads: list[int]) -> None:
    entropy.random_bytes(entropy.POOL_SIZE - 3)
    tail = entropy.random_bytes(5)
    assert len(tail) == 5 and reads == [entropy.POOL_SIZE] * 2


def test_hex_and_bounds(reads: list[int]) -> None:
    text = entropy.random_hex(5)
    assert len(text) == 10 and int(text, 16) >= 0
    assert entropy.random_bytes(0) == b""
    assert len(entropy.random_bytes(entropy.POOL_SIZE)) == entropy.POOL_SIZE
    for bad in (-1, entropy.POOL_SIZE + 1):
        with pytest.raises(ValueError, match="random bytes at a time"):
            entropy.random_bytes(bad)


def test_threads_never_share_a_slice(reads: list[int]) -> None:
    got: list[bytes] = []
    lock = threading.Lock()

    def take() -> None:
        mine = [entropy.random_bytes(16) for _ in range(2000)]
        with lock:
            got.extend(mine)

    threads = [threading.Thread(target=take) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(got)) == len(got) == 8000


def test_a_forked_child_does_not_reuse_the_parents_bytes(reads: list[int]) -> None:
    entropy.random_bytes(8)  # the parent has most of a page left
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.write(w, entropy.random_bytes(16))
        finally:
            os._exit(0)
    os.close(w)
    child = os.read(r, 16)
    os.close(r)
    os.waitpid(pid, 0)
    # Had the child kept the pool, its 16 bytes would be the parent's next 16.
    assert child != entropy.random_bytes(16)
