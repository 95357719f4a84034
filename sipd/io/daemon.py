"""The daemon: ordered start-up, one trio loop, signals, systemd readiness.

Start-up order: give up every capability start-up does not need
(:func:`~sipd.io.privileges.enter_startup`), the checks ``--check-config``
runs too (the SIP group, PAM, the admin files, the mountpoint:
:mod:`sipd.io.startup`), bind every socket (SIP's, and the metrics
endpoint's when ``metrics_listen`` is set), close utmp lines a crash left
open, reload every SIP user's ``~/.sr/usrloc`` and name the users without a
password for the realm, mount ``/run/sr`` and start the unmount helper,
give up every capability serving does not need
(:func:`~sipd.io.privileges.enter_running`), then serve and tell systemd
READY=1, and WATCHDOG=1 every half of ``WatchdogSec`` from then on. Any
failure before serving is one clear line and exit status 1.
SIGHUP reads ``sipd.conf`` again and puts the keys that can change live in
force (:mod:`sipd.io.reload`), and re-reads the admin files.
SIGTERM/SIGINT tell systemd STOPPING=1, have the unmount helper unmount
``/run/sr``, write what is not on disk yet, record the logouts, close the
sockets and exit 0.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import os
import secrets
import signal
import socket
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import trio

from sipd.auth.authenticator import Authenticator, RecentAccounts
from sipd.auth.challenges import ChallengePolicy
from sipd.auth.throttle import Throttle
from sipd.config import Settings, rtpengine_address
from sipd.core.identity import build_identity, interface_addresses
from sipd.core.numbers import NumberPlan
from sipd.core.ownership import Ownership
from sipd.core.work import run_inline
from sipd.endpoint import Endpoint
from sipd.io.accounts import (
    CACHED_HOME_FILES,
    control,
    drain_home_watch,
    forget_user,
    probe_directory,
    watch_account_files,
)
from sipd.io.compiled import build as compiled_build
from sipd.io.heap import collect_cycles, collect_young, trim_after_bursts, tune_gc
from sipd.io.limits import tcp_connection_cap
from sipd.io.mediarelay import NgSocket
from sipd.io.metrics import metrics_text
from sipd.io.metrics_http import MetricsServer, bind_metrics
from sipd.io.privileges import UnmountHelper, enter_running, enter_startup, privileged
from sipd.io.reload import ReloadRequest, watch_config
from sipd.io.startup import (
    check_host,
    check_tls,
    mount_failed,
    passwd_entries,
    report_missing_passwords,
    user_database_needed,
)
from sipd.io.transport import StartupError, Transports, bind_sockets
from sipd.media.relay import MediaRelay, Mode
from sipd.proxy.calltrack import CallTracker, acc_jobs, end_media_with_calls
from sipd.proxy.context import CallHooks, ProxyPolicy
from sipd.proxy.keepalive import KeepAlive
from sipd.proxy.proxy import Proxy
from sipd.proxy.targets import LocalAddresses
from sipd.proxy.users import HomeUsers
from sipd.registrar.admission import BindingRules
from sipd.registrar.persistence import Persistence, WtmpSessions
from sipd.registrar.register import Registrar, RegistrarPolicy
from sipd.registrar.server import Registration, Server
from sipd.sip.digest import NonceManager
from sipd.sip.errors import ParseError
from sipd.sip.transaction import TransactionLayer
from sipd.sip.uri import SipURI, parse_uri
from srfs.accounts import users
from srfs.accounts.directory import Account, Directory
from srfs.accounts.membership import Membership, group_membership
from srfs.accounts.state import SystemFiles, system_files
from srfs.addresses import parse_host
from srfs.entropy import random_bytes
from srfs.files.home import HomeError, SrDir
from srfs.files.homewatch import HomeWatch, open_home_watch
from srfs.files.usrloc import UsrlocFiles
from srfs.files.wtmp import UNAVAILABLE_REASON, LoginRecorder, WtmpError
from srfs.state.calls import CallTable
from srfs.state.location import Binding, LocationStore
from srfs.user import User

if TYPE_CHECKING:
    from sipd.io.statefs import StateFs

log = logging.getLogger("sipd")

WTMP_PATH = os.environ.get("SIPD_WTMP", "/var/log/wtmp")
UTMP_PATH = os.environ.get("SIPD_UTMP", "/var/run/utmp")


def notify_systemd(state: str) -> None:
    """sd_notify(3) without libsystemd: one datagram to $NOTIFY_SOCKET."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    if path.startswith("@"):
        path = "\0" + path[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.connect(path)
            s.sendall(state.encode())
    except OSError as exc:
        log.warning("cannot notify systemd: %s", exc)


class NeverThrottled:
    """Sources never throttled for failed authentications; SIGHUP may change the networks.

    Trusted trunks and the networks the admin named: an office's own PBX is
    never locked out by a phone behind it.
    """

    def __init__(self, ownership: Ownership,
                 networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]) -> None:
        self.ownership = ownership
        self.networks = networks

    def __call__(self, host: str) -> bool:
        addr = parse_host(host)
        return (self.ownership.trunk_user_at(host) is not None
                or (addr is not None and any(addr in net for net in self.networks)))


