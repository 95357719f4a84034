"""What the services share below them: transport addresses, work for the I/O layer, identity.

:mod:`~sipd.core.peer` names remote ends, :mod:`~sipd.core.work` is the
blocking work the sans-IO code hands to the I/O layer (and how its outcome
comes back), :mod:`~sipd.core.identity` says who "this server" is,
:mod:`~sipd.core.ownership` holds the alias map and trunks in force, and
:mod:`~sipd.core.flows` indexes connections that carry registrations.
Imports :mod:`sipd.sip` and :mod:`srfs` only.
"""
