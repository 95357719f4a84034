"""Who may use SIP: NSS users, the SIP group, PAM's account check, digest passwords.

:mod:`~srfs.accounts.users` looks users up (through :mod:`~srfs.accounts.nss`,
which tells a failing directory from an unknown user);
:mod:`~srfs.accounts.pamcheck` asks PAM; :mod:`~srfs.accounts.state` holds
the verdict's rules;
:mod:`~srfs.accounts.directory` answers, per request, whether a user may
use SIP and with which HA1s; :mod:`~srfs.accounts.passwd` is the
``~/.sr/passwd`` format and :mod:`~srfs.accounts.digestcalc` the HA1 math.
A look-up may block (an NSS or PAM module can talk to a directory); the
daemon runs them in worker threads.
"""
