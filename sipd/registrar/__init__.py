"""Requests for the server itself: REGISTER (RFC 3261 §10.3), OPTIONS, and the rest.

:mod:`~sipd.registrar.server` answers them, :mod:`~sipd.registrar.register`
plans a REGISTER's changes, :mod:`~sipd.registrar.admission` is the one
check every binding passes, and :mod:`~sipd.registrar.persistence` puts
changes on disk before they are in force. Sans-IO; imports
:mod:`sipd.sip`, :mod:`sipd.core`, :mod:`sipd.auth` and :mod:`srfs`.
"""
