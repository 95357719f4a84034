"""The ``/run/sr`` tree as a FUSE filesystem: a pyfuse3 adapter over :class:`srfs.fs.tree.Tree`.

This is the only module that imports pyfuse3. It maps paths to inode
numbers, turns :class:`~srfs.fs.tree.TreeError` into ``FUSEError`` in one
place (:func:`_handler`), and owns the mount's life cycle. Every handler
runs in the daemon's trio thread and never blocks it: no file I/O, and the
kernel notifications that can block go through a worker thread.

How the daemon uses it::

    async def on_commit(result: WriteResult) -> None:
        if result.config is not None and result.config.changed:
            await trio.to_thread.run_sync(write_config, result.config)   # blocking I/O
        tree.apply(result, time.time())                                   # then in memory

    async with trio.open_nursery() as nursery:
        fs = await nursery.start(partial(serve, tree, "/run/sr", on_commit=on_commit))
        ...                         # cancelling the nursery unmounts cleanly

Behaviour worth knowing (what users see of it is in srfs(5)):

- Permissions are the kernel's (``default_permissions``): every inode
  carries the mode and owner the tree gives it.
- Reads come from a snapshot rendered at ``open``; files use ``direct_io``
  with their real size, so ``>>`` offsets and ``tail`` behave.
- Writes are buffered per open file. Each write checks its complete lines
  (the shell prints "Invalid argument"); a refused write poisons the open
  file, so nothing of it is ever applied, not even the truncation of
  ``echo bad > contacts``. The buffer is committed at ``flush`` (so
  ``close`` reports errors to cp, tee and Python) or ``fsync``; ``release``
  commits only a truncation with no writes (``: > contacts``).
- ``chmod``/``chown`` of tree nodes are refused with EPERM unless they
  change nothing (``sed -i`` copies the mode it read). Time updates
  (``touch``) are accepted and ignored: mtimes say when the state changed.
- Editors and ``sed -i``: an ``O_EXCL`` create of a name that is not a
  setting, in a user's directory or ``config/``, makes an in-memory scratch
  file (0600, owned by the creator). Renaming it over ``contacts`` or
  ``config/<key>`` commits its content as a replacing write, and the
  commit's errno goes back to ``rename``. Without ``O_EXCL`` (``echo x >
  config/typo``) the tree's refusal stands, so a typo is not silently
  accepted. Scratch files are listed, can be removed, and are lost on
  restart. They are sipd's memory, so :mod:`srfs.fs.scratch` bounds them per
  user (``EDQUOT``) and in all (``ENOSPC``).
- The event files (``events``, ``<user>/events``) are streams, not
  snapshots: each open gets a :class:`~srfs.state.events.Cursor`, a read
  at the end waits for the next event in its pyfuse3 task, and
  :func:`serve` sizes pyfuse3's tasks for every event file allowed open
  (:data:`EVENT_READERS_USERS`, :data:`EVENT_READERS_ROOT`) to wait at
  once. pyfuse3 ignores FUSE_INTERRUPT, so :meth:`SrFs.watch_interrupts`
  ends a waiting read with EINTR once its reader has a signal pending.
- ``on_commit(result)`` gets every validated write that changes something
  (a contacts write, a config edit whose ``changed`` is true, an alias map
  write) before ``close``/``rename``/``unlink`` returns, and must make it
  durable and then apply it (:meth:`Tree.apply`, or the daemon's own path
  to the store). It may be a plain function or return an awaitable
  (awaited in the handler, which is how the daemon writes ``~/.sr`` in a
  worker thread before ``close`` returns). An ``OSError`` it raises
  reaches the caller with its errno (ENOSPC, EIO), anything else as EIO,
  and then nothing of the write is in force. Without ``on_commit`` the
  tree applies the write at once.

Why one module of this size: every handler shares the inode table and
the open-file snapshots, and keeping pyfuse3 behind one file is what
lets the rest of srfs be tested without a mount.
"""

from __future__ import annotations

import errno
import functools
import logging
import math
import os
import re
import select
import shutil
import stat
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, ParamSpec, TypeVar

import pyfuse3
import trio
from pyfuse3 import EntryAttributes, FileInfo, FUSEError, RequestContext, SetattrFields

from srfs.fs.scratch import DEFAULT_LIMITS, ScratchLimits, ScratchQuota
from srfs.fs.tree import MAX_WRITE, STREAMS, Kind, Node, Tree, TreeError, WriteResult
from srfs.logtext import quote
from srfs.state.events import Cursor, EventLog

__all__ = [
    "MountEntry",
    "MountError",
    "OnCommit",
    "SrFs",
    "check_mountpoint",
    "cleanup_stale",
    "mount_entries",
    "mounted",
    "parse_mountinfo",
    "serve",
    "signals_pending",
]

log = logging.getLogger("srfs.fuse")

OnCommit = Callable[[WriteResult], Awaitable[None] | None]

#: Entry/attribute cache time for nodes whose existence and metadata only
#: change with group membership (directories, the fixed files).
STATIC_TIMEOUT = 1.0
#: How long an unmount waits for requests being handled to finish.
SHUTDOWN_GRACE = 5.0
#: How long a probe of an existing mount may take before it counts as hung.
PROBE_TIMEOUT = 2.0
#: How long a file rendered for its attributes may serve as the snapshot of
#: a read-only open that follows. With ``default_permissions`` and no
#: attribute cache the kernel asks for the attributes (the size is the
#: rendered length) right before every open; without this, each ``cat``
#: renders the file twice. A change to the node drops the render at once.
RENDER_REUSE = 0.05
#: At most this many such renders are kept (``ls -l`` renders every file).
RENDER_SLOTS = 32

# Event streams. pyfuse3 serves each request in a task of its own and
# reads the next request only while one of its tasks is free: a read
# waiting for the next event holds its task until the event comes. So
# open event files are counted, and the task limit leaves room for every
# one of them to wait while the rest of the filesystem is served.
#: Event files one user (other than root) may hold open at once.
EVENT_READERS_PER_USER = 8
#: Event files all users other than root may hold open at once.
EVENT_READERS_USERS = 64
#: Event files root may hold open at once (apart from the users').
EVENT_READERS_ROOT = 16
#: Tasks pyfuse3 may run at once: every open event file waiting, and more.
FUSE_MAX_TASKS = EVENT_READERS_USERS + EVENT_READERS_ROOT + 48
#: How often a waiting read looks whether its reader got a signal.
#: pyfuse3 does not act on FUSE_INTERRUPT, and the kernel keeps a reader
#: whose request is in the daemon's hands waiting, even for SIGKILL, until
#: it is answered: a Ctrl-C would otherwise wait for the next event.
INTERRUPT_POLL = 0.1
#: How long an unmount waits for the readers it woke with end of file to
#: close their files: a close that finds the filesystem gone is an error
#: to cat(1).
STREAM_CLOSE_GRACE = 1.0

_P = ParamSpec("_P")
_R = TypeVar("_R")


