"""Location-store subscribers: ``~/.sr/usrloc`` files and utmp/wtmp records.

Both hear every change of the location store and turn it into blocking
:class:`~sipd.work.Job` s; neither is ever called by the registrar.

``sync = write-through``: the registrar asks :meth:`Persistence.sync` for a
job that puts the user's file on disk, and sends its 200 OK only when that
job is done; other changes (expiry, the state filesystem) are written at
once in the background. ``sync = write-back``: changed users are written
every ``flush_interval`` seconds, a user changed many times in between is
written once, and :meth:`Persistence.flush_all` writes everything at exit.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from srfs import users
from srfs.location import Change, ChangeKind, LocationStore
from srfs.usrloc import UsrlocFiles, render_file
from srfs.wtmp import LoginRecorder, WtmpError

from .peer import Outgoing
from .work import Job, Outcome

log = logging.getLogger("sipd.persistence")


@dataclass
class PersistenceStats:
    writes: int = 0
    write_errors: int = 0


class Persistence:
    def __init__(
        self,
        store: LocationStore,
        files: UsrlocFiles,
        *,
        write_through: bool,
        flush_interval: float,
    ) -> None:
        self.store = store
        self.files = files
        self.write_through = write_through
        self.flush_interval = flush_interval
        self._version: dict[str, int] = {}
        self._dirty: set[str] = set()
        self._next_flush: float | None = None
        self.stats = PersistenceStats()
        store.subscribe(self._changed)

    def _changed(self, change: Change) -> None:
        touched = {change.binding.user}
        if change.previous is not None:
            # An AOR that changed owner leaves the old owner's file too.
            touched.add(change.previous.user)
        for user in touched:
            self._version[user] = self._version.get(user, 0) + 1
            self._dirty.add(user)

    def sync(self, user: str, wall: float) -> Callable[[], None]:
        """The blocking write of ``user``'s file as it is now, with fsync.

        The caller runs it and reports the outcome to :meth:`record`.
        """
        self._dirty.discard(user)
        return self._writer(user, wall, fsync=True)

    def jobs(self, now: float, wall: float) -> list[Job]:
        """Writes that are due: every dirty user at once (write-through), or
        at the flush interval (write-back)."""
        if not self._dirty:
            return []
        if not self.write_through:
            if self._next_flush is None:
                self._next_flush = now + self.flush_interval
                return []
            if now < self._next_flush:
                return []
            self._next_flush = None
        users_ = sorted(self._dirty)
        self._dirty.clear()
        return [self._job(u, wall, fsync=self.write_through) for u in users_]

    def forget_changes(self) -> None:
        """Treat the current state as on disk (just read back from it)."""
        self._dirty.clear()

    def next_deadline(self) -> float | None:
        return self._next_flush if self._dirty and not self.write_through else None

    def flush_all(self, wall: float) -> list[Job]:
        """Every dirty user, now (shutdown)."""
        users_ = sorted(self._dirty)
        self._dirty.clear()
        return [self._job(u, wall, fsync=True) for u in users_]

    def _job(self, user: str, wall: float, *, fsync: bool) -> Job:
        def done(outcome: Outcome, now: float) -> list[Outgoing | Job]:
            self.record(user, outcome)
            return []

        return Job(self._writer(user, wall, fsync=fsync), done, name=f"usrloc {user}")

    def _writer(self, user: str, wall: float, *, fsync: bool) -> Callable[[], None]:
        # Rendered here, on the event loop, so the file is one consistent
        # snapshot; the version lets the writer skip it if a newer one won.
        text = render_file(self.store.bindings_of_user(user), wall)
        version = self._version.get(user, 0)
        files = self.files

        def run() -> None:
            account = users.lookup(user)
            if account is None:
                raise LookupError(f"user {user} no longer exists")
            files.save(account, version, text, fsync=fsync)

        return run

    def record(self, user: str, outcome: Outcome) -> None:
        if outcome.error is None:
            self.stats.writes += 1
        else:
            self.stats.write_errors += 1
            log.error("cannot save registrations of %s: %s", user, outcome.error)


class WtmpSessions:
    """utmp/wtmp login records for registrations, in one ordered lane.

    A login when a binding is created, a logout when it expires or is
    removed; refreshes write nothing. Static bindings (a trunk's fixed
    contact) are configuration, not logins. The binding-to-line map is only
    touched by jobs of the ``wtmp`` lane, which run one at a time.
    """

    LANE = "wtmp"

    def __init__(self, store: LocationStore, recorder: LoginRecorder, emit: Callable[[Job], None]) -> None:
        self.recorder = recorder
        self._emit = emit
        self._lines: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()
        store.subscribe(self._changed)

    def _changed(self, change: Change) -> None:
        b = change.binding
        key = (b.aor, b.key)
        if change.kind is ChangeKind.ADDED and not b.static:
            host = _host_of(b.received) or "-"
            self._emit(Job(lambda: self._login(key, b.user, host, b.registered),
                           queue=self.LANE, name="wtmp login"))
        elif change.kind is ChangeKind.REMOVED and not b.static:
            self._emit(Job(lambda: self._logout(key), queue=self.LANE, name="wtmp logout"))

    def _login(self, key: tuple[str, str], user: str, host: str, when: float) -> None:
        line = self.recorder.login(user, host, when)
        with self._lock:
            self._lines[key] = line

    def logout_all(self) -> None:
        """Close every line (shutdown): the registrations outlive the daemon
        in usrloc, but nobody answers for them until it is back."""
        with self._lock:
            lines, self._lines = list(self._lines.values()), {}
        for line in lines:
            try:
                self.recorder.logout(line, time.time())
            except (WtmpError, ValueError) as exc:
                log.warning("wtmp logout of %s failed: %s", line, exc)

    def _logout(self, key: tuple[str, str]) -> None:
        with self._lock:
            line = self._lines.pop(key, None)
        if line is not None:
            self.recorder.logout(line, time.time())


def _host_of(received: str | None) -> str | None:
    if not received:
        return None
    _, _, rest = received.partition(":")
    host, _, _ = rest.rpartition(":")
    return host.strip("[]") or None