@dataclass
class Daemon:
    """Everything one running sipd owns.

    ``settings`` are the ones in force (the realm resolved); ``configured``
    what the file and the options said when they were last read, with the
    keys that wait for a restart at the values in force, so that each
    SIGHUP names them again.
    """

    settings: Settings
    endpoint: Endpoint
    store: LocationStore
    persistence: Persistence
    wtmp: WtmpSessions | None
    ownership: Ownership
    rules: BindingRules
    registrar: Registrar
    auth: Authenticator
    proxy: Proxy
    tracker: CallTracker
    never_throttled: NeverThrottled
    configured: Settings
    transports: Transports | None = None
    statefs: StateFs | None = None
    media: MediaRelay | None = None
    directory: Directory | None = None
    #: The SIP group's members: read at start, kept current by the state filesystem.
    membership: Membership | None = None
    #: inotify on the homes whose files are cached (see srfs.files.homewatch).
    home_watch: HomeWatch | None = None


def gateway_host(uri: str) -> str:
    """The host of the outbound proxy's URI ("" when there is none)."""
    if not uri:
        return ""
    try:
        # Checked to be a sip: URI when the configuration was read.
        parsed = parse_uri(uri)
    except ParseError:
        return ""
    return parsed.host if isinstance(parsed, SipURI) else ""


def advertised(bound: list[tuple[str, str, int]]) -> LocalAddresses:
    """What Via and Record-Route say for each (transport, family) we listen on.

    A wildcard listener is named by one of the host's own addresses, a
    non-loopback one when there is one: phones elsewhere must reach it.
    """
    found = sorted(interface_addresses(), key=lambda a: (a.startswith("127.") or a == "::1", a))
    out: dict[tuple[str, int], tuple[str, int]] = {}
    for transport, host, port in bound:
        family = 6 if ":" in host else 4
        if host in ("0.0.0.0", "::"):
            host = next((a for a in found if (":" in a) == (family == 6)), host)
        out.setdefault((transport, family), (host, port))
    return LocalAddresses(out)


def own_sockets(addresses: LocalAddresses, sockets: dict[int, tuple[str, int]]) -> None:
    """Name each UDP socket's address for the Via and Record-Route of what
    leaves from it; a wildcard socket goes by its kind's advertised address."""
    for conn, (host, port) in sockets.items():
        if host in ("0.0.0.0", "::"):
            found = addresses.by_kind.get(("udp", 6 if ":" in host else 4))
            if found is None:
                continue
            host, port = found
        addresses.by_socket[conn] = (host, port)


