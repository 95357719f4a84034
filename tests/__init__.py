"""The test suite: folders mirror sipd/ and srfs/; e2e/ runs the real daemon with real peers.

Helpers shared by many tests live here: :mod:`tests.sipclient` (a sipd
subprocess and tiny SIP clients), :mod:`tests.unixusers` (fake UNIX users
under nss_wrapper and pam_wrapper), :mod:`tests.phone`,
:mod:`tests.linphone`, :mod:`tests.fusehelper`, :mod:`tests.stockhost`,
:mod:`tests.installed` (``make install`` into a throw-away prefix).
"""

import signal
from pathlib import Path

#: This folder: the raw messages in vectors/, the sipp scenarios in sipp/.
TESTS = Path(__file__).resolve().parent
#: The repository: the man pages, the tools.
REPO = TESTS.parent


def default_signals() -> None:
    """``preexec_fn`` for a child that a test interrupts with SIGINT or SIGQUIT.

    A shell without job control starts background commands with those two
    ignored, and children inherit that: under ``make test &`` a Ctrl-C the
    test sends would otherwise do nothing.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGQUIT, signal.SIG_DFL)
