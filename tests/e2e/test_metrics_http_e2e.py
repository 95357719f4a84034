"""The metrics endpoint of a real sipd: fetched with urllib, linted by promtool, scraped by Prometheus.

The daemon runs with ``metrics_listen`` on a free loopback port. promtool
(Debian package prometheus) checks what the endpoint serves; the last
test runs the real ``prometheus`` server against it, as a site would.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_metrics_e2e import samples
from tests.sipclient import (
    Daemon,
    free_port,
    listening,
    running_sipd,
    stop_process,
    wait_for,
)
from tests.unixusers import FakeUnix

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail("promtool is not installed: run 'make setup' (Debian package prometheus)")
    return found


def fetch(port: int, path: str = "/metrics", method: str = "GET") -> tuple[int, Any, bytes]:
    """Status, headers and body of one request to 127.0.0.1:``port``; errors are answers too."""
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.headers, exc.read()


def metric_names(text: str) -> list[str]:
    return [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")]


@contextmanager
def sipd_serving_metrics(tmp: Path, unix: FakeUnix, *, mount: Path | None = None,
                         extra: str = "") -> Iterator[tuple[Daemon, int, Path]]:
    """A sipd with ``metrics_listen`` on a free port; its config file is returned to change."""
    port = free_port()
    conf = tmp / "sipd.toml"
    text = f'metrics_listen = "127.0.0.1:{port}"\n{extra}'
    if mount is not None:
        text += f'mount = "{mount}"\n'
    conf.write_text(text)
    with running_sipd(tmp, "-c", str(conf), unix=unix, mount=mount is not None) as daemon:
        yield daemon, port, conf


def test_the_endpoint_serves_what_promtool_accepts(tmp_path: Path, unix: FakeUnix) -> None:
    # Without the state filesystem (running_sipd's --no-mount): the same
    # renderer, from the daemon's figures.
    with sipd_serving_metrics(tmp_path, unix) as (daemon, port, _):
        assert daemon.ping() == 200
        status, headers, body = fetch(port)
        assert status == 200
        assert headers["Content-Type"] == CONTENT_TYPE
        text = body.decode()
        r = subprocess.run([promtool(), "check", "metrics"], input=text, capture_output=True,
                           text=True, timeout=30, check=False)
        assert (r.returncode, r.stdout + r.stderr) == (0, ""), text
        got = samples(text)
        # The start-up ping and the one above, at least.
        assert got['sipd_responses_total{class="2xx"}'] >= 2
        assert got["sipd_contacts"] == 0
        # The group's members are counted by the state filesystem alone.
        assert "sipd_users" not in got
        assert f"metrics on http://127.0.0.1:{port}/metrics" in daemon.log

        # Each request renders the figures of the moment.
        assert daemon.ping() == 200
        again = samples(fetch(port)[2].decode())
        assert again['sipd_responses_total{class="2xx"}'] > got['sipd_responses_total{class="2xx"}']

        head_status, head_headers, head_body = fetch(port, method="HEAD")
        assert (head_status, head_body) == (200, b"")
        assert int(head_headers["Content-Length"]) > 0

        missing = fetch(port, "/status")
        assert missing[0] == 404
        refused = fetch(port, method="POST")
        assert (refused[0], refused[1]["Allow"]) == (405, "GET, HEAD")
        assert daemon.alive()
    assert "Traceback" not in daemon.log


def test_bad_clients_leave_the_daemon_serving(tmp_path: Path, unix: FakeUnix) -> None:
    with sipd_serving_metrics(tmp_path, unix) as (daemon, port, _):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"\x16\x03\x01 not http at all\r\n\r\n")
            assert s.recv(4096).startswith(b"HTTP/1.1 400 Bad Request\r\n")
        # More connections than the endpoint serves at once; they all go.
        crowd = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(20)]
        try:
            wait_for(lambda: "metrics endpoint: refused" in daemon.log, "the cap's log line")
        finally:
            for s in crowd:
                s.close()
        wait_for(lambda: serves(port), "the endpoint to serve again")
        assert daemon.ping() == 200
        assert daemon.stop() == 0
    assert "Traceback" not in daemon.log


def serves(port: int) -> bool:
    """Whether a GET of /metrics gets 200 now: until the endpoint has seen
    the crowd's connections close, a new one is still over the cap and reset."""
    try:
        return fetch(port)[0] == 200
    except (ConnectionError, urllib.error.URLError):
        return False


