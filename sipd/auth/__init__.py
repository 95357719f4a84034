"""Digest authentication as the server applies it: one flow for REGISTER and calls.

Credentials, throttle, account, digest, verdict
(:mod:`~sipd.auth.authenticator`); the brute-force throttle
(:mod:`~sipd.auth.throttle`); which algorithms a challenge offers
(:mod:`~sipd.auth.challenges`). Sans-IO: the account look-up is handed to
the I/O layer as blocking work. Imports :mod:`sipd.sip`, :mod:`sipd.core`
and :mod:`srfs`.
"""
