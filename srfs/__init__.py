"""srfs: the state of a SIP service kept in the UNIX user database and homes.

UNIX users and the SIP group, the ``~/.sr`` files, the in-memory location
store and the ``/run/sr`` filesystem view of them. It never imports
:mod:`sipd`: it knows users, homes, contacts and settings, not SIP
transactions.
"""

__version__ = "0.1.0"