def _handler(fn: Callable[_P, Awaitable[_R]]) -> Callable[_P, Coroutine[Any, Any, _R]]:
    """Every handler's last resort: a :class:`TreeError` becomes its errno, a bug EIO.

    (``on_commit``'s ``OSError`` gets its errno in :meth:`SrFs._deliver`.)
    pyfuse3 only expects ``FUSEError``: anything else escapes ``main()`` and
    would take the filesystem (and the daemon's nursery) down with it, and
    leave the request unanswered, so a bug answers EIO and is logged instead.
    """

    @functools.wraps(fn)
    async def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return await fn(*args, **kwargs)
        except FUSEError:
            raise
        except TreeError as e:
            log.debug("%s: %s", fn.__name__, e.reason)
            raise FUSEError(e.errno) from None
        except Exception:
            log.exception("srfs: %s failed", fn.__name__)
            raise FUSEError(errno.EIO) from None

    return wrapper


def _join(parent: str, name: str) -> str:
    return f"/{name}" if parent == "/" else f"{parent}/{name}"


def _dirname(path: str) -> str:
    head = path.rsplit("/", 1)[0]
    return head or "/"


def _ns(seconds: float) -> int:
    return int(seconds * 1_000_000_000)


@dataclass(slots=True, eq=False)
class _Scratch:
    """An editor's temporary file: memory only, committed by renaming it over a node."""

    ino: int
    path: str
    data: bytearray
    uid: int
    gid: int
    mode: int
    mtime: float
    owner: int
    """The uid whose quota the file counts against: its creator, whatever chown does."""
    opened: int = 0
    linked: bool = True
    settled: bool = False
    """Given back to the quota: no name and no open file holds it any more."""

    @property
    def parent(self) -> str:
        return _dirname(self.path)


@dataclass(slots=True, eq=False)
class _Handle:
    """One open file: the read snapshot, the write buffer and its commit state."""

    ino: int
    path: str
    scratch: _Scratch | None
    readable: bool
    writable: bool
    append: bool
    snapshot: bytes = b""
    buf: bytearray = field(default_factory=bytearray)
    dirty: bool = False
    """Written since the last commit."""
    truncate_pending: bool = False
    """Opened with O_TRUNC and nothing committed yet: ``: > f`` commits at release."""
    error: int = 0
    """The errno of a refused write: nothing of this open is applied any more."""
    pending: bool = False
    """Holds a reference on a config key created but not committed yet."""
    by_line: bool = False
    """Lines are judged one by one (contacts): a write rechecks only the lines it touched."""
    one_line: bool = False
    """A setting: committed as soon as its line is complete, so that the
    shell's ``echo`` hears a disk error (it never checks ``close``)."""
    stream: Cursor | None = None
    """An event file: read through this cursor, not a snapshot."""
    uid: int = 0
    """Who opened it (event files are counted per uid)."""
    pid: int = 0
    """The process that opened it: whose signals end a waiting read."""
    nonblocking: bool = False
    waiting: bool = False
    """A read is waiting for the next event."""


@dataclass(slots=True, eq=False)
class _Waiting:
    """A read waiting for an event; cancelled when its reader gets a signal."""

    pid: int
    scope: trio.CancelScope


@dataclass(slots=True, eq=False)
class _DirHandle:
    path: str
    entries: list[tuple[str, int]]


