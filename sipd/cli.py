"""The ``sipd`` command: options, configuration, logging, exit codes.

Exit status: 0 after SIGTERM/SIGINT or a good ``--check-config``; 1 for a
configuration or start-up error (``--check-config`` gives the same line
the daemon would); 2 for a bad command line. Every error is one line on
stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any, NoReturn

import trio

from sipd import __version__
from sipd.config import (
    DEFAULT_CONFIG_PATH,
    LOG_LEVELS,
    ConfigError,
    Settings,
    build,
    check_values,
    describe,
    load_file,
    sample_config,
)
from sipd.io.compiled import build as compiled_build
from sipd.io.transport import StartupError
from srfs.logtext import JournalFormatter, LineFormatter, LineHandler, escape, set_log_level

PROG = "sipd"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line, not argparse's usage block: scripts and journald read it.
        self.exit(2, f"{PROG}: {message} (see {PROG} --help)\n")


def make_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog=PROG,
        description="SIP registrar and proxy for the host's UNIX users.",
    )
    p.add_argument("-c", "--config", metavar="PATH",
                   help=f"TOML configuration file (default {DEFAULT_CONFIG_PATH}, optional)")
    p.add_argument("-l", "--listen", metavar="[PROTO:]HOST:PORT", action="append",
                   help="address to listen on, repeatable; PROTO is udp, tcp, tls, ws or wss, none "
                   "for UDP and TCP (default 0.0.0.0:5060 and [::]:5060)")
    p.add_argument("-m", "--mount", metavar="DIR", help="where to mount the state filesystem")
    p.add_argument("--no-mount", action="store_true", help="run without the state filesystem")
    p.add_argument("-r", "--realm", help="digest realm and primary local domain")
    p.add_argument("-d", "--domain", action="append", metavar="NAME",
                   help="further local domain or address, repeatable")
    p.add_argument("-g", "--group", help="UNIX group whose members may use SIP (default sip)")
    p.add_argument("--pam-service", metavar="NAME", help="PAM service for the account check")
    p.add_argument("--no-pam", action="store_true", help="skip the PAM account check")
    p.add_argument("--check-config", action="store_true",
                   help="run the start-up checks without starting, print the effective "
                   "settings, exit")
    p.add_argument("--print-sample-config", action="store_true",
                   help="print a sipd.conf with every key commented out at its default, exit")
    p.add_argument("-v", "--verbose", action="count", default=0,
                   help="log sipd's debug messages; twice, the libraries' too")
    p.add_argument("-q", "--quiet", action="store_true", help="log warnings and errors only")
    p.add_argument("--log-level", choices=LOG_LEVELS)
    p.add_argument("--version", action=_Version, help="show the version and the build, exit")
    return p


class _Version(argparse.Action):
    """``--version``: the build (sipd.io.compiled) tells a compiled install from a checkout.

    Found only when asked: finding it imports every compiled module, a
    tenth of a second that ``--check-config`` and the rest need not pay.
    """

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> NoReturn:
        print(f"{PROG} {__version__} (build: {compiled_build()})")
        parser.exit()


def settings_from_args(args: argparse.Namespace) -> Settings:
    path = args.config or DEFAULT_CONFIG_PATH
    file_values = load_file(path, required=args.config is not None)
    # Options pass the same checks as the file's keys: "-r ''" is refused
    # like realm = "", not quietly ignored.
    options: dict[str, Any] = {}
    if args.listen:
        options["listen"] = list(args.listen)
    if args.mount is not None:
        options["mount"] = args.mount
    if args.no_mount:
        options["mount_enabled"] = False
    if args.realm is not None:
        options["realm"] = args.realm
    if args.domain:
        options["domains"] = list(args.domain)
    if args.group is not None:
        options["group"] = args.group
    if args.pam_service is not None:
        options["pam_service"] = args.pam_service
    if args.no_pam:
        options["pam"] = False
    if args.log_level:
        options["log_level"] = args.log_level
    elif args.verbose:
        options["log_level"] = "trace" if args.verbose > 1 else "debug"
    elif args.quiet:
        options["log_level"] = "warning"
    return build(file_values, check_values(options, source="command line"), path,
                 config_required=args.config is not None)


def stderr_is_journal() -> bool:
    """Whether standard error is the journal stream systemd opened for us.

    ``JOURNAL_STREAM`` names that stream's device and inode (systemd.exec(5));
    a child whose standard error was redirected elsewhere inherits the
    variable all the same, so the two are compared, as sd-daemon(3) asks.
    """
    dev, sep, ino = os.environ.get("JOURNAL_STREAM", "").partition(":")
    if not sep:
        return False
    try:
        st = os.fstat(sys.stderr.fileno())
        return (st.st_dev, st.st_ino) == (int(dev), int(ino))
    except (OSError, ValueError):
        return False


def fail(error: object) -> None:
    """The one line of an error that stops sipd, on standard error.

    Under systemd it is marked as an error (``<3>``, sd-daemon(3)), so
    ``journalctl -p err`` shows why a start failed.
    """
    prefix = "<3>" if stderr_is_journal() else ""
    print(f"{prefix}{PROG}: {escape(str(error))}", file=sys.stderr)


def setup_logging(level: str) -> None:
    """One handler on standard error; ``level`` for sipd's loggers.

    The libraries' loggers (trio, pyfuse3, asyncio) stay at warning unless
    the level is ``trace``: their debug messages are for debugging them,
    not sipd, and ``-v`` should show what sipd does.
    """
    fmt = "%(name)s: %(levelname)s: %(message)s"
    handler = LineHandler(sys.stderr)
    # Messages carry values from the network and from users' files: one
    # record must stay one line whatever they hold (see srfs.logtext).
    if stderr_is_journal():
        # journald stamps each line itself and reads the priority prefix.
        handler.setFormatter(JournalFormatter(fmt))
    else:
        handler.setFormatter(LineFormatter("%(asctime)s " + fmt))
    logging.getLogger().handlers[:] = [handler]
    # Nothing prints a record's caller, thread or process: logging need not
    # find them for each record (its documented switches; a call's three
    # lines cost a fifth less).
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    set_log_level(level)


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    if args.print_sample_config:
        # The built-in defaults, whatever the configuration file says.
        sys.stdout.write(sample_config())
        return 0
    try:
        settings = settings_from_args(args)
    except ConfigError as exc:
        fail(exc)
        return 1
    setup_logging(settings.log_level)
    if args.check_config:
        return check_config(settings)
    from sipd.io.daemon import run

    try:
        trio.run(run, settings)
    except StartupError as exc:
        fail(exc)
        return 1
    except BaseExceptionGroup as group:
        # A start-up error raised inside the daemon's nursery arrives wrapped.
        startup = _first(group, StartupError)
        if startup is None:
            raise
        fail(startup)
        return 1
    except KeyboardInterrupt:
        # A second Ctrl-C while shutting down.
        return 130
    return 0


def check_config(settings: Settings) -> int:
    """Run the daemon's start-up checks without starting; print the settings if they pass."""
    from sipd.io.startup import check_all

    try:
        check_all(settings)
    except StartupError as exc:
        fail(exc)
        return 1
    print("\n".join(describe(settings)))
    return 0


def _first(group: BaseExceptionGroup[BaseException], kind: type[BaseException]) -> BaseException | None:
    for exc in group.exceptions:
        if isinstance(exc, kind):
            return exc
        if isinstance(exc, BaseExceptionGroup):
            found = _first(exc, kind)
            if found is not None:
                return found
    return None


if __name__ == "__main__":
    sys.exit(main())
