"""The sans-IO SIP core: messages, framing, transactions, digest math.

Bytes and ``now`` in, bytes and deadlines out: no sockets, no clocks, and
no import of anything else of the project.

The modules named in :data:`MYPYC_MODULES` are compiled with mypyc when
sipd is built as a wheel (``make install``, ``pip install .``) on a host
with a C compiler and the Python headers; setup.py reads the list from
here. A checkout (``make run``, ``make test``) and a build with
``SIPD_PURE=1`` run the same modules as plain Python. :func:`build` says
which one is running.
"""

from __future__ import annotations

import importlib

#: Compiled together into one extension by setup.py. Self-contained: they
#: import only each other, errors.py and the standard library. errors.py
#: stays interpreted because framing.py subclasses ParseError (an
#: interpreted class cannot extend a compiled one), and framing.py because
#: mypyc cannot compile its bytes subclasses (Ping, Pong). transaction.py
#: and timers.py are not on the list: the time a REGISTER spends in them
#: is small next to parsing and digest math.
MYPYC_MODULES = ("uri", "headers", "message", "checks", "digest", "timers", "transaction")


def compiled_modules() -> list[str]:
    """The modules of :data:`MYPYC_MODULES` that run compiled, not from a .py file."""
    out = []
    for name in MYPYC_MODULES:
        module = importlib.import_module(f"{__name__}.{name}")
        if not (module.__file__ or "").endswith(".py"):
            out.append(name)
    return out


def build() -> str:
    """How the SIP core runs: ``compiled with mypyc`` or ``pure Python``."""
    compiled = compiled_modules()
    if not compiled:
        return "pure Python"
    if len(compiled) == len(MYPYC_MODULES):
        return "compiled with mypyc"
    return f"partly compiled with mypyc ({', '.join(compiled)})"