def build(settings: Settings, ports: set[int], hosts: list[str],
          bound: list[tuple[str, str, int]] | None = None, hooks: CallHooks | None = None,
          configured: Settings | None = None, home_watch: HomeWatch | None = None) -> Daemon:
    realm = settings.effective_realm()
    identity = build_identity(realm, settings.domains, hosts, ports)
    store = LocationStore()
    persistence = Persistence(
        store, UsrlocFiles(),
        write_through=settings.sync == "write-through",
        flush_interval=settings.flush_interval,
    )
    ownership = Ownership(settings.aliases, settings.trunks,
                          gateways=[gateway_host(settings.outbound_proxy)])
    ownership.plan = NumberPlan(settings.country_code, settings.national_prefix,
                                settings.international_prefix)
    rules = BindingRules(identity, ownership)
    pam_service = settings.pam_service if settings.pam else None
    directory = Directory(realm, settings.group, pam_service, ttl=settings.account_cache_ttl,
                          locked_suspends=settings.locked_suspends,
                          files=SystemFiles(system_files(pam_service)), watch=home_watch)
    never_throttled = NeverThrottled(ownership, settings.trusted_networks)
    home_users = HomeUsers(settings.group, directory.state, ttl=settings.account_cache_ttl,
                           watch=home_watch)

    def account_and_settings(name: str, rhost: str | None) -> Account | None:
        # The user's call settings come in the same worker trip as the
        # account, for a REGISTER as for a call: a phone's first call after
        # it registered then needs no trip of its own, where routing it took
        # one. A read of ~/.sr/config per account looked up, which a phone
        # refreshing its registration does not cause (the account is kept).
        generation = home_users.generation
        learned = False

        def read_settings(user: User, sr: SrDir | None) -> None:
            # Through the open that read ~/.sr/passwd: one open, not two.
            nonlocal learned
            home_users.learn_in(user, generation, sr)
            learned = True

        account = directory.account(name, rhost, also=read_settings)
        if account is not None and account.allowed and not learned:
            home_users.learn(account.user, generation)
        return account

    auth = Authenticator(
        realm, NonceManager(secrets.token_bytes(32), random=random_bytes),
        throttle=Throttle(trusted=never_throttled),
        algorithms=settings.auth_algorithms,
        policy=ChallengePolicy(settings.auth_algorithms, settings.sha256_user_agents),
        identity=identity,
        lookup=account_and_settings,
        accounts=RecentAccounts(directory.unchanged, ttl=settings.account_cache_ttl),
    )
    auth.health.retry_after = settings.retry_after
    registrar = Registrar(
        RegistrarPolicy(
            min_expires=settings.min_expires,
            max_expires=settings.max_expires,
            default_expires=settings.default_expires,
            max_contacts=settings.max_contacts,
            overflow=settings.overflow,
        ),
        store,
        rules,
    )
    registration = Registration(registrar=registrar, auth=auth, ownership=ownership)
    transactions = TransactionLayer()
    tracker = CallTracker(CallTable(), acc_enabled=settings.acc, acc_limit=settings.acc_limit)
    if bound is None:
        bound = [("udp", h, p) for h in hosts for p in ports]
    try:
        proxy = Proxy(
            identity, advertised(bound), transactions, store, auth,
            home_users,
            ProxyPolicy(outbound_proxy=settings.outbound_proxy,
                        from_policy="rewrite" if settings.from_policy == "rewrite" else "reject"),
            hooks or tracker, ownership, account_state=directory.state_of,
        )
    except (ValueError, ParseError) as exc:
        raise StartupError(f"bad outbound_proxy {settings.outbound_proxy!r}: {exc}") from None
    keepalive = KeepAlive(store, transactions, proxy.router.addresses,
                          interval=settings.keepalive_interval,
                          drop_after=settings.keepalive_drop_after)
    endpoint = Endpoint(
        Server(identity, registration, proxying=True),
        max_message_size=settings.max_message_size,
        transactions=transactions,
        store=store,
        persistence=persistence,
        proxy=proxy,
        tracker=tracker,
        acc_fsync=settings.sync == "write-through",
        keepalive=keepalive,
    )
    media: MediaRelay | None = None
    if settings.rtpengine:
        media = MediaRelay(cast(Mode, settings.media_relay), settings.rtpengine)
        proxy.forker.media = media
        end_media_with_calls(tracker, media)
    wtmp: WtmpSessions | None = None
    if settings.wtmp:
        if UNAVAILABLE_REASON is not None:
            log.warning("wtmp disabled: %s", UNAVAILABLE_REASON)
        else:
            try:
                recorder = LoginRecorder(WTMP_PATH, UTMP_PATH)
                closed = recorder.close_stale(time.time())
                if closed:
                    log.info("closed %d utmp line(s) left open by an earlier run", closed)
                wtmp = WtmpSessions(store, recorder, endpoint.emit)
            except (WtmpError, OSError) as exc:
                log.warning("wtmp disabled: %s", exc)
    return Daemon(settings, endpoint, store, persistence, wtmp, ownership, rules, registrar, auth,
                  proxy, tracker, never_throttled, configured or settings, media=media,
                  directory=directory, home_watch=home_watch)


