"""srfs: the state of a SIP service kept in the UNIX user database and homes.

It never imports :mod:`sipd`: it knows users, homes, contacts and
settings, not SIP transactions. The layers, lowest first; each imports
only those before it:

- the small modules at the top: :mod:`~srfs.user`, :mod:`~srfs.addresses`,
  :mod:`~srfs.lines`, :mod:`~srfs.errors` and :mod:`~srfs.logtext` (log
  lines that outside values cannot break);
- :mod:`srfs.state`: registrations and calls in progress, in memory;
- :mod:`srfs.files`: safe I/O in homes and the format of each file;
- :mod:`srfs.accounts`: UNIX users, the SIP group, PAM, digest passwords;
- :mod:`srfs.fs`: the ``/run/sr`` filesystem, and :mod:`~srfs.sipdconf`,
  what sipd and sippasswd read alike in ``sipd.conf``;
- :mod:`~srfs.sippasswd`: the ``sippasswd`` command.
"""

__version__ = "0.1.0"