class SrFs(pyfuse3.Operations):
    """pyfuse3 operations over a :class:`Tree`.

    ``on_commit`` hears of every commit that changed something (see the
    module doc); ``clock`` gives the wall-clock ``now`` the tree works with;
    ``scratch_limits`` bound the editors' temporary files. Like the tree,
    it is touched only from the trio thread.
    """

    def __init__(
        self,
        tree: Tree,
        *,
        on_commit: OnCommit | None = None,
        clock: Callable[[], float] = time.time,
        scratch_limits: ScratchLimits = DEFAULT_LIMITS,
    ) -> None:
        super().__init__()
        self.tree = tree
        self._on_commit = on_commit
        self._clock = clock
        self.scratch_quota = ScratchQuota(scratch_limits)
        root = pyfuse3.ROOT_INODE
        self._ino_of: dict[str, int] = {"/": root}
        self._path_of: dict[int, str] = {root: "/"}
        self._next_ino = root + 1
        self._nlookup: dict[int, int] = {}
        self._scratch_by_path: dict[str, _Scratch] = {}
        #: Commits on their way to the disk, by path: an open waits for them.
        self._in_flight: dict[str, list[trio.Event]] = {}
        self._scratch_by_ino: dict[int, _Scratch] = {}
        self._pending: dict[str, tuple[Node, int]] = {}
        self._handles: dict[int, _Handle] = {}
        self._dirs: dict[int, _DirHandle] = {}
        self._next_fh = 1
        # path -> (when, content): renders made for getattr, for the next open.
        self._rendered: dict[str, tuple[float, bytes]] = {}
        # Kernel notifications are sent from a worker thread, since one can
        # wait for a request that only this thread answers: queued here,
        # deduplicated, drained by run_invalidations().
        send, receive = trio.open_memory_channel[tuple[int, bytes | None]](math.inf)
        self._inval_send = send
        self._inval_receive = receive
        self._inval_queued: set[tuple[int, bytes | None]] = set()
        self._accepting = True
        tree.listen(self._on_tree_change)
        #: Open event files by the uid that opened them.
        self._readers: dict[int, int] = {}
        #: Per stream with a read waiting: set (and dropped) at its next line.
        self._arrivals: dict[EventLog, trio.Event] = {}
        #: Per stream, the poll(2) handles to notify at its next line.
        self._pollers: dict[EventLog, dict[int, pyfuse3.PollHandle]] = {}
        self._waiting: dict[int, _Waiting] = {}
        self._waiting_changed = trio.Event()
        self._streams_ended = False
        #: Files whose waiting read got end of file at unmount, not closed yet.
        self._ending: set[int] = set()
        self._ended = trio.Event()
        tree.events.listen(self._on_event)

    # ------------------------------------------------------------ inodes

    def _ino(self, path: str) -> int:
        """The inode of a tree path: allocated once, kept while the daemon runs."""
        ino = self._ino_of.get(path)
        if ino is None:
            ino = self._new_ino()
            self._ino_of[path] = ino
            self._path_of[ino] = path
        return ino

    def _new_ino(self) -> int:
        ino = self._next_ino
        self._next_ino += 1
        return ino

    def _path(self, ino: int) -> str:
        path = self._path_of.get(ino)
        if path is None:
            raise FUSEError(errno.ENOENT)
        return path

    def _counted(self, ino: int) -> None:
        self._nlookup[ino] = self._nlookup.get(ino, 0) + 1

    def _maybe_drop(self, ino: int) -> None:
        """Forget an inode the kernel no longer knows that no path leads to."""
        if ino == pyfuse3.ROOT_INODE or self._nlookup.get(ino, 0) > 0:
            return
        scratch = self._scratch_by_ino.get(ino)
        if scratch is not None:
            if scratch.linked or scratch.opened:
                return
            del self._scratch_by_ino[ino]
        path = self._path_of.get(ino)
        # Tree paths keep their number for good (there are few of them, and
        # a user who leaves and comes back gets the same inode); scratch
        # inodes and the aliases a rename leaves behind go.
        if path is not None and self._ino_of.get(path) != ino:
            del self._path_of[ino]

    # -------------------------------------------------------- attributes

    def _entry(
        self,
        ino: int,
        *,
        st_mode: int,
        uid: int,
        gid: int,
        size: int,
        mtime: float,
        nlink: int,
        timeouts: tuple[float, float],
    ) -> EntryAttributes:
        e = EntryAttributes()
        e.st_ino = ino
        e.generation = 0
        e.entry_timeout, e.attr_timeout = timeouts
        e.st_mode = st_mode
        e.st_nlink = nlink
        e.st_uid = uid
        e.st_gid = gid
        e.st_rdev = 0
        e.st_size = size
        e.st_blksize = 4096
        e.st_blocks = (size + 511) // 512
        t = _ns(mtime)
        e.st_atime_ns = e.st_mtime_ns = e.st_ctime_ns = t
        return e

    @staticmethod
    def _timeouts(node: Node) -> tuple[float, float]:
        """How long the kernel may cache a lookup and the attributes: (entry, attr).

        Live content (contacts, settings, status, calls) is never cached so
        sizes are right for ``>>`` and ``tail``; a setting's entry comes and
        goes with the key, so it is not cached either. The rest only changes
        with membership, which :meth:`_on_tree_change` invalidates.
        """
        if node.is_dir:
            return STATIC_TIMEOUT, STATIC_TIMEOUT
        if node.kind is Kind.SETTING:
            return 0.0, 0.0
        return STATIC_TIMEOUT, 0.0

    def _node_entry(self, ino: int, node: Node, size: int, mtime: float, nlink: int) -> EntryAttributes:
        return self._entry(ino, st_mode=node.st_mode, uid=node.uid, gid=node.gid, size=size,
                           mtime=mtime, nlink=nlink, timeouts=self._timeouts(node))

    def _scratch_entry(self, s: _Scratch) -> EntryAttributes:
        return self._entry(s.ino, st_mode=stat.S_IFREG | s.mode, uid=s.uid, gid=s.gid,
                           size=len(s.data), mtime=s.mtime, nlink=1 if s.linked else 0,
                           timeouts=(0.0, 0.0))

    def _attributes(self, ino: int, now: float) -> EntryAttributes:
        scratch = self._scratch_by_ino.get(ino)
        if scratch is not None:
            return self._scratch_entry(scratch)
        path = self._path(ino)
        try:
            node = self.tree.resolve(path)
            if node.is_dir or node.kind in STREAMS:
                a = self.tree.attributes(path, now)
                return self._node_entry(ino, a.node, a.size, a.mtime, a.nlink)
            # As Tree.attributes, keeping the content for the open that follows.
            data = self.tree.render(path, now)
        except TreeError as e:
            pending = self._pending.get(path)
            if e.errno != errno.ENOENT or pending is None:
                raise
            return self._node_entry(ino, pending[0], 0, now, 1)
        if path not in self._rendered and len(self._rendered) >= RENDER_SLOTS:
            self._rendered.clear()
        self._rendered[path] = (now, data)
        return self._node_entry(ino, node, len(data), self.tree.mtime(node, now), 1)

    def _render(self, path: str, now: float) -> bytes:
        """The content at ``path`` now, or as rendered for getattr a moment ago."""
        kept = self._rendered.pop(path, None)
        if kept is not None and 0.0 <= now - kept[0] <= RENDER_REUSE:
            return kept[1]
        return self.tree.render(path, now)

    def _dir_path(self, ino: int) -> str:
        if ino in self._scratch_by_ino:
            raise FUSEError(errno.ENOTDIR)
        return self._path(ino)

    def _may_hold_scratch(self, dir_path: str) -> bool:
        node = self.tree.lookup(dir_path)
        return node is not None and node.kind in (Kind.USER, Kind.CONFIG)

    # ------------------------------------------------------------ lookup

    @_handler
    async def lookup(self, parent_inode: int, name: bytes, ctx: RequestContext) -> EntryAttributes:
        parent = self._dir_path(parent_inode)
        text = os.fsdecode(name)
        now = self._clock()
        if text == ".":
            ino = parent_inode
        elif text == "..":
            ino = self._ino(_dirname(parent))
        else:
            path = _join(parent, text)
            scratch = self._scratch_by_path.get(path)
            if scratch is not None:
                self._counted(scratch.ino)
                return self._scratch_entry(scratch)
            self.tree.resolve(path)
            ino = self._ino(path)
        entry = self._attributes(ino, now)
        self._counted(ino)
        return entry

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        for ino, count in inode_list:
            left = self._nlookup.get(ino, 0) - count
            if left > 0:
                self._nlookup[ino] = left
            else:
                self._nlookup.pop(ino, None)
                self._maybe_drop(ino)

    @_handler
    async def getattr(self, inode: int, ctx: RequestContext) -> EntryAttributes:
        return self._attributes(inode, self._clock())

    @_handler
    async def setattr(
        self,
        inode: int,
        attr: EntryAttributes,
        fields: SetattrFields,
        fh: int | None,
        ctx: RequestContext,
    ) -> EntryAttributes:
        now = self._clock()
        scratch = self._scratch_by_ino.get(inode)
        if scratch is not None:
            # A scratch file is the user's own temporary file: let sed copy
            # the original's owner and mode onto it (the kernel has already
            # checked that the caller may).
            if fields.update_size:
                self._resize_scratch(scratch, attr.st_size)
            if fields.update_mode:
                scratch.mode = stat.S_IMODE(attr.st_mode)
            if fields.update_uid:
                scratch.uid = attr.st_uid
            if fields.update_gid:
                scratch.gid = attr.st_gid
            scratch.mtime = now
            return self._scratch_entry(scratch)
        current = self._attributes(inode, now)
        if fields.update_mode and stat.S_IMODE(attr.st_mode) != stat.S_IMODE(current.st_mode):
            raise FUSEError(errno.EPERM)
        if fields.update_uid and attr.st_uid != current.st_uid:
            raise FUSEError(errno.EPERM)
        if fields.update_gid and attr.st_gid != current.st_gid:
            raise FUSEError(errno.EPERM)
        if fields.update_size:
            handle = self._handles.get(fh) if fh is not None else None
            if handle is not None and handle.writable:
                self._truncate_handle(handle, attr.st_size, now)
            else:
                await self._truncate_path(self._path(inode), attr.st_size, now)
        return self._attributes(inode, now)

    @staticmethod
    def _resize(buf: bytearray, size: int) -> None:
        if size > MAX_WRITE:
            raise FUSEError(errno.EFBIG)
        if size < len(buf):
            del buf[size:]
        else:
            buf.extend(bytes(size - len(buf)))

    def _truncate_handle(self, h: _Handle, size: int, now: float) -> None:
        """``ftruncate``: the buffer changes now, the tree at the next flush."""
        if h.error:
            raise FUSEError(h.error)
        if h.append:
            # The buffer holds only what this handle appended; a truncation
            # is about the whole file, so it becomes a replacing write.
            h.buf[:0] = self.tree.render(h.path, now)
            h.append = False
        self._resize(h.buf, size)
        h.dirty = True
        h.truncate_pending = False

    async def _truncate_path(self, path: str, size: int, now: float) -> None:
        """``truncate(2)`` by name: no open file to buffer in, so commit at once."""
        self.tree.check_open(path, write=True)
        data = bytearray(self.tree.render(path, now))
        self._resize(data, size)
        await self._commit(path, bytes(data), append=False)

    # ----------------------------------------------------------- reading

    @_handler
    async def open(self, inode: int, flags: int, ctx: RequestContext) -> FileInfo:
        path = self._path_of.get(inode)
        if path is not None:
            # Read your writes: a commit still on its way to the disk (one
            # at release, which close() does not wait for) comes first.
            for event in list(self._in_flight.get(path, ())):
                await event.wait()
            node = self.tree.lookup(path)
            if node is not None and node.kind in STREAMS:
                return self._open_stream(inode, node, flags, ctx)
        return self._open(inode, flags, self._clock())

    def _open_stream(self, ino: int, node: Node, flags: int, ctx: RequestContext) -> FileInfo:
        """An event file: a cursor of its own, within the readers' limits (EBUSY)."""
        self.tree.check_open(node.path, write=(flags & os.O_ACCMODE) != os.O_RDONLY)
        uid = ctx.uid
        if uid == 0:
            full = self._readers.get(0, 0) >= EVENT_READERS_ROOT
        else:
            users = sum(n for u, n in self._readers.items() if u != 0)
            full = (self._readers.get(uid, 0) >= EVENT_READERS_PER_USER
                    or users >= EVENT_READERS_USERS)
        if full:
            log.info("srfs: uid %d has too many event files open", uid)
            raise FUSEError(errno.EBUSY)
        self._readers[uid] = self._readers.get(uid, 0) + 1
        h = _Handle(ino, node.path, None, readable=True, writable=False, append=False,
                    stream=self.tree.events.open(node.user), uid=uid, pid=ctx.pid,
                    nonblocking=bool(flags & os.O_NONBLOCK))
        return self._file_info(h)

    def _open(self, ino: int, flags: int, now: float) -> FileInfo:
        mode = flags & os.O_ACCMODE
        readable = mode in (os.O_RDONLY, os.O_RDWR)
        writable = mode in (os.O_WRONLY, os.O_RDWR)
        truncate = writable and bool(flags & os.O_TRUNC)
        append = writable and bool(flags & os.O_APPEND)
        scratch = self._scratch_by_ino.get(ino)
        if scratch is not None:
            if truncate:
                self._resize_scratch(scratch, 0)
                scratch.mtime = now
            scratch.opened += 1
            h = _Handle(ino, scratch.path, scratch, readable, writable, append)
            return self._file_info(h)
        path = self._path(ino)
        pending = False
        try:
            node = self.tree.check_open(path, write=writable)
            current = self.tree.render(path, now) if writable else self._render(path, now)
        except TreeError as e:
            if e.errno != errno.ENOENT or path not in self._pending:
                raise
            node, current, pending = self._pending[path][0], b"", True
        h = _Handle(ino, path, None, readable, writable, append=append and not truncate,
                    pending=pending, by_line=node.kind is Kind.CONTACTS,
                    one_line=node.kind is Kind.SETTING)
        if readable:
            h.snapshot = current
        if truncate:
            # Committing the truncation now would drop every registration
            # for a moment (wtmp logouts and all) before the new lines
            # arrive: it waits for the first commit, or release.
            h.truncate_pending = True
        elif writable and not append:
            h.buf = bytearray(current)
        if pending:
            node, count = self._pending[path]
            self._pending[path] = (node, count + 1)
        return self._file_info(h)

    def _file_info(self, h: _Handle) -> FileInfo:
        fh = self._next_fh
        self._next_fh += 1
        self._handles[fh] = h
        # direct_io: every read reaches the snapshot, never a page cache
        # that would serve old content or cut it at a stale size; the real
        # st_size (see _entry) is still what `>>` appends at and `tail`
        # seeks from.
        return FileInfo(fh=fh, direct_io=True, keep_cache=False)

    def _handle(self, fh: int) -> _Handle:
        h = self._handles.get(fh)
        if h is None:
            raise FUSEError(errno.EBADF)
        return h

    @_handler
    async def read(self, fh: int, off: int, size: int) -> bytes:
        h = self._handle(fh)
        if h.stream is not None:
            return await self._read_stream(fh, h, h.stream, off, size)
        if h.scratch is not None:
            data: bytes | bytearray = h.scratch.data
        elif h.writable and not h.append:
            # O_RDWR without O_APPEND: the caller reads what it has written.
            data = h.buf
        else:
            data = h.snapshot
        return bytes(data[off:off + size])

    async def _read_stream(self, fh: int, h: _Handle, cursor: Cursor, off: int,
                           size: int) -> bytes:
        """The next lines of an event file, waiting for one when there are none yet.

        A read that would wait fails with EAGAIN for an open with
        O_NONBLOCK, EBUSY while another read of the same open file waits
        (each waiting read holds one of pyfuse3's tasks), and EINTR when
        the process that opened the file gets a signal (see
        :data:`INTERRUPT_POLL`). When the filesystem goes away, end of file.
        """
        while True:
            if self._streams_ended:
                return b""
            data = cursor.read(off, size)
            if data is not None:
                return data
            if h.nonblocking:
                raise FUSEError(errno.EAGAIN)
            if h.waiting:
                raise FUSEError(errno.EBUSY)
            arrived = self._arrivals.get(cursor.log)
            if arrived is None:
                arrived = self._arrivals[cursor.log] = trio.Event()
            h.waiting = True
            with trio.CancelScope() as scope:
                self._waiting[fh] = _Waiting(h.pid, scope)
                self._waiting_changed.set()
                try:
                    await arrived.wait()
                finally:
                    h.waiting = False
                    del self._waiting[fh]
            if scope.cancelled_caught:
                raise FUSEError(errno.EINTR)

    def _on_event(self, stream: EventLog) -> None:
        """A line came to ``stream``: wake its waiting reads and pollers."""
        arrived = self._arrivals.pop(stream, None)
        if arrived is not None:
            arrived.set()
        pollers = self._pollers.pop(stream, None)
        if pollers:
            for ph in pollers.values():
                self._notify_poll(ph)

    @staticmethod
    def _notify_poll(ph: pyfuse3.PollHandle) -> None:
        try:
            ph.notify()
        except (OSError, RuntimeError) as e:
            # The poller is gone (ENOENT), or the mount is: nothing to wake.
            log.debug("srfs: poll notification failed: %s", e)

    async def poll(self, inode: int, fh: int, poll_handle: pyfuse3.PollHandle | None,
                   ctx: RequestContext) -> int:
        h = self._handles.get(fh)
        if h is None or h.stream is None:
            # What the kernel assumes of a file without poll: always ready.
            return select.POLLIN | select.POLLRDNORM | select.POLLOUT | select.POLLWRNORM
        if self._streams_ended or h.stream.ready():
            return select.POLLIN | select.POLLRDNORM
        if poll_handle is not None:
            self._pollers.setdefault(h.stream.log, {})[fh] = poll_handle
        return 0

    async def watch_interrupts(self) -> None:
        """End a waiting read with EINTR once its reader has a signal pending.

        Runs until cancelled. Only while reads wait: every
        :data:`INTERRUPT_POLL` seconds, one look at ``/proc/<pid>/status``
        of each process that opened a file with a read waiting, in a
        worker thread.
        """
        while True:
            if not self._waiting:
                self._waiting_changed = trio.Event()
                await self._waiting_changed.wait()
            await trio.sleep(INTERRUPT_POLL)
            pids = sorted({w.pid for w in self._waiting.values() if w.pid > 0})
            if not pids:
                continue
            signalled = await trio.to_thread.run_sync(signals_pending, pids)
            for waiting in list(self._waiting.values()):
                if waiting.pid in signalled:
                    waiting.scope.cancel()

    def end_streams(self) -> None:
        """The filesystem is going away: every read of an event file ends (EOF).

        :meth:`streams_closed` then waits for the readers woken here to
        close their files. A second call changes nothing.
        """
        if self._streams_ended:
            return
        self._streams_ended = True
        self._ending = set(self._waiting)
        if not self._ending:
            self._ended.set()
        for arrived in self._arrivals.values():
            arrived.set()
        self._arrivals.clear()
        for pollers in self._pollers.values():
            for ph in pollers.values():
                self._notify_poll(ph)
        self._pollers.clear()

    async def streams_closed(self) -> None:
        """Until the readers woken by :meth:`end_streams` have closed their files."""
        await self._ended.wait()

    async def close_streams(self) -> None:
        """End every event stream; give their readers :data:`STREAM_CLOSE_GRACE` to close.

        Called before the mount goes away, by whoever unmounts it: a reader
        then sees end of file and its close still reaches the filesystem.
        """
        self.end_streams()
        with trio.move_on_after(STREAM_CLOSE_GRACE, shield=True):
            await self.streams_closed()

    # ----------------------------------------------------------- writing

    @_handler
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        h = self._handle(fh)
        if not h.writable:
            raise FUSEError(errno.EBADF)
        if h.scratch is not None:
            scratch = h.scratch
            at = len(scratch.data) if h.append else off
            end = at + len(buf)
            if end > len(scratch.data):
                self._resize_scratch(scratch, end)
            scratch.data[at:end] = buf
            scratch.mtime = self._clock()
            return len(buf)
        if h.error:
            raise FUSEError(h.error)
        # With O_APPEND the kernel's offset comes from its idea of i_size,
        # which is no base for the tree's file: appends go to the end.
        at = len(h.buf) if h.append else off
        # In place: a refused write poisons the handle, so the buffer is
        # never used again and need not be restored.
        try:
            self._put(h.buf, at, buf)
            data = h.buf
            if h.by_line:
                # A 1 MiB cp arrives in 128 KiB writes; judging the whole
                # buffer each time would hold the trio thread for long.
                data = h.buf[h.buf.rfind(b"\n", 0, min(at, len(h.buf))) + 1:]
            self.tree.check_write(h.path, bytes(data), self._clock(), complete=False,
                                  append=h.append)
        except (TreeError, FUSEError) as e:
            h.error = e.errno
            log.debug("write to %s refused: %s", quote(h.path), e)
            raise
        h.dirty = True
        if h.one_line and h.buf.endswith(b"\n"):
            try:
                await self._commit_handle(h)
            except (TreeError, FUSEError) as e:
                h.error = e.errno
                raise
        return len(buf)

    @staticmethod
    def _put(data: bytearray, off: int, buf: bytes) -> None:
        end = off + len(buf)
        if end > MAX_WRITE:
            # What ~/.sr/usrloc may hold; scratch files are memory too.
            raise FUSEError(errno.EFBIG)
        if off > len(data):
            data.extend(bytes(off - len(data)))
        data[off:end] = buf

    @_handler
    async def flush(self, fh: int) -> None:
        h = self._handle(fh)
        # The shell's dup2() closes the fd before anything is written: such
        # a flush must not commit the (empty) buffer. A poisoned handle has
        # already told the writer.
        if h.scratch is None and h.writable and h.dirty and not h.error:
            await self._commit_handle(h)

    @_handler
    async def fsync(self, fh: int, datasync: bool) -> None:
        h = self._handle(fh)
        if h.error:
            raise FUSEError(h.error)
        if h.scratch is None and h.writable and h.dirty:
            await self._commit_handle(h)

    async def release(self, fh: int) -> None:
        h = self._handles.pop(fh, None)
        if h is None:
            return
        if h.stream is not None:
            self.tree.events.close(h.stream)
            if fh in self._ending:
                self._ending.discard(fh)
                if not self._ending:
                    self._ended.set()
            left = self._readers.get(h.uid, 0) - 1
            if left > 0:
                self._readers[h.uid] = left
            else:
                self._readers.pop(h.uid, None)
            pollers = self._pollers.get(h.stream.log)
            if pollers is not None:
                pollers.pop(fh, None)
                if not pollers:
                    del self._pollers[h.stream.log]
            return
        try:
            if h.scratch is not None:
                h.scratch.opened -= 1
                self._settle(h.scratch)
                self._maybe_drop(h.scratch.ino)
            elif h.writable and not h.error and (h.dirty or h.truncate_pending):
                # Nobody waits for release: errors can only be logged.
                await self._commit_handle(h)
        except (TreeError, FUSEError) as e:
            log.info("commit of %s at close failed: %s", quote(h.path), e)
        except Exception:
            log.exception("srfs: release of %s failed", quote(h.path))
        finally:
            held = self._pending.get(h.path) if h.pending else None
            if held is not None:
                if held[1] > 1:
                    self._pending[h.path] = (held[0], held[1] - 1)
                else:
                    del self._pending[h.path]

    async def _commit_handle(self, h: _Handle) -> None:
        data = bytes(h.buf)
        h.dirty = False
        try:
            result = self.tree.prepare(h.path, data, append=h.append, now=self._clock())
        except TreeError as e:
            h.error = e.errno
            log.debug("write to %s refused: %s", quote(h.path), e.reason)
            raise
        h.truncate_pending = False
        if h.append:
            # Only what was committed: a write may come in while on_commit runs.
            del h.buf[: len(data)]
        await self._deliver(result, h.path)

    async def _commit(self, path: str, data: bytes, *, append: bool) -> None:
        result = self.tree.prepare(path, data, append=append, now=self._clock())
        await self._deliver(result, path)

    async def _deliver(self, result: WriteResult, path: str) -> None:
        """Make a validated write durable and apply it: ``on_commit``'s job, or the tree's."""
        if not result.changes_something:
            return
        if self._on_commit is None:
            self.tree.apply(result, self._clock())
            return
        done = trio.Event()
        self._in_flight.setdefault(path, []).append(done)
        try:
            awaitable = self._on_commit(result)
            if awaitable is not None:
                await awaitable
        except OSError as e:
            # on_commit logs why it refused, once, naming the file; a second
            # line here would double every refusal in the log.
            log.debug("srfs: applying a commit failed: %s", e)
            raise FUSEError(e.errno or errno.EIO) from None
        except Exception:
            log.exception("srfs: on_commit failed")
            raise FUSEError(errno.EIO) from None
        finally:
            done.set()
            waiting = self._in_flight[path]
            waiting.remove(done)
            if not waiting:
                del self._in_flight[path]

    # ------------------------------------------ creating, renaming, removing

    @_handler
    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: RequestContext
    ) -> tuple[FileInfo, EntryAttributes]:
        parent = self._dir_path(parent_inode)
        path = _join(parent, os.fsdecode(name))
        now = self._clock()
        try:
            node = self.tree.check_create(path)
        except TreeError as e:
            # Only mkstemp-style creates get a scratch file: a plain
            # "echo x > config/typo" must hear that typo is no setting.
            if e.errno != errno.EPERM or not flags & os.O_EXCL or not self._may_hold_scratch(parent):
                raise
            return self._create_scratch(path, flags, ctx, now)
        if path in self._scratch_by_path or (
            flags & os.O_EXCL and (self.tree.lookup(path) is not None or path in self._pending)
        ):
            raise FUSEError(errno.EEXIST)
        ino = self._ino(path)
        # A key being created is not in the tree until its first commit; until
        # then this open (and getattr on it) stands on the node check_create gave.
        fresh = self.tree.lookup(path) is None
        if fresh:
            held = self._pending.get(path)
            self._pending[path] = (node, held[1] if held else 0)
        try:
            entry = self._attributes(ino, now)
            info = self._open(ino, flags, now)
        finally:
            held = self._pending.get(path)
            if fresh and held is not None and held[1] == 0:
                del self._pending[path]
        self._counted(ino)
        return info, entry

    def _create_scratch(
        self, path: str, flags: int, ctx: RequestContext, now: float
    ) -> tuple[FileInfo, EntryAttributes]:
        self.scratch_quota.add_file(ctx.uid)
        scratch = _Scratch(self._new_ino(), path, bytearray(), ctx.uid, ctx.gid, 0o600, now,
                           owner=ctx.uid)
        self._scratch_by_path[path] = scratch
        self._scratch_by_ino[scratch.ino] = scratch
        self._path_of[scratch.ino] = path
        info = self._open(scratch.ino, flags, now)
        self._counted(scratch.ino)
        return info, self._scratch_entry(scratch)

    @_handler
    async def rename(
        self,
        parent_inode_old: int,
        name_old: bytes,
        parent_inode_new: int,
        name_new: bytes,
        flags: int,
        ctx: RequestContext,
    ) -> None:
        old = _join(self._dir_path(parent_inode_old), os.fsdecode(name_old))
        new_parent = self._dir_path(parent_inode_new)
        new = _join(new_parent, os.fsdecode(name_new))
        if flags & pyfuse3.RENAME_EXCHANGE:
            raise FUSEError(errno.EINVAL)
        scratch = self._scratch_by_path.get(old)
        if scratch is None:
            self.tree.resolve(old)
            raise TreeError(errno.EPERM, f"{old} cannot be renamed")
        if new == old:
            return
        noreplace = bool(flags & pyfuse3.RENAME_NOREPLACE)
        target = self._scratch_by_path.get(new)
        if target is not None:
            if noreplace:
                raise FUSEError(errno.EEXIST)
            self._unlink_scratch(target)
            self._move_scratch(scratch, new)
            return
        node = self.tree.lookup(new)
        if node is None:
            try:
                self.tree.check_create(new)
            except TreeError as e:
                if e.errno != errno.EPERM or not self._may_hold_scratch(new_parent):
                    raise
                self._move_scratch(scratch, new)
                return
        elif noreplace:
            raise FUSEError(errno.EEXIST)
        # The commit: the errno goes back to the renaming process, and a
        # commit that fails leaves the scratch file where it was.
        result = self.tree.prepare(new, bytes(scratch.data), append=False, now=self._clock())
        await self._deliver(result, new)
        if self._scratch_by_path.get(old) is not scratch:
            return  # removed or renamed while the commit was written
        del self._scratch_by_path[old]
        scratch.linked = False
        self._scratch_by_ino.pop(scratch.ino, None)
        self._settle(scratch)
        # The kernel now has the scratch inode under the new name: let that
        # number stand for the node until the kernel forgets it.
        self._path_of[scratch.ino] = new
        self._maybe_drop(scratch.ino)

    def _move_scratch(self, scratch: _Scratch, new: str) -> None:
        del self._scratch_by_path[scratch.path]
        scratch.path = new
        self._scratch_by_path[new] = scratch
        self._path_of[scratch.ino] = new

    def _unlink_scratch(self, scratch: _Scratch) -> None:
        del self._scratch_by_path[scratch.path]
        scratch.linked = False
        self._settle(scratch)
        self._maybe_drop(scratch.ino)

    def _resize_scratch(self, scratch: _Scratch, size: int) -> None:
        """Make ``scratch`` ``size`` bytes long, within its owner's quota (zeros added)."""
        if size > MAX_WRITE:
            raise FUSEError(errno.EFBIG)
        data = scratch.data
        # Counted before the memory is taken: a refusal changes nothing.
        self.scratch_quota.grow(scratch.owner, size - len(data))
        if size < len(data):
            del data[size:]
        else:
            data.extend(bytes(size - len(data)))

    def _settle(self, scratch: _Scratch) -> None:
        """Give a scratch file's memory back once no name and no open file holds it.

        The kernel may still know the inode (it shows with size 0 then): the
        content can no longer be reached, so it need not be kept.
        """
        if scratch.linked or scratch.opened or scratch.settled:
            return
        self.scratch_quota.drop_file(scratch.owner, len(scratch.data))
        scratch.data = bytearray()
        scratch.settled = True

    @_handler
    async def unlink(self, parent_inode: int, name: bytes, ctx: RequestContext) -> None:
        path = _join(self._dir_path(parent_inode), os.fsdecode(name))
        scratch = self._scratch_by_path.get(path)
        if scratch is not None:
            self._unlink_scratch(scratch)
            return
        change = self.tree.prepare_unlink(path)
        await self._deliver(WriteResult(config=change), path)

    # The tree's shape is fixed: no directories, links or special files.

    @_handler
    async def mkdir(self, parent_inode: int, name: bytes, mode: int, ctx: RequestContext) -> EntryAttributes:
        raise FUSEError(errno.EPERM)

    @_handler
    async def mknod(
        self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: RequestContext
    ) -> EntryAttributes:
        raise FUSEError(errno.EPERM)

    @_handler
    async def symlink(
        self, parent_inode: int, name: bytes, target: bytes, ctx: RequestContext
    ) -> EntryAttributes:
        raise FUSEError(errno.EPERM)

    @_handler
    async def link(
        self, inode: int, new_parent_inode: int, new_name: bytes, ctx: RequestContext
    ) -> EntryAttributes:
        raise FUSEError(errno.EPERM)

    @_handler
    async def rmdir(self, parent_inode: int, name: bytes, ctx: RequestContext) -> None:
        path = _join(self._dir_path(parent_inode), os.fsdecode(name))
        self.tree.resolve(path)
        raise FUSEError(errno.EPERM)

    # ------------------------------------------------------- directories

    @_handler
    async def opendir(self, inode: int, ctx: RequestContext) -> int:
        path = self._dir_path(inode)
        names = self.tree.listdir(path)
        entries = [(".", inode), ("..", self._ino(_dirname(path)))]
        entries += [(name, self._ino(_join(path, name))) for name in names]
        scratch = sorted(
            (s.path.rsplit("/", 1)[1], s.ino) for s in self._scratch_by_path.values()
            if s.parent == path
        )
        fh = self._next_fh
        self._next_fh += 1
        self._dirs[fh] = _DirHandle(path, entries + scratch)
        return fh

    @_handler
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        d = self._dirs.get(fh)
        if d is None:
            raise FUSEError(errno.EBADF)
        now = self._clock()
        for index in range(start_id, len(d.entries)):
            name, ino = d.entries[index]
            try:
                entry = self._attributes(ino, now)
            except (TreeError, FUSEError):
                continue  # gone since opendir
            if not pyfuse3.readdir_reply(token, os.fsencode(name), entry, index + 1):
                return
            if name not in (".", ".."):
                self._counted(ino)

    async def releasedir(self, fh: int) -> None:
        self._dirs.pop(fh, None)

    @_handler
    async def statfs(self, ctx: RequestContext) -> pyfuse3.StatvfsData:
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = 4096
        s.f_blocks = s.f_bfree = s.f_bavail = 0
        s.f_files = len(self._path_of)
        s.f_ffree = s.f_favail = 0
        s.f_namemax = 255
        return s

    # ------------------------------------------------------ invalidation

    def _on_tree_change(self, path: str) -> None:
        """Tree listener: drop kernel caches that a timeout would keep stale.

        Contacts and settings are never cached (timeout 0), so only
        membership (the root's entries) and directory attributes matter.
        Renders kept for the next open of a changed node are dropped.
        """
        if self._rendered:
            if path == "/":
                self._rendered.clear()
            else:
                below = path + "/"
                for kept in [p for p in self._rendered if p == path or p.startswith(below)]:
                    del self._rendered[kept]
        if not self._accepting:
            return
        if path == "/":
            self._forget_scratch_of_departed()
            self._queue(pyfuse3.ROOT_INODE, None)
            for child, ino in list(self._ino_of.items()):
                if child.count("/") == 1 and child != "/" and self._nlookup.get(ino, 0) > 0:
                    if self.tree.lookup(child) is None:
                        self._queue(pyfuse3.ROOT_INODE, os.fsencode(child[1:]))
            return
        # Every registration lands here as "/<user>/contacts": only a config
        # directory (its mtime and nlink, cached for 1 s) needs a notification.
        if path.count("/") != 2 or not path.endswith("/config"):
            return
        node_ino = self._ino_of.get(path)
        if node_ino is not None and self._nlookup.get(node_ino, 0) > 0:
            self._queue(node_ino, None)

    def _forget_scratch_of_departed(self) -> None:
        for scratch in list(self._scratch_by_path.values()):
            if self.tree.lookup(scratch.parent) is None:
                self._unlink_scratch(scratch)

    def _queue(self, ino: int, name: bytes | None) -> None:
        item = (ino, name)
        if item in self._inval_queued:
            return
        self._inval_queued.add(item)
        self._inval_send.send_nowait(item)

    async def run_invalidations(self) -> None:
        """Send queued invalidations to the kernel until cancelled.

        Each call runs in a worker thread: ``invalidate_entry`` waits for
        any request in flight on that directory, and waiting for it in the
        trio thread (which has to answer that request) deadlocks the whole
        daemon in D state. The thread is never abandoned: a notification
        still in the kernel must finish before the session is destroyed.
        """
        limiter = trio.CapacityLimiter(1)
        async for item in self._inval_receive:
            self._inval_queued.discard(item)
            ino, name = item
            try:
                if name is None:
                    await trio.to_thread.run_sync(pyfuse3.invalidate_inode, ino, limiter=limiter)
                else:
                    await trio.to_thread.run_sync(
                        pyfuse3.invalidate_entry, ino, name, limiter=limiter
                    )
            except OSError as e:
                # ENOENT: the kernel never looked it up, which is fine; one
                # such answer must not stop the others.
                if e.errno != errno.ENOENT:
                    log.warning("srfs: cache invalidation of %d/%s failed: %s", ino,
                                quote(os.fsdecode(name or b"")), e)

    def close(self) -> None:
        """Stop queueing invalidations (the mount is gone)."""
        self._accepting = False
        self._inval_queued.clear()


