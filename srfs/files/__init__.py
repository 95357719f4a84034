"""Files: safe I/O in users' homes and the format of each file sipd reads or writes.

:mod:`~srfs.files.home` is the only code that opens files in homes (no
links followed, owner and mode checked); the other modules are the formats
of ``~/.sr/usrloc``, ``~/.sr/config``, ``~/.sr/acc``, the admin files
(``/etc/sipd/aliases``, ``/etc/sipd/trunks``) and utmp/wtmp records.
"""
