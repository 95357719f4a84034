"""The transaction-stateful proxy of RFC 3261 §16, sans-IO.

Routing and forking (:mod:`~sipd.proxy.proxy`), next hops
(:mod:`~sipd.proxy.targets`), caller identity (:mod:`~sipd.proxy.callerid`),
users' settings (:mod:`~sipd.proxy.users`), what one sender can make it do
(:mod:`~sipd.proxy.limits`) and the calls in progress with their records
(:mod:`~sipd.proxy.calltrack`). Imports :mod:`sipd.sip`, :mod:`sipd.core`,
:mod:`sipd.auth`, :mod:`sipd.registrar` and :mod:`srfs`.
"""
