"""Who may use SIP: NSS users, the SIP group, PAM's account check, digest passwords.

Every call here may block (an NSS or PAM module can talk to a directory);
the daemon runs them in worker threads.
"""
