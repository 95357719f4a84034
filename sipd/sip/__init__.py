"""The sans-IO SIP core: messages, framing, transactions, digest math.

Bytes and ``now`` in, bytes and deadlines out: no sockets, no clocks, and
no import of anything else of the project.

A wheel compiles most of these modules with mypyc
(:data:`sipd.io.compiled.MYPYC_MODULES`).
"""