#: How many of one file's refused lines are named in the log; the rest are counted.
RELOAD_PROBLEMS_SHOWN = 3


def reload_registrations(daemon: Daemon, members: Sequence[User]) -> None:
    """Read back every SIP user's usrloc, dropping what expired meanwhile.

    ``~/.sr/usrloc`` belongs to its user, who may edit it while sipd is
    down: every line passes the same rules as a REGISTER
    (:class:`~sipd.registrar.admission.BindingRules`) and at most ``max_contacts``
    per AOR are kept, the most recently registered. What is refused is
    dropped, never loaded, with one log line per file.
    """
    started = time.monotonic()
    now = time.time()
    count = 0
    limit = daemon.settings.max_contacts
    for user in members:
        try:
            # Each home is watched from here: the first request of each
            # user after a start (all of them, after a power cut) finds it so.
            bindings, problems = UsrlocFiles.load(user, now, daemon.home_watch)
        except HomeError as exc:
            log.warning("not reloading registrations of %s: %s", user.name, exc.reason)
            continue
        # Parse problems are lines already; every refusal below adds one.
        not_loaded = len(problems)
        kept: dict[str, list[Binding]] = {}
        for b in bindings:
            refused = daemon.rules.refusal(user.name, b)
            if refused is not None:
                not_loaded += 1
                problems.append(f"{b.contact[:60]!r}: {refused.reason}")
                continue
            kept.setdefault(b.aor, []).append(b)
        for aor, found in kept.items():
            if len(found) > limit:
                found.sort(key=lambda b: b.registered, reverse=True)
                not_loaded += len(found) - limit
                problems.append(f"AOR {aor[:64]!r}: {len(found) - limit} contact(s) over "
                                f"max_contacts {limit}")
                del found[limit:]
            for b in found:
                daemon.store.upsert(b)
                count += 1
        if problems:
            shown = "; ".join(problems[:RELOAD_PROBLEMS_SHOWN])
            more = len(problems) - RELOAD_PROBLEMS_SHOWN
            log.warning("%s's usrloc: %d line(s) not loaded: %s%s", user.name, not_loaded,
                        shown, f"; and {more} more reason(s)" if more > 0 else "")
    # What was just read is what is on disk: nothing to write back. A file
    # that held refused lines loses them with the user's next change.
    daemon.persistence.forget_changes()
    log.info("reloaded %d registration(s) of %d SIP user(s) in %.2f s", count, len(members),
             time.monotonic() - started)


