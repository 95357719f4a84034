"""Which of sipd's modules are compiled with mypyc, and whether they run so.

The modules named in :data:`MYPYC_MODULES` are compiled with mypyc when
sipd is built as a wheel (``make install``, ``pip install .``) on a host
with a C compiler and the Python headers; setup.py reads the list from
this file without importing it. A checkout (``make run``, ``make test``)
and a build with ``SIPD_PURE=1`` run the same modules as plain Python.
:func:`build` says which one is running; ``sipd --version`` and the
daemon's start-up line print it.

The list is the per-message path: the SIP core, the services that answer
and route each request, the sans-IO endpoint that joins them, and the
table of calls in progress (``srfs.state.calls``), which the call tracker
changes three times a call, and the location store with its contact lines
(``srfs.state.location``, ``srfs.files.usrloc``), which every REGISTER
checks, renders for its ``~/.sr/usrloc`` and applies, and the NAT
keep-alive (``sipd.proxy.keepalive``), which hears each of those changes. The I/O
layer stays interpreted: it mostly waits (trio, worker threads, FUSE),
and mypyc would gain little there. A compiled module may import
interpreted ones (a call into one is an ordinary Python call); the other
way, an interpreted class may not extend a compiled one, which
``tests/unit/sipd/test_compiled.py`` checks. Left out on purpose:
``sipd.sip.errors`` (framing.py's errors extend its ParseError),
``sipd.sip.framing`` (mypyc cannot compile its ``bytes`` subclasses),
``sipd.core.work`` (a generic class compiled by mypyc cannot be
subscripted, as ``Job[T]`` is), and what runs seldom or in worker threads
(``sipd.proxy.users``, ``sipd.media``).

A dataclass's generated ``__init__`` stays interpreted in a compiled
module (dataclass writes it when the module is imported), and costs five
to ten times a compiled one. So the classes made for every message write
their ``__init__`` out (a frozen one stores through
``object.__setattr__``, which mypyc compiles to a plain store), and
``tests/unit/sipd/test_compiled.py`` checks that each takes the fields
dataclass would give it; the proxy's ``Context`` and ``Branch`` are
plain classes.
"""

from __future__ import annotations

import importlib

#: Compiled together into one extension by setup.py; full module names.
MYPYC_MODULES = (
    "sipd.sip.uri", "sipd.sip.headers", "sipd.sip.message", "sipd.sip.checks",
    "sipd.sip.digest", "sipd.sip.timers", "sipd.sip.transaction", "sipd.core.peer",
    "sipd.core.identity", "sipd.core.numbers", "sipd.core.ownership", "sipd.core.flows",
    "sipd.auth.throttle", "sipd.auth.challenges", "sipd.auth.authenticator",
    "sipd.registrar.admission", "sipd.registrar.changelog", "sipd.registrar.register",
    "sipd.registrar.persistence", "sipd.registrar.server", "sipd.proxy.ack",
    "sipd.proxy.callerid", "sipd.proxy.calltrack", "sipd.proxy.context",
    "sipd.proxy.flowtoken", "sipd.proxy.limits", "sipd.proxy.targets", "sipd.proxy.local",
    "sipd.proxy.routing", "sipd.proxy.forking", "sipd.proxy.proxy", "sipd.endpoint",
    "srfs.state.calls", "srfs.state.location", "srfs.files.usrloc", "sipd.proxy.keepalive",
)


def compiled_modules() -> list[str]:
    """The modules of :data:`MYPYC_MODULES` that run compiled, not from a .py file."""
    out = []
    for name in MYPYC_MODULES:
        module = importlib.import_module(name)
        if not (module.__file__ or "").endswith(".py"):
            out.append(name)
    return out


def build() -> str:
    """How sipd's per-message code runs: ``compiled with mypyc`` or ``pure Python``."""
    compiled = compiled_modules()
    if not compiled:
        return "pure Python"
    if len(compiled) == len(MYPYC_MODULES):
        return "compiled with mypyc"
    return f"partly compiled with mypyc ({', '.join(compiled)})"