def signals_pending(pids: Sequence[int]) -> set[int]:
    """Blocking: the processes among ``pids`` with a signal pending that they do not block.

    A process killed by a signal while it waits in a FUSE read shows
    SIGKILL pending; one that catches the signal (Python's Ctrl-C) or is
    being stopped (Ctrl-Z) shows that signal. A process that is gone, or
    that ``/proc`` does not show, has none.
    """
    out: set[int] = set()
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status", "rb") as f:
                text = f.read()
        except OSError:
            continue
        masks: dict[bytes, int] = {}
        for line in text.split(b"\n"):
            name, _, value = line.partition(b":")
            if name in (b"SigPnd", b"ShdPnd", b"SigBlk"):
                try:
                    masks[name] = int(value.strip(), 16)
                except ValueError:
                    continue
        pending = masks.get(b"SigPnd", 0) | masks.get(b"ShdPnd", 0)
        if pending & ~masks.get(b"SigBlk", 0):
            out.add(pid)
    return out


# ----------------------------------------------------------------- mounting


class MountError(RuntimeError):
    """The mountpoint cannot be used (something else mounted there, or it is busy)."""


@dataclass(frozen=True, slots=True)
class MountEntry:
    """One line of ``/proc/self/mountinfo`` (the fields srfs needs)."""

    mount_point: str
    fstype: str
    source: str
    device: str
    """``major:minor``; the minor is the FUSE connection number under fusectl."""