def load_users(daemon: Daemon) -> list[User]:
    """Read every SIP user's registrations back at start; the members."""
    if daemon.membership is None:
        daemon.membership = group_membership(daemon.settings.group,
                                             daemon.settings.member_full_interval)
    members = daemon.membership.refresh(time.monotonic())
    directory = daemon.directory
    if directory is not None:
        # After a restart every phone registers again: their entries are
        # here, and their passwd files are read by check_passwords.
        directory.prime(members)
    daemon.persistence.know(members)
    reload_registrations(daemon, members)
    return members


async def check_passwords(daemon: Daemon, members: Sequence[User]) -> None:
    """Name the members with no password for the realm, once sipd serves.

    Reading every member's ``~/.sr/passwd`` took 2.7 s for 20,000
    members, a fifth of the start, and nothing served needs it first: a
    request of a member not read yet reads the file itself. Read through
    the directory, the files are kept for each member's first
    authentication.
    """
    directory = daemon.directory
    read = passwd_entries if directory is None else directory.passwd_entries
    realm = daemon.settings.realm
    started = time.monotonic()
    try:
        missing = await trio.to_thread.run_sync(report_missing_passwords, members, realm, read)
    except Exception:  # noqa: BLE001 - a report must never end the daemon that serves
        log.exception("internal error while checking the members' passwords")
        return
    log.info("checked the passwords of %d SIP user(s) for realm %s in %.2f s: %d without one",
             len(members), realm, time.monotonic() - started, missing)


