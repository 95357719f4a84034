"""The sipd command: options, config file, exit codes, one-line errors, signals."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from sipd.cli import make_parser, settings_from_args, setup_logging, stderr_is_journal
from sipd.config import ConfigError, Settings, parse_listen
from srfs.logtext import OWN_LOGGERS
from srfs.sipdconf import host_realm
from tests.sipclient import ROOT, SIPD, free_port, running_sipd
from tests.unixusers import FakeUnix, own_stderr


def run(*args: str, timeout: float = 20,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SIPD, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          env=env)


def assert_one_line_error(p: subprocess.CompletedProcess[str], code: int, text: str) -> None:
    assert p.returncode == code, (p.returncode, p.stderr)
    lines = own_stderr(p.stderr).strip().splitlines()
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith("sipd: ")
    assert text in lines[0], lines[0]
    assert "Traceback" not in p.stderr


def test_version_names_the_build_of_the_sip_core(capsys: pytest.CaptureFixture[str]) -> None:
    # In process: the build is whatever this test run imports (pure Python
    # from the checkout, compiled under make test-compiled).
    from sipd import __version__
    from sipd.io.compiled import build

    with pytest.raises(SystemExit) as info:
        make_parser().parse_args(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"sipd {__version__} (build: {build()})"
    assert build() in ("pure Python", "compiled with mypyc")


def test_bad_option() -> None:
    assert_one_line_error(run("--frobnicate"), 2, "unrecognized arguments: --frobnicate")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-l", "nonsense"], "bad listen address"),
        (["-r", ""], "realm must be a non-empty string, not ''"),
        (["-r", "a:b"], "realm 'a:b' has a colon"),
        (["-g", " "], "group must be a non-empty string"),
    ],
)
def test_bad_option_values(args: list[str], message: str) -> None:
    # Options pass the checks of the file's keys: none is quietly ignored.
    assert_one_line_error(run(*args, "-c", "/dev/null", "--check-config"), 1,
                          f"command line: {message}")


def test_missing_named_config(tmp_path: Path) -> None:
    assert_one_line_error(run("-c", str(tmp_path / "absent.toml")), 1, "No such file or directory")


def test_config_is_a_directory(tmp_path: Path) -> None:
    assert_one_line_error(run("-c", str(tmp_path)), 1, "cannot read")


def test_unreadable_config(tmp_path: Path) -> None:
    path = tmp_path / "sipd.toml"
    path.write_text('realm = "x"\n')
    path.chmod(0)
    # As root the mode does not stop reading; check as an unprivileged uid.
    p = subprocess.run(
        ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups",
         *SIPD, "-c", str(path), "--check-config"],
        capture_output=True, text=True, timeout=20, cwd=ROOT,
    )
    if "Operation not permitted" in p.stderr and "setpriv" in p.stderr:
        pytest.skip("setpriv needs root")
    assert_one_line_error(p, 1, "Permission denied")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("frob = 1\n", "unknown setting 'frob'"),
        ("min_expires = -5\n", "min_expires must be a positive integer"),
        ("sync = 'sometimes'\n", "sync must be one of"),
        ("listen = ['udp:1.2.3:5060']\n", "bad listen address"),
        ("metrics_listen = 'localhost:9100'\n",
         "sipd.toml: bad metrics_listen address 'localhost:9100': 'localhost' is not an IP address"),
        ("realm = \n", "sipd.toml"),
        ("min_expires = 7200\n", "min_expires (7200) is larger than max_expires"),
        ("rtpengine = 'tcp:127.0.0.1:2223'\n", "rtpengine 'tcp:127.0.0.1:2223': only udp:"),
        ("rtpengine = 'udp:localhost:2223'\n", "rtpengine must be udp:ADDRESS:PORT"),
        ("rtpengine = 'udp:127.0.0.1'\n", "rtpengine must be udp:ADDRESS:PORT"),
        ("media_relay = 'sometimes'\n", "media_relay must be one of always, nat, never"),
    ],
)
def test_bad_config_values(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "sipd.toml"
    path.write_text(text)
    assert_one_line_error(run("-c", str(path), "--check-config"), 1, message)


def test_check_config_prints_effective_settings(tmp_path: Path, unix: FakeUnix) -> None:
    # Under the fake users: --check-config also checks the group and PAM.
    path = tmp_path / "sipd.toml"
    path.write_text('realm = "example.org"\nmax_contacts = 4\n')
    p = run("-c", str(path), "--check-config", "-l", "tcp:[::1]:5099", "--no-pam", "--no-mount",
            env=unix.env)
    assert p.returncode == 0, p.stderr
    out = p.stdout.splitlines()
    assert 'realm = "example.org"' in out
    assert "max_contacts = 4" in out
    assert 'listen = ["tcp:[::1]:5099"]' in out
    assert "pam = false" in out
    assert "min_expires = 60" in out


def test_defaults_without_config_file(unix: FakeUnix) -> None:
    # The default path is optional: absent means built-in defaults.
    if os.path.exists("/etc/sipd/sipd.conf"):
        pytest.skip("/etc/sipd/sipd.conf exists on this host")
    p = run("--check-config", "--no-mount", env=unix.env)
    assert p.returncode == 0, p.stderr
    assert 'listen = ["udp:0.0.0.0:5060", "tcp:0.0.0.0:5060", "udp:[::]:5060", "tcp:[::]:5060"]' in p.stdout


def test_busy_port() -> None:
    port = free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", port))
        p = run("--no-mount", "--no-pam", "-g", "root", "-c", "/dev/null", "-l", f"127.0.0.1:{port}")
    assert_one_line_error(p, 1, f"cannot listen on udp:127.0.0.1:{port}: Address already in use")


def test_busy_metrics_port(tmp_path: Path) -> None:
    port = free_port()
    conf = tmp_path / "sipd.toml"
    conf.write_text(f'metrics_listen = "127.0.0.1:{port}"\n')
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", port))
        s.listen()
        p = run("--no-mount", "--no-pam", "-g", "root", "-c", str(conf),
                "-l", f"127.0.0.1:{free_port()}")
    assert_one_line_error(
        p, 1, f"cannot listen on metrics_listen 127.0.0.1:{port}: Address already in use")


def test_missing_group_refused() -> None:
    p = run("--no-mount", "--no-pam", "-g", "no-such-group-here", "-c", "/dev/null",
            "-l", f"127.0.0.1:{free_port()}")
    assert_one_line_error(p, 1, "group 'no-such-group-here' does not exist")


def test_missing_pam_service_refused(unix: FakeUnix) -> None:
    # libpam would fall back to "other", which lets non-members in.
    p = subprocess.run(
        [*SIPD, "--no-mount", "--pam-service", "no-such-service", "-c", "/dev/null",
         "-l", f"127.0.0.1:{free_port()}"],
        capture_output=True, text=True, timeout=20, cwd=ROOT, env=unix.env,
    )
    assert_one_line_error(p, 1, "no-such-service is missing")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_cleanly(tmp_path: Path, sig: signal.Signals, unix: FakeUnix) -> None:
    with running_sipd(tmp_path, unix=unix) as daemon:
        daemon.proc.send_signal(signal.SIGHUP)  # must not kill it
        assert daemon.ping() == 200
        daemon.proc.send_signal(sig)
        assert daemon.proc.wait(10) == 0
    log = daemon.log
    assert "sipd stopped" in log
    assert "Traceback" not in log


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:5060", ["udp:127.0.0.1:5060", "tcp:127.0.0.1:5060"]),
        ("udp:[::1]:5070", ["udp:[::1]:5070"]),
        ("TCP:0.0.0.0:5061", ["tcp:0.0.0.0:5061"]),
    ],
)
def test_parse_listen(text: str, expected: list[str]) -> None:
    assert [str(a) for a in parse_listen(text)] == expected


@pytest.mark.parametrize("text", ["localhost:5060", "[::1:5060", "1.2.3.4:0", "1.2.3.4", "udp:1.2.3.4:99999"])
def test_parse_listen_rejects(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_listen(text)


def test_the_default_realm_is_looked_up_once_at_start() -> None:
    # The daemon serves with the realm filled in: nothing asks DNS for it again.
    assert Settings(realm="example.org").resolved().realm == "example.org"
    resolved = Settings().resolved()
    assert resolved.realm == host_realm()
    assert resolved.resolved() is resolved


# ------------------------------------------------------------------- logging


@pytest.fixture
def logging_state() -> Iterator[None]:
    """setup_logging changes process-wide loggers: put them back."""
    names = ("", *OWN_LOGGERS)
    saved = {n: (logging.getLogger(n).level, logging.getLogger(n).handlers[:]) for n in names}
    switches = ("_srcfile", "logThreads", "logProcesses", "logMultiprocessing")
    saved_switches = {name: getattr(logging, name) for name in switches}
    try:
        yield
    finally:
        for n, (level, handlers) in saved.items():
            logging.getLogger(n).setLevel(level)
            logging.getLogger(n).handlers[:] = handlers
        for name, value in saved_switches.items():
            setattr(logging, name, value)


@pytest.mark.parametrize(("level", "own", "libraries"), [
    ("info", logging.INFO, logging.WARNING),
    ("debug", logging.DEBUG, logging.WARNING),
    ("trace", logging.DEBUG, logging.DEBUG),
    ("warning", logging.WARNING, logging.WARNING),
    ("error", logging.ERROR, logging.ERROR),
])
def test_libraries_debug_only_at_trace(logging_state: None, level: str, own: int,
                                       libraries: int) -> None:
    setup_logging(level)
    for name in ("sipd.auth", "srfs.fuse"):
        assert logging.getLogger(name).getEffectiveLevel() == own, name
    for name in ("trio", "pyfuse3", "asyncio"):
        assert logging.getLogger(name).getEffectiveLevel() == libraries, name


def test_records_are_made_without_caller_thread_or_process(logging_state: None) -> None:
    setup_logging("info")
    made: list[logging.LogRecord] = []
    handler = logging.getLogger().handlers[0]

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            made.append(record)
            self.text = handler.format(record)

    keep = Keep()
    logging.getLogger().handlers[:] = [keep]
    logging.getLogger("sipd.proxy").info("call started: %s", "c1")
    record, = made
    assert record.funcName == "(unknown function)" and record.threadName is None
    assert record.processName is None
    assert keep.text.endswith(" sipd.proxy: INFO: call started: c1")


@pytest.mark.parametrize(("args", "level"), [
    ([], "info"), (["-v"], "debug"), (["-vv"], "trace"), (["-v", "-v"], "trace"),
    (["-q"], "warning"), (["-vv", "--log-level", "error"], "error"),
])
def test_verbosity_options(args: list[str], level: str) -> None:
    settings = settings_from_args(make_parser().parse_args([*args, "-c", "/dev/null"]))
    assert settings.log_level == level


def test_the_journal_is_told_by_its_device_and_inode(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    log = tmp_path / "stderr"
    with open(log, "w") as stream:
        st = os.fstat(stream.fileno())
        monkeypatch.setattr(sys, "stderr", stream)
        for value, journal in ((f"{st.st_dev}:{st.st_ino}", True),
                               (f"{st.st_dev}:{st.st_ino + 1}", False),
                               ("", False), ("garbage", False), ("1:x", False)):
            monkeypatch.setenv("JOURNAL_STREAM", value)
            assert stderr_is_journal() is journal, value
        monkeypatch.delenv("JOURNAL_STREAM")
        assert not stderr_is_journal()


def test_a_log_level_in_the_file(tmp_path: Path) -> None:
    conf = tmp_path / "sipd.toml"
    conf.write_text('log_level = "trace"\n')
    assert settings_from_args(make_parser().parse_args(["-c", str(conf)])).log_level == "trace"
    conf.write_text('log_level = "loud"\n')
    with pytest.raises(ConfigError, match="trace, debug, info, warning, error"):
        settings_from_args(make_parser().parse_args(["-c", str(conf)]))


def test_a_start_up_error_under_journald_is_marked_as_an_error(tmp_path: Path) -> None:
    err = tmp_path / "stderr"
    with open(err, "wb") as stream:
        st = os.fstat(stream.fileno())
        env = {**os.environ, "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        code = subprocess.run([*SIPD, "-c", str(tmp_path / "absent.toml")], stderr=stream,
                              stdout=subprocess.DEVNULL, timeout=20, cwd=ROOT, env=env).returncode
    assert code == 1
    (line,) = err.read_text().splitlines()
    assert line.startswith("<3>sipd: ") and "No such file or directory" in line, line