_OCTAL_ESCAPE = re.compile(rb"\\([0-7]{3})")


def _unescape(field_: bytes) -> str:
    return os.fsdecode(_OCTAL_ESCAPE.sub(lambda m: bytes([int(m[1], 8) & 0xFF]), field_))


def parse_mountinfo(data: bytes) -> list[MountEntry]:
    """The entries of a mountinfo text (proc(5)); malformed lines are skipped."""
    out: list[MountEntry] = []
    for line in data.split(b"\n"):
        fields = line.split(b" ")
        try:
            sep = fields.index(b"-", 6)
            out.append(MountEntry(_unescape(fields[4]), _unescape(fields[sep + 1]),
                                  _unescape(fields[sep + 2]), fields[2].decode("ascii")))
        except (ValueError, IndexError, UnicodeDecodeError):
            continue
    return out


def mount_entries(mountpoint: str) -> list[MountEntry]:
    """The mounts at ``mountpoint``, bottom first (``/proc/self/mountinfo`` order)."""
    with open("/proc/self/mountinfo", "rb") as f:
        data = f.read()
    where = _canonical(mountpoint)
    return [e for e in parse_mountinfo(data) if e.mount_point == where]


def mounted(mountpoint: str) -> bool:
    """Whether anything is mounted at ``mountpoint``, dead FUSE mounts included.

    ``os.path.ismount`` says False for a mount whose daemon died (its stat
    fails with ENOTCONN), so mountinfo is the only reliable answer.
    """
    return bool(mount_entries(mountpoint))


