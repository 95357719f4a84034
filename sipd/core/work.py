"""Blocking work that the sans-IO core asks the I/O layer to do.

The core never blocks and never awaits: when it needs NSS, PAM or a file
in a home, it returns a :class:`Job`. The I/O layer runs ``job.run`` in a
worker thread and hands the outcome to ``job.done`` back on the event
loop, which may answer with more output. Tests run jobs inline. A
question for the media relay is an :class:`Ask`: no thread, the I/O
layer's ng socket asks it and hands the reply on the same way.

Time: every continuation here gets the core's one clock, the monotonic
``now`` the I/O layer passes in; wall-clock stamps (a binding's expiry, a
call record, a nonce) are derived from it with ``wall(now)`` where state
needs them.

``queue`` names an ordered lane: jobs with the same queue run one at a
time in submission order (wtmp login before logout, say); jobs without
one run concurrently.

A job that only writes files in homes may say so: ``writes`` are the
files (as :func:`srfs.files.home.write_files` takes them) and ``wrote``
turns their errors into the job's value. The I/O layer then hands the
files to its one writing thread (:class:`srfs.files.home.FileWriter`)
instead of running ``run``; what ``run`` does must be the same writes.
Every job with ``writes`` goes to that one thread, in order, or none does.
``checksummed_for`` names the users whose files may be written with one
sync round (``write_files``' argument of that name).
"""

from __future__ import annotations

from collections.abc import Callable, Container, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeAlias, TypeVar, cast

from sipd.core.peer import Outgoing
from sipd.sip.message import Response
from srfs.state.location import Op
from srfs.user import User

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class Outcome(Generic[T]):
    """What ``Job.run`` returned, or the exception it raised (then ``error`` is set)."""

    value: T | None = None
    error: BaseException | None = None

    def get(self) -> T:
        """The value; raises ``error`` when the job failed."""
        if self.error is not None:
            raise self.error
        return cast(T, self.value)


#: What the sans-IO core hands the I/O layer: bytes to send, work to run, a
#: question for the media relay.
Action: TypeAlias = "Outgoing | Job[Any] | Ask[list[Action]]"
#: A job's continuation: the outcome and the core's monotonic ``now``.
Done: TypeAlias = "Callable[[Outcome[T], float], list[Action]]"


def _nothing(outcome: Outcome[Any], now: float) -> list[Action]:
    return []


@dataclass(frozen=True, slots=True)
class Job(Generic[T]):
    """Blocking work: ``run`` in a worker thread, then ``done`` on the event loop.

    ``done`` gets the outcome and the monotonic time at which it runs.
    ``directory`` says ``run`` asks the user database (NSS, PAM): such jobs
    get worker threads of their own, fewer than the rest, so a directory
    server that hangs cannot hold up home I/O.
    """

    run: Callable[[], T]
    done: Callable[[Outcome[T], float], list[Action]] = _nothing
    queue: str | None = None
    name: str = "job"
    directory: bool = False
    writes: Sequence[tuple[User, str, bytes]] | None = None
    wrote: Callable[[Sequence[BaseException | None]], T] | None = None
    checksummed_for: Container[str] = ()


def run_inline(actions: list[Action], now: float) -> list[Outgoing]:
    """Run every job at once, in order (tests and shutdown); return what is sent.

    Nobody answers an :class:`Ask` here: it gets its failure at once.
    """
    out: list[Outgoing] = []
    pending = list(actions)
    while pending:
        item = pending.pop(0)
        if isinstance(item, Job):
            outcome: Outcome[Any]
            try:
                outcome = Outcome(item.run())
            except Exception as exc:  # noqa: BLE001 - handed to the continuation
                outcome = Outcome(error=exc)
            pending[0:0] = item.done(outcome, now)
        elif isinstance(item, Ask):
            pending[0:0] = item.then(Outcome(error=ConnectionError("no media relay")), now)
        else:
            out.append(item)
    return out


@dataclass(frozen=True, slots=True)
class Ask(Generic[R]):
    """A question for the media relay (rtpengine's ng protocol), asked by the I/O layer.

    ``message`` is the ng dictionary. The I/O layer sends it, tries again
    while no reply comes, and hands ``then`` the reply dictionary (or the
    failure: an error reply, no reply in time) with the monotonic time;
    ``then`` answers like the code that asked would have (actions, for the
    endpoint). Nothing blocks meanwhile.
    """

    message: Mapping[str, Any]
    then: Callable[[Outcome[dict[str, Any]], float], R]
    name: str = "ask"


@dataclass(frozen=True, slots=True)
class Defer(Generic[T, R]):
    """A transaction user's answer that needs blocking work first.

    The endpoint runs ``run`` as a :class:`Job` and passes its outcome and
    the monotonic time to ``then``, which answers like the TU would have
    (a response, another :class:`Defer`, ...).
    """

    run: Callable[[], T]
    then: Callable[[Outcome[T], float], R]
    name: str = "defer"
    #: ``run`` asks the user database (see :attr:`Job.directory`).
    directory: bool = False


@dataclass(frozen=True, slots=True)
class Commit(Generic[R]):
    """A transaction user's answer that changes ``user``'s bindings.

    The endpoint hands it to the persister, which runs the commits of one
    user one at a time: ``plan(wall)`` says what would change at that
    wall-clock time (raising :class:`~sipd.sip.errors.SipError` to
    refuse), the persister writes ``~/.sr/usrloc`` as it would be and
    applies the plan only once that write is on disk (``sync =
    write-through``), then ``then(outcome, now)`` answers at monotonic
    ``now``; ``outcome.error`` is set when the plan was refused or the
    write failed, and then nothing was applied.
    """

    user: str
    plan: Callable[[float], Sequence[Op]]
    then: Callable[[Outcome[None], float], R]
    name: str = "commit"
    #: The UNIX user the request authenticated as: the file is written as
    #: them without another NSS look-up (which a failing directory refuses).
    owner: User | None = None


@dataclass(frozen=True, slots=True)
class Later:
    """A transaction user's response to send no earlier than ``not_before`` (wall clock).

    A failed authentication is answered at a fixed time after its request,
    so the answer's timing does not tell what the look-ups found.
    """

    response: Response
    not_before: float
