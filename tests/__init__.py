"""The test suite: folders mirror sipd/ and srfs/; e2e/ runs the real daemon with real peers.

Helpers shared by many tests live here: :mod:`tests.sipclient` (a sipd
subprocess and tiny SIP clients), :mod:`tests.unixusers` (fake UNIX users
under nss_wrapper and pam_wrapper), :mod:`tests.phone`,
:mod:`tests.linphone`, :mod:`tests.fusehelper`, :mod:`tests.stockhost`,
:mod:`tests.installed` (``make install`` into a throw-away prefix).
"""

from pathlib import Path

#: This folder: the raw messages in vectors/, the sipp scenarios in sipp/.
TESTS = Path(__file__).resolve().parent
#: The repository: the man pages, the tools.
REPO = TESTS.parent