def _canonical(mountpoint: str) -> str:
    # Resolve links in the parent only: touching the mountpoint itself
    # would hang on a hung FUSE daemon.
    path = os.path.abspath(mountpoint)
    parent, base = os.path.split(path)
    if not base:
        return path
    return os.path.join(os.path.realpath(parent), base)


def _probe(mountpoint: str) -> str:
    """``live``, ``dead`` (ENOTCONN and the like) or ``hung`` (no answer in time)."""
    outcome: list[str] = []

    def stat_it() -> None:
        try:
            # statfs always reaches the filesystem's daemon; a stat of the
            # root may be answered from the kernel's attribute cache for a
            # while after the daemon died.
            os.statvfs(mountpoint)
            outcome.append("live")
        except OSError:
            outcome.append("dead")

    # A daemon thread: if the stat hangs on a hung daemon, it must not keep
    # this process from exiting.
    t = threading.Thread(target=stat_it, name="srfs-probe", daemon=True)
    t.start()
    t.join(PROBE_TIMEOUT)
    return outcome[0] if outcome else "hung"


def _detach(mountpoint: str) -> None:
    tool = shutil.which("fusermount3") or shutil.which("fusermount")
    cmd = [tool, "-u", "-z", mountpoint] if tool else ["umount", "-l", mountpoint]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise MountError(f"cannot unmount the stale mount at {mountpoint}: "
                         f"{done.stderr.strip() or done.returncode}")


