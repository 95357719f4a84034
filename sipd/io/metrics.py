"""The daemon's figures for ``/run/sr/status``, ``/run/sr/metrics`` and the HTTP endpoint.

Every counter the daemon keeps is named here once, with its help text, in
the terms of the Prometheus conventions: ``sipd_`` and a name in base
units (``_seconds``, ``_bytes``), ``_total`` for a counter (added by
:func:`srfs.fs.tree.render_metrics`), a label where the figures of one
metric add up (``class`` of the responses sent, ``cause`` of the input
dropped). ``status`` shows the few figures marked for it; everything else
is for metrics only.

A counter added to one of the statistics dataclasses without an entry
here still shows, under its field name and with a plain help text, and a
test names it: so a figure never goes missing, and never stays unnamed.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Any

from sipd import __version__
from sipd.endpoint import Endpoint
from sipd.io.transport import Transports
from srfs.accounts import nss
from srfs.files.homewatch import HomeWatch
from srfs.fs.scratch import ScratchQuota
from srfs.fs.tree import Stat, StatKind, Tree, location_statistics, render_metrics

__all__ = ["CATALOGUE", "Figure", "daemon_statistics", "metrics_text", "unnamed_fields"]

COUNTER, GAUGE = StatKind.COUNTER, StatKind.GAUGE


@dataclass(frozen=True, slots=True)
class Figure:
    """How one field of a statistics dataclass is shown."""

    name: str
    help: str
    kind: StatKind = COUNTER
    labels: tuple[tuple[str, str], ...] = ()
    status: bool = False


def _dropped(cause: str, help_: str) -> Figure:
    # One metric, summed over causes by the caller.
    return Figure("input_dropped", help_, labels=(("cause", cause),))


_DROPPED_HELP = "SIP input dropped unanswered, by cause."
_NG_HELP = "Requests sent to rtpengine's ng control socket, by command (tries not counted)."
_NG_FAILED_HELP = ("Requests rtpengine refused or did not answer in time, by command; an offer "
                   "or answer that failed left its call unrelayed.")

#: Per statistics dataclass (by class name), per field: how it is shown.
#: None leaves a field out (it is shown elsewhere under another name).
CATALOGUE: dict[str, dict[str, Figure | None]] = {
    "EndpointStats": {
        "messages_in": Figure("messages_in", "SIP messages received.", status=True),
        "messages_out": Figure("messages_out",
                               "SIP messages sent, retransmissions included.", status=True),
        "requests_in": Figure("requests_in", "SIP requests received."),
        "responses_in": Figure("responses_in", "SIP responses received."),
        "keepalives": Figure("keepalives_in",
                             "Keep-alives received: empty datagrams and lone CRLFs."),
        "not_sip_dropped": _dropped("not_sip", _DROPPED_HELP),
        "oversize_dropped": _dropped("too_large", _DROPPED_HELP),
        "unanswerable_dropped": _dropped("unanswerable", _DROPPED_HELP),
        "bad_responses_dropped": _dropped("bad_response", _DROPPED_HELP),
        "bad_requests": Figure("bad_requests",
                               "Malformed requests answered with an error, without a transaction."),
        # The location store counts the same expiries as contacts_expired.
        "expired": None,
        # Labelled by class: see daemon_statistics.
        "responses_sent": None,
    },
    "ServerStats": {
        "options_answered": Figure("options_answered", "OPTIONS requests to sipd answered 200."),
        "registers": Figure("registers",
                            "REGISTER requests handled, challenged ones included."),
        "registers_ok": Figure("registers_ok", "REGISTER requests answered 200."),
        "not_implemented": Figure("not_implemented",
                                  "Requests to sipd answered 501: a method it does not serve."),
        "rejected": Figure("rejected",
                           "Requests to sipd refused with an error response of their own."),
    },
    "AuthStats": {
        "challenges": Figure("auth_challenges", "Digest challenges sent (401 and 407)."),
        "ok": Figure("auth_successes", "Requests that authenticated."),
        "stale": Figure("auth_stale",
                        "Right credentials on an expired nonce, challenged again (stale=true)."),
        "failed": Figure("auth_failures",
                         "Failed authentications: wrong password, unknown user, no SIP access; "
                         "each one is logged for fail2ban."),
        "throttled": Figure("auth_throttled",
                            "Requests refused unheard (403) by the throttle of failed "
                            "authentications."),
        "blocks": Figure("auth_blocks",
                         "Blocks the throttle started: a user from an address, or an address, "
                         "failed too often."),
    },
    "TransportStats": {
        "udp_datagrams_in": Figure("udp_datagrams_in", "UDP datagrams received."),
        "udp_oversize_dropped": _dropped("too_large", _DROPPED_HELP),
        "udp_send_errors": Figure("udp_send_errors", "UDP sends the kernel refused."),
        "udp_internal_errors": Figure("udp_internal_errors",
                                      "UDP datagrams dropped on an internal error, logged "
                                      "with a traceback (at most once a minute)."),
        "tcp_internal_errors": Figure("tcp_internal_errors",
                                      "Stream connections closed on an internal error, logged "
                                      "with a traceback (at most once a minute)."),
        "timer_internal_errors": Figure("timer_internal_errors",
                                        "Timer passes ended early by an internal error, "
                                        "logged with a traceback (at most once a minute)."),
        "tcp_accepted": Figure("tcp_accepted",
                               "TCP connections established, accepted or opened by sipd."),
        "tcp_refused": Figure("tcp_refused",
                              "TCP connections refused: tcp_max_connections or "
                              "tcp_max_connections_per_source reached."),
        "tcp_refused_per_source": Figure("tcp_refused_per_source",
                                         "TCP connections refused by "
                                         "tcp_max_connections_per_source."),
        "tcp_open": Figure("tcp_open", "TCP connections open.", GAUGE),
        "tcp_idle_closed": Figure("tcp_idle_closed",
                                  "TCP connections closed after tcp_idle_timeout."),
        "tcp_unregistered_closed": Figure("tcp_unregistered_closed",
                                          "TCP connections that carried no registration, closed "
                                          "after tcp_unregistered_idle_timeout."),
        "tcp_framing_errors": Figure("tcp_framing_errors",
                                     "TCP connections closed on input that cannot be framed."),
        "tcp_send_overflow": Figure("tcp_send_overflow",
                                    "TCP connections closed because the peer did not read."),
        "tcp_pings": Figure("tcp_pings", "RFC 5626 CRLF pings received over TCP and answered."),
        "tcp_pongs": Figure("tcp_pongs", "RFC 5626 CRLF pongs received over TCP."),
        "tcp_connects": Figure("tcp_connects", "TCP connections sipd tried to open."),
        "tcp_connect_failures": Figure("tcp_connect_failures",
                                       "TCP connections sipd could not open."),
        "tls_handshake_failures": Figure("tls_handshake_failures",
                                         "Accepted TLS connections closed for a failed or "
                                         "unfinished handshake."),
        "ws_upgrades_refused": Figure("websocket_upgrades_refused",
                                      "WebSocket upgrades refused: no sip subprotocol, an Origin "
                                      "not allowed, not WebSocket."),
        "ws_closed": Figure("websocket_closed",
                            "WebSocket connections ended by a close, an error or an oversize "
                            "message."),
        "jobs_started": Figure("jobs_started",
                               "Blocking jobs (homes, NSS, PAM) handed to worker threads."),
        "jobs_failed": Figure("jobs_failed", "Blocking jobs that failed."),
        "bytes_in": Figure("received_bytes", "Bytes of SIP received over UDP and TCP."),
        "bytes_out": Figure("sent_bytes", "Bytes of SIP sent over UDP and TCP."),
    },
    "ProxyStats": {
        "proxy_requests": Figure("proxy_requests", "Requests the proxy handled."),
        "proxy_branches": Figure("proxy_branches",
                                 "Branches the proxy sent: one per destination of a request."),
        "proxy_rejected": Figure("proxy_rejected",
                                 "Proxied requests whose final answer was 300 or more."),
        "proxy_loops": Figure("proxy_loops",
                              "Requests or branches refused as loops, or as leading back to "
                              "sipd."),
        "proxy_errors": Figure("proxy_errors",
                               "Internal errors of the proxy, logged with a traceback."),
        "proxy_trunk_calls": Figure("proxy_trunk_calls",
                                    "Requests from trusted trunks, taken by their address."),
        "proxy_branches_refused": Figure("proxy_branches_refused",
                                         "Branches not sent: a forbidden destination, or over "
                                         "the limits of one request."),
        "proxy_unknown_throttled": Figure("proxy_unknown_throttled",
                                          "Requests from outside answered 480 without a look-up: "
                                          "the sender's budget of look-ups was spent."),
        "proxy_users_cached": Figure("proxy_users_cached",
                                     "Requests routed with their users' settings known without "
                                     "a look-up or a worker thread."),
    },
    "KeepAliveStats": {
        "probes": Figure("keepalive_probes",
                         "OPTIONS probes sent to contacts registered from behind a NAT."),
        "answers": Figure("keepalive_answers",
                          "Probes answered, with any response: the phone is there."),
        "timeouts": Figure("keepalive_timeouts",
                           "Probes that went unanswered until the next was due."),
        "dropped": Figure("keepalive_dropped",
                          "Contacts removed after not answering for keepalive_drop_after."),
        "unreachable": Figure("contacts_unreachable",
                              "Contacts whose last probe went unanswered.", GAUGE),
    },
    "PersistenceStats": {
        "writes": Figure("usrloc_writes", "Writes of users' ~/.sr/usrloc."),
        "write_errors": Figure("usrloc_write_errors",
                               "Writes of ~/.sr/usrloc that failed (each one logged)."),
        "commits": Figure("registration_changes",
                          "Changes of registrations asked for: REGISTERs with contacts and "
                          "writes to contacts files."),
        "commits_refused": Figure("registration_changes_refused",
                                  "Changes of registrations refused before anything was "
                                  "written."),
        "batches": Figure("usrloc_group_commits",
                          "Groups of usrloc files written together with one trip to a "
                          "worker thread (write-through); registration_changes over this "
                          "is the mean group size."),
        "batch_seconds": Figure("usrloc_group_commit_seconds",
                                "Time from the start of each group of usrloc files to its "
                                "answers, summed: over usrloc_group_commits, the mean time a "
                                "group takes to be durable (what each 200 waits for, and as "
                                "long again before the next group starts)."),
        "slow_batches": Figure("usrloc_group_commits_slow",
                               "Groups of usrloc files that took more than 0.25 s to be "
                               "durable (each REGISTER in them waited as long; logged)."),
    },
    "AccStats": {
        "records_written": Figure("acc_records_written", "Call records written to ~/.sr/acc."),
        "records_lost": Figure("acc_records_lost",
                               "Call records that could not be written (each one logged)."),
        "rotations": Figure("acc_rotations", "Rotations of ~/.sr/acc to acc.1."),
    },
    "TransactionStatistics": {
        "server_transactions": None,
        "client_transactions": None,
        "server_created": Figure("transactions_created", "SIP transactions created.",
                                 labels=(("side", "server"),)),
        "client_created": Figure("transactions_created", "SIP transactions created.",
                                 labels=(("side", "client"),)),
        "retransmissions_absorbed": Figure("retransmissions_absorbed",
                                           "Retransmitted requests and responses the "
                                           "transactions answered or swallowed."),
        "retransmissions_sent": Figure("retransmissions_sent",
                                       "Requests and responses the transactions sent again."),
        "timeouts": Figure("transaction_timeouts", "Transaction timers B, F and H that fired."),
        "transport_failures": Figure("transaction_transport_failures",
                                     "Transactions whose message could not be sent."),
        "stray_responses": _dropped("stray_response", _DROPPED_HELP),
        "timers_pending": Figure("timers_pending", "Transaction timers armed.", GAUGE),
    },
    "MediaStats": {
        "offers": Figure("media_relay_requests", _NG_HELP, labels=(("command", "offer"),)),
        "answers": Figure("media_relay_requests", _NG_HELP, labels=(("command", "answer"),)),
        "deletes": Figure("media_relay_requests", _NG_HELP, labels=(("command", "delete"),)),
        "offer_failures": Figure("media_relay_failures", _NG_FAILED_HELP,
                                 labels=(("command", "offer"),)),
        "answer_failures": Figure("media_relay_failures", _NG_FAILED_HELP,
                                  labels=(("command", "answer"),)),
        "delete_failures": Figure("media_relay_failures", _NG_FAILED_HELP,
                                  labels=(("command", "delete"),)),
        "sessions_dropped": Figure("media_relay_sessions_dropped",
                                   "Relayed calls whose rtpengine session sipd deleted to stay "
                                   "within its limit of sessions."),
    },
    "CallStatistics": {
        "calls": None,
        "ringing": Figure("calls_ringing", "Calls in progress not answered yet.", GAUGE),
        "answered": Figure("calls_answered", "Calls in progress that were answered.", GAUGE),
        "started": Figure("calls_started", "Calls to or from local users since start."),
        "expired": Figure("calls_timed_out",
                          "Calls ended by session_timeout or ringing_timeout, no BYE seen."),
    },
}

#: Response classes, every one always shown: a rate needs the zero too.
RESPONSE_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx", "6xx")


def _figures(source: Any) -> Iterable[tuple[Figure, int | float]]:
    """The figures of one statistics dataclass, named by the catalogue."""
    for name, figure, named in _plan(type(source)):
        value = getattr(source, name)
        # A field the catalogue does not name shows when it holds a number.
        if named or isinstance(value, int | float):
            yield figure, value


#: Per statistics class: each field shown, its figure, whether the catalogue names it.
_PLANS: dict[type, list[tuple[str, Figure, bool]]] = {}


def _plan(cls: type) -> list[tuple[str, Figure, bool]]:
    # The catalogue and the classes' fields are fixed, and ``status`` and
    # ``metrics`` render all of them at every open: ``fields()`` and the
    # catalogue's look-ups are done once per class, not at each.
    plan = _PLANS.get(cls)
    if plan is None:
        table: Mapping[str, Figure | None] = CATALOGUE.get(cls.__name__, {})
        plan = []
        for f in fields(cls):
            if f.name not in table:
                auto = Figure(f.name, f.name.replace("_", " ").capitalize() + ".")
                plan.append((f.name, auto, False))
            elif (figure := table[f.name]) is not None:
                plan.append((f.name, figure, True))
        _PLANS[cls] = plan
    return plan


def unnamed_fields(*sources: Any) -> list[str]:
    """``Class.field`` of every field the catalogue does not name (for the test)."""
    return [f"{type(s).__name__}.{f.name}" for s in sources for f in fields(s)
            if f.name not in CATALOGUE.get(type(s).__name__, {})]


def _stats(figures: Iterable[tuple[Figure, int | float]]) -> list[Stat]:
    """Stats of the figures, in order; those of one name and labels are added up."""
    summed: dict[tuple[str, tuple[tuple[str, str], ...]], tuple[Figure, int | float]] = {}
    for figure, value in figures:
        key = (figure.name, figure.labels)
        first, total = summed.get(key, (figure, 0))
        summed[key] = (first, total + value)
    return [Stat(f.name, v, f.help, f.kind, f.labels, status=f.status) for f, v in summed.values()]


def statistics_sources(endpoint: Endpoint, transports: Transports) -> list[Any]:
    """Every statistics dataclass the daemon keeps, for :func:`daemon_statistics`."""
    ep = endpoint
    found: list[Any] = [ep.stats, ep.server.stats, transports.stats, ep.transactions.statistics()]
    if ep.server.registration is not None:
        found.append(ep.server.registration.auth.stats)
    if ep.proxy is not None:
        found.append(ep.proxy.stats)
    if ep.persistence is not None:
        found.append(ep.persistence.stats)
    if ep.keepalive is not None:
        found.append(ep.keepalive.statistics())
    if ep.tracker is not None:
        found.extend((ep.acc_stats, ep.tracker.calls.statistics()))
    if ep.proxy is not None and ep.proxy.forker.media is not None:
        found.append(ep.proxy.forker.media.stats)
    return found


def daemon_statistics(endpoint: Endpoint, transports: Transports, started: float,
                      scratch: ScratchQuota | None = None,
                      home_watch: HomeWatch | None = None) -> list[Stat]:
    """The daemon's figures, status ones first, in the order ``status`` shows them."""
    ep = endpoint
    txn = ep.transactions.statistics()
    out = [
        Stat("version", __version__, "sipd version.", StatKind.INFO),
        # Prometheus computes the uptime; people read it.
        Stat("uptime", round(time.time() - started), "Seconds since start.", metrics=False),
        Stat("start_time_seconds", started, "When sipd started, seconds since the Unix epoch.",
             status=False),
        Stat("listen", tuple(str(a) for a in transports.bound), "Addresses sipd listens on.",
             StatKind.INFO),
        Stat("transactions", txn.server_transactions + txn.client_transactions,
             "SIP transactions in progress."),
    ]
    if ep.tracker is not None:
        out.append(Stat("calls", len(ep.tracker.calls),
                        "Calls in progress, a call between two local users counted once."))
    counted = _stats(pair for source in statistics_sources(ep, transports)
                     for pair in _figures(source))
    out.extend(s for s in counted if s.status)
    for cls, count in zip(RESPONSE_CLASSES, ep.stats.responses_sent, strict=True):
        out.append(Stat("responses", count,
                        "SIP responses sent, sipd's own and those it forwarded, by status class; "
                        "retransmissions are not counted again.",
                        COUNTER, (("class", cls),), status=False))
    out.extend(s for s in counted if not s.status)
    if ep.tracker is not None:
        out.append(Stat("acc_calls_unrecorded", ep.tracker.calls_unrecorded,
                        "Calls left out of ~/.sr/acc: the user's records reached acc_limit.",
                        COUNTER, status=False))
    media = ep.proxy.forker.media if ep.proxy is not None else None
    if media is not None:
        out.append(Stat("media_relay_sessions", len(media.sessions),
                        "Calls relayed through rtpengine now.", GAUGE, status=False))
    if ep.server.registration is not None and ep.server.registration.auth.accounts is not None:
        accounts = ep.server.registration.auth.accounts
        out.append(Stat("account_cache_hits", accounts.hits,
                        "Account look-ups answered from memory.", COUNTER, status=False))
        out.append(Stat("account_cache_misses", accounts.misses,
                        "Account look-ups that asked NSS, PAM and ~/.sr/passwd.", COUNTER,
                        status=False))
    if ep.server.registration is not None:
        health = ep.server.registration.auth.health
        out.append(Stat("user_database_down", int(health.down),
                        "1 while the user database (NSS, PAM) fails to answer, else 0.", GAUGE,
                        status=False))
        out.append(Stat("user_database_failures", health.failures,
                        "Look-ups the user database failed to answer (answered 503).", COUNTER,
                        status=False))
    for call, count in sorted(nss.calls().items()):
        out.append(Stat("nss_calls", count,
                        "NSS calls sipd made, by function; all_passwd counts enumerations of "
                        "every account.", COUNTER, (("call", call),), status=False))
    if home_watch is not None:
        out.append(Stat("home_watches", home_watch.watches,
                        "Users' ~/.sr directories watched with inotify: their cached files "
                        "need no stat per request.", GAUGE, status=False))
        out.append(Stat("home_watch_overflows", home_watch.overflows,
                        "Times the kernel's inotify queue overflowed: every cached file was "
                        "checked by a stat again.", COUNTER, status=False))
    if scratch is not None:
        out.append(Stat("scratch_files", scratch.files,
                        "Editors' temporary files held in memory.", status=False))
        out.append(Stat("scratch_bytes", scratch.bytes,
                        "Bytes in editors' temporary files.", status=False))
    return out


def metrics_text(endpoint: Endpoint, transports: Transports, started: float,
                 tree: Tree | None = None, home_watch: HomeWatch | None = None) -> str:
    """What ``/run/sr/metrics`` holds now, for the HTTP endpoint.

    With the state filesystem, its tree's figures, the very text of the
    file; without it, the same figures but the SIP group's member count,
    which only the filesystem keeps up to date.
    """
    if tree is not None:
        return render_metrics(tree.statistics())
    stats = daemon_statistics(endpoint, transports, started, home_watch=home_watch)
    if endpoint.store is not None:
        stats += location_statistics(endpoint.store, None)
    return render_metrics(stats)
