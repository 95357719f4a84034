"""Blocking work that the sans-IO core asks the I/O layer to do.

The core never blocks and never awaits: when it needs NSS, PAM or a file
in a home, it returns a :class:`Job`. The I/O layer runs ``job.run`` in a
worker thread and hands the outcome to ``job.done`` back on the event
loop, which may answer with more output. Tests run jobs inline.

``queue`` names an ordered lane: jobs with the same queue run one at a
time in submission order (wtmp login before logout, say); jobs without
one run concurrently.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

from sipd.core.peer import Outgoing
from srfs.state.location import Op


@dataclass(frozen=True, slots=True)
class Outcome:
    """What ``Job.run`` returned, or the exception it raised."""

    value: Any = None
    error: BaseException | None = None


Action: TypeAlias = "Outgoing | Job"
Done = Callable[[Outcome, float], "list[Outgoing | Job]"]


def _nothing(outcome: Outcome, now: float) -> list[Outgoing | Job]:
    return []


@dataclass(frozen=True, slots=True)
class Job:
    run: Callable[[], Any]
    done: Done = _nothing
    queue: str | None = None
    name: str = "job"


def run_inline(actions: list[Outgoing | Job], now: float) -> list[Outgoing]:
    """Run every job at once, in order (tests and shutdown); return what is sent."""
    out: list[Outgoing] = []
    pending = list(actions)
    while pending:
        item = pending.pop(0)
        if isinstance(item, Job):
            try:
                outcome = Outcome(item.run())
            except Exception as exc:  # noqa: BLE001 - handed to the continuation
                outcome = Outcome(error=exc)
            pending[0:0] = item.done(outcome, now)
        else:
            out.append(item)
    return out


@dataclass(frozen=True, slots=True)
class Defer:
    """A transaction user's answer that needs blocking work first.

    The endpoint runs ``run`` as a :class:`Job` and passes its outcome and
    the wall-clock time to ``then``, which answers like the TU would have:
    a response, another :class:`Defer`, or None.
    """

    run: Callable[[], Any]
    then: Callable[[Outcome, float], Any]
    name: str = "defer"


@dataclass(frozen=True, slots=True)
class Commit:
    """A transaction user's answer that changes ``user``'s bindings.

    The endpoint hands it to the persister, which runs the commits of one
    user one at a time: ``plan(wall)`` says what would change (raising
    :class:`~sipd.sip.errors.SipError` to refuse), the persister writes
    ``~/.sr/usrloc`` as it would be and applies the plan only once that
    write is on disk (``sync = write-through``), then ``then(outcome,
    wall)`` answers; ``outcome.error`` is set when the plan was refused or
    the write failed, and then nothing was applied.
    """

    user: str
    plan: Callable[[float], Sequence[Op]]
    then: Callable[[Outcome, float], Any]
    name: str = "commit"


@dataclass(frozen=True, slots=True)
class Later:
    """A transaction user's response to send no earlier than ``not_before`` (wall clock).

    A failed authentication is answered at a fixed time after its request,
    so the answer's timing does not tell what the look-ups found.
    """

    response: Any
    not_before: float