def _mount_at(where: str) -> tuple[MountEntry, str] | None:
    """The top mount at ``where`` and its state: ``live``, ``dead`` or ``hung``.

    None when nothing is mounted there; :class:`MountError` for a
    filesystem other than FUSE, which sipd never touches.
    """
    entries = mount_entries(where)
    if not entries:
        return None
    top = entries[-1]
    if top.fstype != "fuse" and not top.fstype.startswith("fuse."):
        raise MountError(f"{where} has a {top.fstype} filesystem mounted on it")
    return top, _probe(where)


def _in_use(where: str, top: MountEntry) -> MountError:
    return MountError(f"{where} is a working FUSE mount ({top.source}); is another sipd running?")


def cleanup_stale(mountpoint: str) -> bool:
    """Remove a FUSE mount left at ``mountpoint`` by a daemon that died; True if one was.

    Blocking (it runs ``fusermount3 -u -z``): call it before trio starts or
    through ``trio.to_thread``. A mount that still answers belongs to a
    running daemon and is left alone (:class:`MountError`), as is anything
    that is not FUSE.
    """
    where = _canonical(mountpoint)
    cleaned = False
    for _ in range(8):  # stale mounts can be stacked
        found = _mount_at(where)
        if found is None:
            return cleaned
        top, state = found
        if state == "live":
            raise _in_use(where, top)
        if state == "hung":
            log.warning("srfs: the FUSE mount at %s does not answer; detaching it", where)
        else:
            log.warning("srfs: removing the stale FUSE mount at %s", where)
        _detach(where)
        cleaned = True
    raise MountError(f"{where} stays mounted after unmounting")


