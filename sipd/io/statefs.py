"""The daemon's side of ``/run/sr``: the tree's inputs and its writes to disk.

The tree (:mod:`srfs.fs.tree`) is a pure model and the FUSE adapter
(:mod:`srfs.fs.fuse`) only serves it; this module feeds them from the running
daemon and carries their results to the disk:

- the SIP group's members, re-read every few seconds in a worker thread,
  so users appear and disappear without a restart (the group entry each
  time, the enumeration of every account seldom: see
  :mod:`srfs.accounts.membership`). While the user database fails the
  members stay as they were: an outage is logged when it begins and when
  it ends, and nobody "leaves the group" for it;
- each member's ``~/.sr/config``, re-read and parsed in the worker thread
  when it changed (one stat), so hand edits show up in ``config/`` without
  a restart and a large file never holds up SIP; its problems are logged
  a few lines and a count per change;
- ``status`` and ``metrics`` from the daemon's counters;
- the event files: registrations, calls and authentication failures
  pushed into :class:`srfs.state.events.Events` as they happen, from the
  location store's, the call tracker's and the authenticator's
  subscriptions (each push is a line appended to a bounded ring: SIP
  never waits for a reader);
- config values written through the tree, written to ``~/.sr/config``
  (comments and unknown lines kept) by a worker thread. Contacts written
  through the tree go through the location store like any REGISTER, so the
  usrloc persister writes them;
- one log line for each refused write, with the errno the writer got and
  the tree's reason: the shell only says "Invalid argument", the log says
  which line and why (:class:`LoggedTree`).
"""

from __future__ import annotations

import errno
import functools
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import trio

from sipd.auth.authenticator import AuthFailure, DirectoryHealth
from sipd.config import Settings
from sipd.core.ownership import Ownership
from sipd.core.work import Action, Outcome
from sipd.endpoint import Endpoint
from sipd.io.metrics import daemon_statistics
from sipd.io.transport import Transports
from sipd.proxy.calltrack import CallEvent
from sipd.registrar.admission import BindingRules
from srfs.accounts.membership import Membership, group_membership
from srfs.files import home, userconfig
from srfs.files.home import FileCache, HomeError
from srfs.files.homewatch import HomeWatch
from srfs.files.userconfig import UserConfig
from srfs.fs.fuse import SrFs, serve
from srfs.fs.tree import (
    ConfigChange,
    ContactsWrite,
    Node,
    Stat,
    Tree,
    TreeError,
    WriteResult,
)
from srfs.logtext import Recurring, log_problems, quote
from srfs.state.events import Events, auth_failure, call_event, contact_event
from srfs.state.location import Binding, Change, Op
from srfs.user import User

#: Seconds between looks at the members' ``~/.sr/config`` (one ``lstat`` each).
CONFIG_POLL = 5.0
#: The look waits at least this many times as long as the last one took, so
#: that on a large site it costs a steady 2 % of the time at most, not a
#: core (10,000 members took about 0.05 s).
CONFIG_POLL_PACE = 50

log = logging.getLogger("sipd.statefs")


def _ownership_hooks(ownership: Ownership | None, rules: BindingRules | None) -> dict[str, Any]:
    """The tree's view of the alias map and the binding rules; read at each
    lookup, so reloads show at once."""
    hooks: dict[str, Any] = {}
    if rules is not None:
        def refusal(user: str, b: Binding) -> tuple[int, str] | None:
            refused = rules.refusal(user, b)
            return None if refused is None else (refused.errno, refused.reason)

        hooks["refusal"] = refusal
    if ownership is not None:
        hooks.update(
            owns=ownership.owns,
            aliases_of=ownership.names_of,
            alias_map=lambda: ownership.aliases.render(),
        )
    return hooks


#: Errnos that only say a node is not there: a lookup, not a refused write.
_NOT_THERE = frozenset({errno.ENOENT, errno.ENOTDIR})