@pytest.mark.skipif(not os.path.exists("/dev/fuse") or os.geteuid() != 0,
                    reason="needs /dev/fuse and root to mount the state filesystem")
def test_with_the_mount_the_endpoint_serves_the_metrics_file(tmp_path: Path, unix: FakeUnix,
                                                             mnt: Path) -> None:
    with sipd_serving_metrics(tmp_path, unix, mount=mnt) as (daemon, port, _):
        wait_for(lambda: (mnt / "metrics").exists(), "the mount")
        served = fetch(port)[2].decode()
        in_file = (mnt / "metrics").read_text()
        # Rendered at two moments: the same metrics, the figures may move.
        assert metric_names(served) == metric_names(in_file)
        assert "sipd_users" in samples(served)
        assert daemon.alive()


def test_metrics_listen_waits_for_a_restart(tmp_path: Path, unix: FakeUnix) -> None:
    with sipd_serving_metrics(tmp_path, unix) as (daemon, port, conf):
        other = free_port()
        conf.write_text(f'metrics_listen = "127.0.0.1:{other}"\n')
        daemon.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "in force only after a restart" in daemon.log, "the reload's warning")
        assert ("sipd: WARNING: sipd.conf: metrics_listen changed; in force only after a restart"
                in daemon.log)
        assert fetch(port)[0] == 200
        assert not listening(other, "tcp")


# --- Prometheus itself ---------------------------------------------------------------------


PROMETHEUS_CONFIG = """\
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: sipd
    static_configs:
      - targets: ["127.0.0.1:{port}"]
"""


@contextmanager
def running_prometheus(target: int) -> Iterator[tuple[int, Path]]:
    """The real prometheus server scraping 127.0.0.1:``target`` every second.

    Everything it writes is in a temporary directory, removed after, and
    the process is stopped whatever happens.
    """
    binary = shutil.which("prometheus") or "/usr/bin/prometheus"
    if not os.access(binary, os.X_OK):
        pytest.fail("prometheus is not installed: run 'make setup' (Debian package prometheus)")
    work = Path(tempfile.mkdtemp(prefix="sipd-prometheus-"))
    proc: subprocess.Popen[bytes] | None = None
    try:
        config = work / "prometheus.yml"
        config.write_text(PROMETHEUS_CONFIG.replace("{port}", str(target)))
        port = free_port()
        with open(work / "prometheus.log", "wb") as log:
            proc = subprocess.Popen(
                [binary, f"--config.file={config}", f"--storage.tsdb.path={work / 'data'}",
                 f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
                stdout=log, stderr=subprocess.STDOUT, cwd=work)
        yield port, work / "prometheus.log"
    finally:
        if proc is not None:
            stop_process(proc, 10)
        shutil.rmtree(work, ignore_errors=True)


def query(port: int, promql: str) -> list[dict[str, Any]]:
    """The instant vector ``promql`` gives now; empty while Prometheus is not up yet."""
    url = f"http://127.0.0.1:{port}/api/v1/query?query={urllib.parse.quote(promql)}"
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            answer = json.load(r)
    except (OSError, ValueError):
        return []
    assert answer["status"] == "success", answer
    result: list[dict[str, Any]] = answer["data"]["result"]
    return result


@pytest.mark.slow
def test_prometheus_scrapes_sipd(tmp_path: Path, unix: FakeUnix) -> None:
    with sipd_serving_metrics(tmp_path, unix) as (daemon, port, _), \
            running_prometheus(port) as (prom, prom_log):
        def up() -> bool:
            found = query(prom, 'up{job="sipd"}')
            return bool(found) and found[0]["value"][1] == "1"

        try:
            wait_for(up, 'up{job="sipd"} == 1', timeout=60)
            wait_for(lambda: len(query(prom, 'sipd_responses_total{job="sipd"}')) == 6,
                     "sipd_responses_total for the six classes", timeout=30)
        except AssertionError:
            raise AssertionError(f"prometheus said: {prom_log.read_text(errors='replace')}"
                                 ) from None
        series = query(prom, 'sipd_responses_total{job="sipd"}')
        assert sorted(s["metric"]["class"] for s in series) == [
            "1xx", "2xx", "3xx", "4xx", "5xx", "6xx"]
        # Every sample of the page was taken.
        scraped = query(prom, 'scrape_samples_scraped{job="sipd"}')
        assert scraped and int(scraped[0]["value"][1]) == len(samples(fetch(port)[2].decode()))
        assert daemon.alive()
    assert "Traceback" not in daemon.log