FUSE_DEVICE = "/dev/fuse"
#: How a mount of this module shows in mountinfo (``subtype=srfs``).
FSTYPE = "fuse.srfs"


def check_mountpoint(mountpoint: str, *, running_srfs_ok: bool = False) -> None:
    """Raise :class:`MountError` when :func:`serve` could not mount there; change nothing.

    A stale FUSE mount passes (:func:`serve` removes it), and so does a
    mountpoint that does not exist yet (it is created). With
    ``running_srfs_ok`` a working srfs mount passes too: the check then
    runs beside the daemon it is meant to replace, whose mount goes when
    it stops. Blocking: a hung FUSE mount takes ``PROBE_TIMEOUT`` to tell.
    """
    where = _canonical(mountpoint)
    found = _mount_at(where)
    if found is not None:
        top, state = found
        if state == "live" and not (running_srfs_ok and top.fstype == FSTYPE):
            raise _in_use(where, top)
    else:
        # Nothing mounted, so a stat cannot hang on a dead FUSE daemon.
        try:
            st = os.stat(where)
        except FileNotFoundError:
            pass  # created at mount time, parents included
        except OSError as exc:
            raise MountError(f"{where}: {exc.strerror}") from None
        else:
            if not stat.S_ISDIR(st.st_mode):
                raise MountError(f"{where} is not a directory")
    try:
        fd = os.open(FUSE_DEVICE, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        raise MountError(f"cannot open {FUSE_DEVICE}: {exc.strerror}") from None
    os.close(fd)


def _prepare(mountpoint: str) -> None:
    cleanup_stale(mountpoint)
    try:
        os.mkdir(mountpoint, 0o755)
    except FileExistsError:
        return
    except FileNotFoundError:
        os.makedirs(os.path.dirname(mountpoint), 0o755, exist_ok=True)
        os.mkdir(mountpoint, 0o755)
    os.chmod(mountpoint, 0o755)  # whatever the umask


_session = threading.Lock()


async def serve(
    tree: Tree,
    mountpoint: str,
    *,
    on_commit: OnCommit | None = None,
    clock: Callable[[], float] = time.time,
    scratch_limits: ScratchLimits = DEFAULT_LIMITS,
    task_status: trio.TaskStatus[SrFs] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Mount ``tree`` at ``mountpoint`` and serve it until cancelled.

    Start it with ``await nursery.start(...)``: it creates the mountpoint
    if needed, removes a stale mount, mounts, and reports the :class:`SrFs`
    once mounted. Cancelling it finishes the requests in hand, then
    unmounts; it also returns (after unmounting) if the filesystem goes
    away on its own (``fusermount3 -u``). One mount per process: pyfuse3
    keeps its session in module state.
    """
    if not _session.acquire(blocking=False):
        raise RuntimeError("srfs: one FUSE mount per process, and one is being served")
    try:
        where = await trio.to_thread.run_sync(_canonical, mountpoint)
        ops = SrFs(tree, on_commit=on_commit, clock=clock, scratch_limits=scratch_limits)
        await trio.to_thread.run_sync(_prepare, where)
        options = set(pyfuse3.default_options)
        options |= {"allow_other", "fsname=srfs", "subtype=srfs", "default_permissions"}
        try:
            pyfuse3.init(ops, where, options)
        except RuntimeError as e:
            raise MountError(f"cannot mount srfs at {where}: {e}") from e
        log.info("srfs mounted at %s", where)
        try:
            await _run(ops, task_status)
        finally:
            ops.close()
            pyfuse3.close(unmount=True)
            log.info("srfs unmounted from %s", where)
    finally:
        _session.release()


async def _run(ops: SrFs, task_status: trio.TaskStatus[SrFs]) -> None:
    # The FUSE loop is shielded so that, on cancellation, it keeps
    # answering until the invalidation thread is done (that thread may be
    # waiting for a request only the loop can answer); then terminate()
    # lets handlers in progress finish before the session goes away.
    fuse_scope = trio.CancelScope(shield=True)
    fuse_done = trio.Event()

    async with trio.open_nursery() as nursery:

        async def run_fuse() -> None:
            try:
                with fuse_scope:
                    await pyfuse3.main(1, FUSE_MAX_TASKS)
            finally:
                fuse_done.set()
            nursery.cancel_scope.cancel()

        async def run_invalidations() -> None:
            try:
                await ops.run_invalidations()
            finally:
                # Reads waiting for events would hold terminate() up.
                await ops.close_streams()
                with trio.move_on_after(SHUTDOWN_GRACE, shield=True):
                    if not fuse_done.is_set():
                        pyfuse3.terminate()
                        await fuse_done.wait()
                fuse_scope.cancel()

        nursery.start_soon(run_fuse)
        nursery.start_soon(run_invalidations)
        nursery.start_soon(ops.watch_interrupts)
        task_status.started(ops)
