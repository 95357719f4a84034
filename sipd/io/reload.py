"""SIGHUP: ``sipd.conf`` read again, and the keys that can change live put in force.

The settings table (:mod:`sipd.config`) marks each key ``live`` or not;
:data:`LIVE` says, for each live key, which object of the running daemon
takes the new value. The other keys wait for a restart: one warning names
those that changed, at every SIGHUP until then. A file that cannot be read
or fails a check changes nothing.
"""

from __future__ import annotations

import logging
import math
import resource
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import trio

from sipd.config import ConfigError, Settings, changed, reread
from sipd.io.limits import tcp_connection_cap
from sipd.proxy.users import HomeUsers
from srfs.logtext import set_log_level

if TYPE_CHECKING:
    from sipd.io.daemon import Daemon

__all__ = ["LIVE", "ReloadRequest", "apply_settings", "reload_tls", "watch_config"]

log = logging.getLogger("sipd")


class ReloadRequest:
    """SIGHUP's request to read files again now (trio events cannot be reset)."""

    def __init__(self) -> None:
        self._event = trio.Event()

    def set(self) -> None:
        self._event.set()

    async def wait(self, timeout: float) -> bool:
        """True if a reload was asked for within ``timeout`` seconds."""
        with trio.move_on_after(timeout):
            await self._event.wait()
        if not self._event.is_set():
            return False
        self._event = trio.Event()
        return True


def _registrar_policy(name: str) -> Callable[[Daemon, Any], None]:
    def apply(daemon: Daemon, value: Any) -> None:
        daemon.registrar.policy = replace(daemon.registrar.policy, **{name: value})
        if name == "max_contacts" and daemon.statefs is not None:
            # Writes to /run/sr/<user>/contacts obey the same limit.
            daemon.statefs.tree.max_contacts = value

    return apply


