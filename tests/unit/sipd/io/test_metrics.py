"""The daemon's figures: every counter named once, by the Prometheus conventions."""

from __future__ import annotations

import re
from dataclasses import fields, replace
from typing import Any

import trio

from sipd.config import Settings
from sipd.io.daemon import Daemon, build
from sipd.io.metrics import (
    CATALOGUE,
    RESPONSE_CLASSES,
    daemon_statistics,
    metrics_text,
    statistics_sources,
    unnamed_fields,
)
from sipd.io.transport import Transports
from srfs.fs.tree import Stat, StatKind, Tree, render_metrics, render_status
from srfs.user import User


def built() -> tuple[Daemon, Transports]:
    """A daemon built as at start, and its transports."""
    daemon = build(replace(Settings(), realm="test.invalid", wtmp=False), ports={5060},
                   hosts=["127.0.0.1"])

    async def made() -> Transports:
        # Transports hold trio objects: made inside a run.
        return Transports(daemon.endpoint, max_message_size=65535, tcp_max_connections=16,
                          tcp_idle_timeout=60.0, tcp_message_timeout=10.0)

    return daemon, trio.run(made)


def figures() -> tuple[list[Any], list[Stat]]:
    """The statistics sources and figures of a daemon built as at start."""
    daemon, transports = built()
    return (statistics_sources(daemon.endpoint, transports),
            daemon_statistics(daemon.endpoint, transports, started=1_700_000_000.0))


def test_the_catalogue_names_every_counter_the_daemon_keeps() -> None:
    sources, _ = figures()
    assert {type(s).__name__ for s in sources} == set(CATALOGUE)
    assert unnamed_fields(*sources) == [], "name these in sipd/io/metrics.py's CATALOGUE"
    for source in sources:
        # And names nothing that is gone.
        assert set(CATALOGUE[type(source).__name__]) <= {f.name for f in fields(source)}


def test_names_units_and_types_follow_the_conventions() -> None:
    _, stats = figures()
    text = render_metrics(stats)
    helps: dict[str, str] = {}
    types: dict[str, str] = {}
    series: list[str] = []
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name, _, help_ = line[7:].partition(" ")
            assert name not in helps and help_.endswith("."), line
            helps[name] = help_
        elif line.startswith("# TYPE "):
            name, _, kind = line[7:].partition(" ")
            assert name not in types
            types[name] = kind
        else:
            series.append(line.rsplit(" ", 1)[0])
    assert helps.keys() == types.keys()
    assert len(series) == len(set(series)), "a series twice"
    for name, kind in types.items():
        assert re.fullmatch(r"sipd_[a-z][a-z0-9_]*", name), name
        assert name.endswith("_total") == (kind == "counter"), name
        # Base units, the unit last: never milliseconds, never bytes_in.
        assert not re.search(r"_(milli|micro|kilo|mega)|_(seconds|bytes)_(?!total$)", name), name
    assert types["sipd_start_time_seconds"] == "gauge"
    assert types["sipd_received_bytes_total"] == "counter"
    for cls in RESPONSE_CLASSES:
        assert f'sipd_responses_total{{class="{cls}"}}' in series
    for name in ("sipd_auth_failures_total", "sipd_auth_throttled_total",
                 "sipd_auth_challenges_total", "sipd_usrloc_write_errors_total"):
        assert types[name] == "counter", name
    assert 'sipd_input_dropped_total{cause="too_large"}' in series
    assert 'sipd_transactions_created_total{side="server"}' in series


def test_status_stays_short() -> None:
    _, stats = figures()
    keys = [line.split(":")[0] for line in render_status(stats).splitlines()]
    # The tree adds the location figures after these (srfs(5), status).
    assert keys == ["version", "uptime", "listen", "transactions", "calls", "messages_in",
                    "messages_out"]


def test_every_kind_is_declared() -> None:
    for table in CATALOGUE.values():
        for figure in table.values():
            if figure is not None:
                assert figure.kind in (StatKind.COUNTER, StatKind.GAUGE)


def test_the_http_text_is_the_metrics_file_with_or_without_the_tree() -> None:
    daemon, transports = built()
    ep = daemon.endpoint
    members = (User("alice", 1001, 1001, "/home/alice"),)
    started = 1_700_000_000.0

    def provider() -> list[Stat]:
        return daemon_statistics(ep, transports, started)

    assert ep.store is not None
    tree = Tree(ep.store, lambda: members, statistics=provider, started=started)
    with_tree = metrics_text(ep, transports, started, tree)
    assert with_tree == tree.render("/metrics", started).decode()
    assert "\nsipd_users 1\n" in with_tree
    # Without the tree: every figure but the group's members.
    without = metrics_text(ep, transports, started)
    assert without.splitlines() == [
        line for line in with_tree.splitlines()
        if not re.match(r"(# (HELP|TYPE) )?sipd_users ", line)]