async def run(settings: Settings) -> None:
    """Serve until SIGTERM or SIGINT. Start-up failures raise StartupError."""
    # First of all, while this is the only thread: every thread started
    # from here on holds no more than start-up needs.
    enter_startup()
    check_host(settings)
    configured = settings
    # The default realm asks DNS: once, here, and never while serving.
    settings = settings.resolved()
    bound = bind_sockets(settings.listen, skip_unavailable_ipv6=settings.listen_is_default)
    metrics_sock: socket.socket | None = None
    home_watch = open_home_watch(CACHED_HOME_FILES)
    try:
        if settings.metrics_listen is not None:
            metrics_sock = bind_metrics(settings.metrics_listen)
        # After the checks that fail a start in one line, before the
        # reload that opens every user's home.
        tcp_cap = tcp_connection_cap(settings.tcp_max_connections)
        tls = await trio.to_thread.run_sync(check_tls, settings)
        daemon = build(settings, ports={a.port for a, _ in bound}, hosts=[a.host for a, _ in bound],
                       bound=[(a.transport, a.host, a.port) for a, _ in bound],
                       configured=configured, home_watch=home_watch)
        transports = Transports(
            daemon.endpoint,
            max_message_size=settings.max_message_size,
            tcp_max_connections=tcp_cap,
            tcp_max_connections_per_source=settings.tcp_max_connections_per_source,
            tcp_idle_timeout=settings.tcp_idle_timeout,
            tcp_unregistered_idle_timeout=settings.tcp_unregistered_idle_timeout,
            tcp_message_timeout=settings.tcp_message_timeout,
            tls=tls,
            ws_allowed_origins=settings.ws_allowed_origins,
        )
        daemon.transports = transports
        daemon.endpoint.transport_stats = transports.stats
        ng = open_ng_socket(settings, transports) if daemon.media is not None else None
        with user_database_needed():
            # The alias map and trunks first: the reload checks every line
            # against them. They passed check_host; one changed since is
            # treated as while serving (logged, not used).
            daemon.ownership.apply(await trio.to_thread.run_sync(daemon.ownership.load))
            members = await trio.to_thread.run_sync(load_users, daemon)
    except BaseException:
        for _, sock in bound:
            sock.close()
        if metrics_sock is not None:
            metrics_sock.close()
        if home_watch is not None:
            home_watch.close()
        raise
    started = time.time()
    statefs = None
    if settings.mount_enabled:
        from sipd.io.statefs import StateFs

        statefs = StateFs(settings, daemon.endpoint, transports, started=started,
                          ownership=daemon.ownership, rules=daemon.rules,
                          membership=daemon.membership, home_watch=home_watch)
        daemon.statefs = statefs
        statefs.member_changed = functools.partial(forget_user, daemon)
        statefs.control = functools.partial(control, daemon)
        with user_database_needed():
            await trio.to_thread.run_sync(statefs.load)
    tune_gc()
    helper: UnmountHelper | None = None
    # Caught from before sipd answers: a SIGHUP (a reload, a log rotation)
    # can come as soon as it does, and its default action ends the process.
    # What arrives during the rest of the start waits here for the loop.
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async with trio.open_nursery() as nursery:
            try:
                if ng is not None and daemon.media is not None:
                    await nursery.start(ng.serve)
                    transports.asker = ng.ask
                if privileged():
                    # No worker thread may start before the capabilities are given up.
                    transports.workers.hold()
                await nursery.start(transports.serve, bound)
                own_sockets(daemon.proxy.router.addresses, transports.udp_sockets())
                transports.send(daemon.endpoint.take_pending(trio.current_time()))
                if metrics_sock is not None:
                    tree = statefs.tree if statefs is not None else None
                    server = MetricsServer(functools.partial(
                        metrics_text, daemon.endpoint, transports, started, tree, home_watch))
                    await nursery.start(server.serve, metrics_sock)
                if daemon.media is not None:
                    transports.send([daemon.media.ping()])
                if statefs is not None:
                    from sipd.io.statefs import start_statefs
                    from srfs.fs.fuse import MountError

                    try:
                        await start_statefs(statefs, nursery)
                    except (MountError, OSError) as exc:
                        raise mount_failed(settings, exc) from None
                    if privileged():
                        helper = await trio.to_thread.run_sync(start_unmount_helper, settings.mount)
                await enter_running()
                transports.workers.release()
                log.info(
                    "sipd ready: realm %s, group %s, listening on %s%s; build: %s",
                    settings.realm, settings.group,
                    ", ".join(str(a) for a, _ in bound),
                    "" if settings.metrics_listen is None
                    else f"; metrics on http://{settings.metrics_listen}/metrics",
                    compiled_build(),
                )
                notify_systemd("READY=1")
                period = watchdog_period()
                if period is not None:
                    nursery.start_soon(keep_watchdog_fed, period)
                admin_reload = ReloadRequest()
                config_reload = ReloadRequest()
                account_reload = ReloadRequest()
                nursery.start_soon(watch_admin_files, daemon.ownership, admin_reload)
                nursery.start_soon(watch_config, daemon, config_reload)
                nursery.start_soon(watch_account_files, daemon, account_reload)
                if home_watch is not None:
                    nursery.start_soon(drain_home_watch, home_watch)
                # One probe at a time, in a thread of its own.
                nursery.start_soon(probe_directory, daemon, trio.CapacityLimiter(1))
                nursery.start_soon(check_passwords, daemon, members)
                transactions = daemon.endpoint.transactions
                endpoint_stats = daemon.endpoint.stats

                def heard() -> int:
                    return endpoint_stats.messages_in

                # The full collections wait for a quiet second (sipd(8), MEMORY).
                nursery.start_soon(functools.partial(
                    trim_after_bursts, lambda: len(transactions), heard=heard))
                nursery.start_soon(functools.partial(collect_cycles, heard=heard))
                nursery.start_soon(functools.partial(collect_young, heard=heard))

                def on_hup() -> None:
                    config_reload.set()
                    admin_reload.set()
                    account_reload.set()

                await _wait_for_signals(signals, on_hup)
                notify_systemd("STOPPING=1")
            finally:
                if helper is not None:
                    # Before the FUSE loop stops: once the mount is gone, libfuse
                    # has nothing left to unmount (it could not, without
                    # CAP_SYS_ADMIN) and the loop ends by itself. Readers of the
                    # event files get their end of file first, while the mount
                    # still answers their close.
                    with trio.CancelScope(shield=True):
                        if statefs is not None and statefs.ops is not None:
                            await statefs.ops.close_streams()
                        await trio.to_thread.run_sync(stop_unmount_helper, helper)
                nursery.cancel_scope.cancel()
    for _, sock in bound:
        sock.close()
    if metrics_sock is not None:
        metrics_sock.close()
    await trio.to_thread.run_sync(shutdown, daemon)
    if home_watch is not None:
        home_watch.close()
    log.info("sipd stopped")


