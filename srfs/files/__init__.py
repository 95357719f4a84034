"""Files: safe I/O in users' homes and the format of each file sipd reads or writes.

:mod:`~srfs.files.home` is the only code that opens files in homes (no
links followed, owner and mode checked), and
:mod:`~srfs.files.adminfile` reads and replaces the admin's files under
``/etc/sipd``. The other modules are the formats of ``~/.sr/usrloc``,
``~/.sr/config``, ``~/.sr/acc``, the alias map and the trunks, and the
utmp/wtmp records (:mod:`~srfs.files.wtmp`, which also writes them).
"""
