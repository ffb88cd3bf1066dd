"""The policy language: who may do what on /data and on the host.

- :mod:`synthfs.policy.engine`: load a TOML policy strictly and decide
  (``Policy.from_toml``, ``Policy.decide`` → ``Decision``), and the audit log.
- :mod:`synthfs.policy.globs`: path and argv globs.
- :mod:`synthfs.policy.lines`: line numbers of TOML keys, for load errors.
- :mod:`synthfs.policy.cli`: ``synthfs policy check|explain|list``.

Pure: no ptrace, no sockets. The interposer consults it; nothing here trusts
the guest.
"""