def log_refusal(what: str, path: str, code: int, reason: str, level: int = logging.INFO) -> None:
    """One line for a refused change of ``/run/sr``: the node, the errno's name, why.

    Info for what the writer did wrong (a bad line, an AOR not theirs,
    ``max_contacts``); the caller says warning when sipd could not do its
    part (``~/.sr`` unwritable).
    """
    name = errno.errorcode.get(code, str(code))
    log.log(level, "%s %s refused (%s): %s", what, quote(path), name, reason)


class LoggedTree(Tree):
    """The tree, logging each write it refuses where the refusal is decided.

    The FUSE adapter turns a :class:`TreeError` into the errno the writer
    sees and nothing more; the reason is only here. Each refused write is
    logged once: a refused ``write(2)`` poisons its open file, so the
    commit at close is never tried. Lookups of nodes that are not there
    are not refusals and are not logged; nor is a ``create`` refused with
    EPERM, which is how an editor's temporary file is made.
    """

    #: Where the tree is mounted, without a trailing slash: the paths in
    #: the log are the ones the writer used.
    mount = "/run/sr"

    def shown(self, path: str) -> str:
        """``path`` as the writer named it, under the mountpoint."""
        return self.mount + path

    def _refused(self, what: str, path: str, exc: TreeError) -> None:
        if exc.errno not in _NOT_THERE:
            log_refusal(what, self.shown(path), exc.errno, exc.reason)

    def check_open(self, path: str, *, write: bool) -> Node:
        try:
            return super().check_open(path, write=write)
        except TreeError as exc:
            if write:
                self._refused("write to", path, exc)
            raise

    def check_write(self, path: str, data: bytes, now: float, *, complete: bool,
                    append: bool = False) -> None:
        try:
            super().check_write(path, data, now, complete=complete, append=append)
        except TreeError as exc:
            self._refused("write to", path, exc)
            raise

    def prepare(self, path: str, data: bytes, *, append: bool, now: float) -> WriteResult:
        try:
            return super().prepare(path, data, append=append, now=now)
        except TreeError as exc:
            self._refused("write to", path, exc)
            raise

    def prepare_unlink(self, path: str) -> ConfigChange:
        try:
            return super().prepare_unlink(path)
        except TreeError as exc:
            self._refused("removal of", path, exc)
            raise


class MemberConfigs:
    """The members' ``~/.sr/config`` as last read, and which of them changed since.

    Thread safe: the look at every member runs in a worker thread, a read
    for a write through the tree in another.
    """

    def __init__(self, watch: HomeWatch | None = None) -> None:
        self._files = FileCache("config", userconfig.parse, watch=watch)
        self._unreadable = Recurring()

    def get(self, user: User) -> UserConfig | None:
        """Blocking: ``user``'s parsed config, None without one; raises :class:`HomeError`."""
        return self._files.get(user)

    def changed(self, members: Sequence[User]) -> list[tuple[User, UserConfig | None]]:
        """Blocking: the parsed config (None: no file) of each member whose
        file changed since it was last read, or was never read.

        An unchanged file costs a look at the home watch, or one ``lstat``
        as the user where it cannot tell (:meth:`FileCache.unchanged`), not
        the opening of the home and ``~/.sr`` that reading it takes: this
        runs for every member every few seconds. It is left out of the answer, since whoever asked has it.
        A file that cannot be read is logged once per reason and left out.
        """
        out: list[tuple[User, UserConfig | None]] = []
        for user, unchanged in zip(members, self._files.unchanged(members), strict=True):
            if unchanged:
                continue
            try:
                out.append((user, self._files.get(user)))
            except HomeError as exc:
                # Seen again at every look until the user fixes it.
                if self._unreadable.report(user.name, exc.reason):
                    log.warning("ignoring config of %s: %s", user.name, exc.reason)
                continue
            self._unreadable.clear(user.name)
        return out

    def forget(self, user: User) -> None:
        """``user`` left the group: should they come back, their file is read again."""
        self._files.forget(user)
        self._unreadable.clear(user.name)