def _transports(name: str) -> Callable[[Daemon, Any], None]:
    def apply(daemon: Daemon, value: Any) -> None:
        if daemon.transports is None:
            return
        if name == "tcp_max_connections":
            value = tcp_connection_cap(value, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
        # Read for each new connection: open ones keep the values they got.
        setattr(daemon.transports, name, value)

    return apply


def _tls_file(daemon: Daemon, value: Any) -> None:
    """Nothing here: every SIGHUP loads the TLS files again (:func:`reload_tls`)."""


async def reload_tls(daemon: Daemon) -> None:
    """Build the TLS contexts anew from the files named in force; new handshakes use them.

    On every SIGHUP, changed names or not: a renewed certificate is the
    same file with new contents. Connections up keep theirs; files that
    fail leave the old contexts in force (logged by the contexts).
    """
    tls = daemon.transports.tls if daemon.transports is not None else None
    if tls is None:
        return
    if await trio.to_thread.run_sync(tls.reload, daemon.settings) and tls.server is not None:
        log.info("TLS certificate %s reloaded", daemon.settings.tls_certificate)


def _set_ws_origins(daemon: Daemon, value: Any) -> None:
    if daemon.transports is not None:
        daemon.transports.ws_allowed_origins = value


def _set_log_level(daemon: Daemon, value: Any) -> None:
    set_log_level(str(value))


def _set_algorithms(daemon: Daemon, value: Any) -> None:
    daemon.auth.algorithms = value
    daemon.auth.policy.configure(accepted=value)


def _set_agents(daemon: Daemon, value: Any) -> None:
    daemon.auth.policy.configure(sha256_agents=value)


def _set_trusted(daemon: Daemon, value: Any) -> None:
    daemon.never_throttled.networks = value


def _set_flush_interval(daemon: Daemon, value: Any) -> None:
    daemon.persistence.flush_interval = value


def _set_acc(daemon: Daemon, value: Any) -> None:
    daemon.tracker.acc_enabled = value


def _set_acc_limit(daemon: Daemon, value: Any) -> None:
    daemon.tracker.acc_limit = value


def _set_media_relay(daemon: Daemon, value: Any) -> None:
    # Calls already relayed stay relayed; the policy decides for new ones.
    if daemon.media is not None:
        daemon.media.mode = value


def _account_setting(name: str) -> Callable[[Daemon, Any], None]:
    def apply(daemon: Daemon, value: Any) -> None:
        if daemon.directory is not None:
            daemon.directory.configure(**{"ttl" if name == "account_cache_ttl" else name: value})
        if daemon.auth.accounts is not None:
            if name == "account_cache_ttl":
                daemon.auth.accounts.ttl = value
            daemon.auth.accounts.forget()
        users = daemon.proxy.user_lookup
        if name == "account_cache_ttl" and isinstance(users, HomeUsers):
            users.ttl = value
        users.forget()

    return apply


def _set_refresh_interval(daemon: Daemon, value: Any) -> None:
    # The probe of a failing directory reads daemon.settings at each turn.
    if daemon.statefs is not None:
        daemon.statefs.refresh_interval = value


def _set_full_interval(daemon: Daemon, value: Any) -> None:
    if daemon.membership is not None:
        daemon.membership.full_interval = value


def _set_retry_after(daemon: Daemon, value: Any) -> None:
    daemon.auth.health.retry_after = value


def _number_plan(name: str) -> Callable[[Daemon, Any], None]:
    def apply(daemon: Daemon, value: Any) -> None:
        daemon.ownership.plan = replace(daemon.ownership.plan, **{name: value})

    return apply


def _keepalive(name: str) -> Callable[[Daemon, Any], None]:
    def apply(daemon: Daemon, value: Any) -> None:
        keepalive = daemon.endpoint.keepalive
        if keepalive is None:
            return
        settings = {"interval": keepalive.interval, "drop_after": keepalive.drop_after}
        settings[name] = value
        keepalive.configure(**settings)
        if daemon.transports is not None:
            # Wakes the timer loop: rescheduled probes are due at once.
            daemon.transports.send([])

    return apply


def _set_from_policy(daemon: Daemon, value: Any) -> None:
    daemon.proxy.policy = replace(daemon.proxy.policy, from_policy=value)


#: How SIGHUP puts each key marked ``live`` in sipd.config's table in force.
LIVE: dict[str, Callable[[Daemon, Any], None]] = {
    "log_level": _set_log_level,
    "auth_algorithms": _set_algorithms,
    "sha256_user_agents": _set_agents,
    "trusted_networks": _set_trusted,
    "min_expires": _registrar_policy("min_expires"),
    "max_expires": _registrar_policy("max_expires"),
    "default_expires": _registrar_policy("default_expires"),
    "max_contacts": _registrar_policy("max_contacts"),
    "overflow": _registrar_policy("overflow"),
    "flush_interval": _set_flush_interval,
    "acc": _set_acc,
    "acc_limit": _set_acc_limit,
    "from_policy": _set_from_policy,
    "media_relay": _set_media_relay,
    "country_code": _number_plan("country_code"),
    "national_prefix": _number_plan("national_prefix"),
    "international_prefix": _number_plan("international_prefix"),
    "locked_suspends": _account_setting("locked_suspends"),
    "account_cache_ttl": _account_setting("account_cache_ttl"),
    "member_refresh_interval": _set_refresh_interval,
    "member_full_interval": _set_full_interval,
    "retry_after": _set_retry_after,
    "tcp_max_connections": _transports("tcp_max_connections"),
    "tcp_max_connections_per_source": _transports("tcp_max_connections_per_source"),
    "tcp_idle_timeout": _transports("tcp_idle_timeout"),
    "tcp_unregistered_idle_timeout": _transports("tcp_unregistered_idle_timeout"),
    "tcp_message_timeout": _transports("tcp_message_timeout"),
    "tls_certificate": _tls_file,
    "tls_private_key": _tls_file,
    "tls_ca_certificates": _tls_file,
    "tls_verify_client": _tls_file,
    "ws_allowed_origins": _set_ws_origins,
    "keepalive_interval": _keepalive("interval"),
    "keepalive_drop_after": _keepalive("drop_after"),
}


def apply_settings(daemon: Daemon, new: Settings) -> tuple[list[str], list[str]]:
    """Put the live keys of ``new`` in force; (keys applied, keys waiting for a restart)."""
    differ = changed(daemon.configured, new)
    live = [k for k in differ if k in LIVE]
    waiting = [k for k in differ if k not in LIVE]
    for name in live:
        LIVE[name](daemon, getattr(new, name))
    # What waits for a restart stays as it is in force, and is named again
    # at the next SIGHUP if still changed.
    kept: dict[str, Any] = {k: getattr(daemon.configured, k) for k in waiting}
    if "listen" in waiting:
        kept["listen_is_default"] = daemon.configured.listen_is_default
    daemon.configured = replace(new, **kept)
    daemon.settings = replace(daemon.configured, realm=daemon.settings.realm)
    return live, waiting


async def watch_config(daemon: Daemon, reload: ReloadRequest) -> None:
    """On SIGHUP, read sipd.conf again and put what can change live in force."""
    while True:
        if not await reload.wait(math.inf):
            continue
        try:
            new = await trio.to_thread.run_sync(reread, daemon.configured)
        except ConfigError as exc:
            log.error("sipd.conf not reloaded, the settings in force stay: %s", exc)
            # A renewed certificate is taken all the same.
            await reload_tls(daemon)
            continue
        live, waiting = apply_settings(daemon, new)
        await reload_tls(daemon)
        if live:
            log.info("sipd.conf reloaded: %s in force", ", ".join(
                f"{k} = {_shown(getattr(new, k))}" for k in live))
        elif not waiting:
            log.info("sipd.conf reloaded: nothing changed")
        if waiting:
            log.warning("sipd.conf: %s changed; in force only after a restart",
                        ", ".join(waiting))


def _shown(value: Any) -> str:
    if isinstance(value, tuple):
        return "[" + ", ".join(str(v) for v in value) + "]"
    return str(value)