def open_ng_socket(settings: Settings, transports: Transports) -> NgSocket:
    """The socket to rtpengine's ng port; a start-up error if it cannot be opened."""
    host, port = rtpengine_address(settings.rtpengine)
    try:
        return NgSocket(host, port, transports.send)
    except OSError as exc:
        raise StartupError(f"cannot open a socket to rtpengine at {settings.rtpengine}: "
                           f"{exc.strerror or exc}") from None


def start_unmount_helper(mountpoint: str) -> UnmountHelper:
    """Start the helper for the srfs mount just made at ``mountpoint`` (blocking)."""
    from srfs.fs.fuse import mount_entries

    entries = mount_entries(mountpoint)
    if not entries:
        raise StartupError(f"{mountpoint} is not mounted after mounting")
    return UnmountHelper.start(entries[-1].mount_point, entries[-1].device)


def stop_unmount_helper(helper: UnmountHelper) -> None:
    """Have the helper unmount ``/run/sr``; a failure is logged, the stop goes on."""
    outcome = helper.unmount()
    if outcome.startswith("failed"):
        log.error("cannot unmount %s: %s; remove it with: fusermount3 -u -z %s",
                  helper.mountpoint, outcome.removeprefix("failed: "), helper.mountpoint)


def watchdog_period() -> float | None:
    """Half of systemd's WatchdogSec= when it watches this process (sd_watchdog_enabled(3))."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0 or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2_000_000


async def keep_watchdog_fed(period: float) -> None:
    """WATCHDOG=1 from the event loop: systemd restarts a sipd whose loop stopped turning."""
    while True:
        notify_systemd("WATCHDOG=1")
        await trio.sleep(period)


def shutdown(daemon: Daemon) -> None:
    """Write what write-back has not written yet; close the utmp lines."""
    now = time.time()
    run_inline(list(daemon.persistence.flush_all(now)), 0.0)
    ep = daemon.endpoint
    if ep.tracker is not None:
        # Calls still up get their end record now rather than never.
        ep.tracker.end_all(now)
        run_inline(list(acc_jobs(ep.tracker, ep.acc_files, fsync=True, stats=ep.acc_stats)), 0.0)
    if daemon.wtmp is not None:
        daemon.wtmp.logout_all()


ADMIN_POLL_INTERVAL = 2.0


async def watch_admin_files(ownership: Ownership, reload: ReloadRequest) -> None:
    """Re-read /etc/sipd/aliases and trunks when they change, or at once on SIGHUP."""
    retry = False
    while True:
        force = await reload.wait(ADMIN_POLL_INTERVAL) or retry
        try:
            loaded = await trio.to_thread.run_sync(functools.partial(ownership.load, force=force))
        except users.DirectoryUnavailable as exc:
            # Which alias names are users' own logins is unknown: keep the
            # maps in force and read the files again until it is known.
            if not retry:
                log.warning("alias map not reloaded, retrying: %s", exc)
            retry = True
            continue
        retry = False
        ownership.apply(loaded)
        if force:
            log.info("reloaded: alias map with %d name(s), %d trusted trunk network(s)",
                     len(ownership.aliases), len(ownership.trunks))


async def _wait_for_signals(signals: AsyncIterator[int], on_hup: Callable[[], None]) -> None:
    async for signum in signals:
        if signum == signal.SIGHUP:
            log.info("SIGHUP received: reloading sipd.conf, the alias map, trunks and account states")
            on_hup()
            continue
        log.info("%s received, shutting down", signal.Signals(signum).name)
        return