class StateFs:
    def __init__(self, settings: Settings, endpoint: Endpoint, transports: Transports,
                 started: float, ownership: Ownership | None = None,
                 rules: BindingRules | None = None,
                 membership: Membership | None = None,
                 home_watch: HomeWatch | None = None) -> None:
        self.settings = settings
        self.endpoint = endpoint
        self.transports = transports
        self.started = started
        self.members: tuple[User, ...] = ()
        #: The daemon's, which start-up already read: loading the tree then
        #: costs no second enumeration of every account.
        self.membership = membership or group_membership(settings.group,
                                                         settings.member_full_interval)
        #: Seconds between re-reads of the group (``member_refresh_interval``).
        self.refresh_interval = settings.member_refresh_interval
        #: Called with each user who joined or left the group: an answer
        #: remembered from before (a refusal, an allowed account) must not
        #: count any longer.
        self.member_changed: Callable[[str], None] = lambda name: None
        #: Carries out a command root wrote to ``/control`` (the daemon's).
        self.control: Callable[[str], None] = lambda command: None
        self._wake = trio.Event()
        #: Monotonic time the group could last not be read, while it cannot.
        self._outage: float | None = None
        assert endpoint.store is not None
        self.events = Events(started)
        self.tree = LoggedTree(
            endpoint.store,
            lambda: self.members,
            clock=time.time,
            max_contacts=settings.max_contacts,
            statistics=self.statistics,
            started=started,
            calls_of=self._calls_of,
            events=self.events,
            **_ownership_hooks(ownership, rules),
        )
        self.tree.mount = settings.mount.rstrip("/")
        if endpoint.tracker is not None:
            endpoint.tracker.calls.subscribe(
                lambda change: self.tree.touch(f"/{change.call.user}/calls", time.time())
            )
            endpoint.tracker.subscribe(self._on_call_event)
        # Subscribed after start-up's reload: reloaded contacts are no events.
        endpoint.store.subscribe(self._on_contact_change)
        registration = endpoint.server.registration
        #: The user database's health the authenticator and proxy go by.
        self._health: DirectoryHealth | None = None
        if registration is not None:
            registration.auth.subscribe_failures(self._on_auth_failure)
            self._health = registration.auth.health
        self.home_watch = home_watch
        self._configs = MemberConfigs(home_watch)
        self._config_locks: dict[str, trio.Lock] = {}
        #: Per user, odd while a config write through the tree is under way,
        #: two more after each: the poll must not put back what the file
        #: said before such a write.
        self._config_writes: dict[str, int] = {}
        self._ownership = ownership
        self.ops: SrFs | None = None

    # ------------------------------------------------------------- events

    def _on_contact_change(self, change: Change) -> None:
        event = contact_event(change, time.time())
        if event is not None:
            self.events.push(event)

    _CALL_EVENTS = {"start": "call-start", "answer": "call-answer", "end": "call-end",
                    "failure": "call-end"}

    def _on_call_event(self, e: CallEvent) -> None:
        self.events.push(call_event(self._CALL_EVENTS[e.event], e.leg, e.wall,
                                    duration=e.duration, status=e.status, reason=e.reason))

    def _on_auth_failure(self, f: AuthFailure) -> None:
        self.events.push(auth_failure(f.username, str(f.source), f.method, f.reason, f.wall))

    def _calls_of(self, user: str) -> list[str]:
        tracker = self.endpoint.tracker
        return [] if tracker is None else tracker.calls.lines(user, time.time())

    # ------------------------------------------------------------- inputs

    def load(self) -> None:
        """Blocking: the group and every member's config (start-up)."""
        self.members = tuple(self.membership.refresh(time.monotonic()))
        self._know(self.members)
        now = time.time()
        self.tree.sync_members(now)
        for user, config in self._configs.changed(self.members):
            self._take_config(user, config, now)

    def _know(self, members: tuple[User, ...]) -> None:
        if self.endpoint.persistence is not None:
            self.endpoint.persistence.know(members)

    def _take_config(self, user: User, config: UserConfig | None, now: float) -> None:
        before = self.tree.config(user.name)
        if config is not None and before.text == config.text:
            return
        loaded = self.tree.load_config(user.name, config, now)
        log_problems(log, f"{user.name}'s ~/.sr/config", loaded.problems,
                     total=loaded.problem_count)

    def wake(self) -> None:
        """Re-read the group now, not at the next interval (the account files
        changed, SIGHUP, ``flush accounts``)."""
        self._wake.set()

    async def refresh_loop(self) -> None:
        # Two paces: the group entry (a directory look-up) every
        # ``member_refresh_interval`` or when woken; the members' config
        # files (an lstat each) every CONFIG_POLL seconds, or CONFIG_POLL_PACE
        # times as long as the last look took, so a hand edit shows soon
        # whatever the directory's pace. A timed group refresh reads only
        # the members it did not know.
        next_group = trio.current_time() + self.refresh_interval
        next_poll = trio.current_time() + CONFIG_POLL
        while True:
            with trio.move_on_at(min(next_group, next_poll)):
                await self._wake.wait()
            woken, self._wake = self._wake.is_set(), trio.Event()
            writes = dict(self._config_writes)
            if not (woken or trio.current_time() >= next_group):
                started = trio.current_time()
                configs = await trio.to_thread.run_sync(self._configs.changed, self.members)
                self._take_configs(configs, writes, time.time())
                now = trio.current_time()
                next_poll = now + max(CONFIG_POLL, CONFIG_POLL_PACE * (now - started))
                continue
            next_group = trio.current_time() + self.refresh_interval
            try:
                members = tuple(await trio.to_thread.run_sync(self.membership.refresh,
                                                              time.monotonic()))
            except OSError as exc:
                # An outage, not a removal: everyone stays as they were.
                if self._health is not None:
                    # New logins get their 503 at once rather than each
                    # waiting for the directory to time out.
                    self._health.failed(f"group {self.settings.group}", exc, time.time())
                if self._outage is None:
                    self._outage = time.monotonic()
                    log.warning("cannot refresh the SIP group: %s; its %d member(s) stay until "
                                "the user database answers", exc, len(self.members))
                continue
            if self._health is not None:
                self._health.answered(time.time())
            if self._outage is not None:
                log.info("SIP group read again after %.0f s", time.monotonic() - self._outage)
                self._outage = None
            # The look every few seconds covers the members already known;
            # when woken (SIGHUP, the account files changed) every file is
            # looked at now.
            known = set(self.members)
            look = members if woken else tuple(u for u in members if u not in known)
            configs = await trio.to_thread.run_sync(self._configs.changed, look)
            now = time.time()
            left = {user.name: user for user in self.members}
            self.members = members
            self._know(members)
            added, removed = self.tree.sync_members(now)
            for name in added:
                log.info("%s joined group %s", name, self.settings.group)
                self.member_changed(name)
            for name in removed:
                log.info("%s left group %s", name, self.settings.group)
                self.tree.forget_config(name)
                gone = left.get(name)
                if gone is not None:
                    self._configs.forget(gone)
                self.member_changed(name)
            self._take_configs(configs, writes, now)

    def _take_configs(self, configs: Iterable[tuple[User, UserConfig | None]], writes: dict[str, int],
                      now: float) -> None:
        for user, config in configs:
            count = self._config_writes.get(user.name, 0)
            if count != writes.get(user.name, 0) or count % 2:
                # Read while a write through the tree was under way: what
                # it says may be older than what that write acknowledged.
                continue
            self._take_config(user, config, now)

    # ------------------------------------------------------------ outputs

    async def on_commit(self, result: WriteResult) -> None:
        """Make a validated write through the tree durable, then put it in force.

        Raises OSError with the errno the writer should see (EINVAL for an
        alias clash, ENOSPC or EIO when ``~/.sr`` cannot be written); then
        nothing of the write is in force.
        """
        for command in result.commands:
            log.info("%s written to %s", command, self.tree.shown("/control"))
            self.control(command)
        if result.aliases is not None and self._ownership is not None:
            ownership, write = self._ownership, result.aliases
            try:
                loaded = await trio.to_thread.run_sync(
                    lambda: ownership.write_aliases(write.data, append=write.append)
                )
            except OSError as exc:
                # EINVAL: a name the map in force gives another owner.
                log_refusal("write to", self.tree.shown("/aliases"), exc.errno or errno.EIO,
                            exc.strerror or str(exc),
                            logging.INFO if exc.errno == errno.EINVAL else logging.WARNING)
                raise
            ownership.apply(loaded)
        if result.config is not None and result.config.changed:
            await self._commit_config(result.config)
        if result.contacts is not None:
            await self._commit_contacts(result.contacts)

    def _config_lock(self, user: str) -> trio.Lock:
        lock = self._config_locks.get(user)
        if lock is None:
            lock = self._config_locks[user] = trio.Lock()
        return lock

    async def _commit_config(self, change: ConfigChange) -> None:
        user = change.user
        async with self._config_lock(user.name):
            # Against the file as it is now: a hand edit the poll has not
            # seen yet is kept, and two edits through the tree never undo
            # each other.
            self._config_writes[user.name] = self._config_writes.get(user.name, 0) + 1
            try:
                await self._write_config(user, change)
            finally:
                self._config_writes[user.name] += 1

    async def _write_config(self, user: User, change: ConfigChange) -> None:
        path = self.tree.shown(f"/{user.name}/config/{change.key}")
        what = "write to" if change.value is not None else "removal of"
        try:
            config = await trio.to_thread.run_sync(self._configs.get, user)
        except HomeError as exc:
            log_refusal(what, path, exc.errno, f"cannot read ~/.sr/config: {exc.reason}",
                        logging.WARNING)
            raise OSError(exc.errno, exc.reason) from None
        self._take_config(user, config, time.time())
        try:
            current = self.tree.config_change(user.name, change.key, change.value)
        except TreeError as exc:
            log_refusal(what, path, exc.errno, exc.reason)
            raise OSError(exc.errno, exc.reason) from None
        if not current.changed:
            return
        try:
            await trio.to_thread.run_sync(
                lambda: home.write_file(user, "config", current.data, fsync=True)
            )
        except HomeError as exc:
            log_refusal(what, path, exc.errno, f"cannot write ~/.sr/config: {exc.reason}",
                        logging.WARNING)
            raise OSError(exc.errno, exc.reason) from None
        self.tree.apply_config_change(current, time.time())

    async def _commit_contacts(self, write: ContactsWrite) -> None:
        persistence = self.endpoint.persistence
        if persistence is None:
            self.tree.apply(WriteResult(contacts=write), time.time())
            return
        done = trio.Event()
        outcome: list[Outcome[None]] = []
        tree = self.tree

        def plan(wall: float) -> list[Op]:
            return tree.plan_contacts(write.user, write.data, write.mode, wall)

        def finish(result: Outcome[None], now: float) -> list[Action]:
            outcome.append(result)
            done.set()
            return []

        self.transports.send(persistence.commit(write.user, plan, finish, trio.current_time()))
        await done.wait()
        error = outcome[0].error
        path = self.tree.shown(f"/{write.user}/contacts")
        if isinstance(error, TreeError):
            # Valid when the file was closed, not against the store at commit
            # time (a REGISTER came in between).
            log_refusal("write to", path, error.errno, error.reason)
            raise OSError(error.errno, error.reason)
        if error is not None:
            code = getattr(error, "errno", None) or errno.EIO
            log_refusal("write to", path, code, f"cannot write ~/.sr/usrloc: {error}",
                        logging.WARNING)
            raise OSError(code, str(error))
        # Other users' files an AOR hand-over touched, wtmp records: now.
        self.transports.send(self.endpoint.take_pending(trio.current_time()))

    def statistics(self) -> list[Stat]:
        scratch = self.ops.scratch_quota if self.ops is not None else None
        return daemon_statistics(self.endpoint, self.transports, self.started, scratch,
                                 self.home_watch)


async def start_statefs(statefs: StateFs, nursery: trio.Nursery) -> None:
    """Mount ``/run/sr`` in ``nursery`` (unmounted when it is cancelled).

    Mount failures (an unusable mountpoint, say) are raised here, unwrapped.
    """
    statefs.ops = await nursery.start(
        functools.partial(serve, statefs.tree, statefs.settings.mount, on_commit=statefs.on_commit)
    )
    nursery.start_soon(statefs.refresh_loop)
