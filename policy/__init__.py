"""The policy language: who may do what on /data and on the host.

- :mod:`synthfs.policy.engine`: the decisions (``Policy.decide``, ``App``,
  ``Decision``, ``Op``) and the named constructors ``Policy.from_toml``.
- :mod:`synthfs.policy.loader`: TOML text -> a validated ``Policy`` (strict:
  unknown keys, bad globs, ambiguous rules are errors with the line).
- :mod:`synthfs.policy.audit`: one JSON line per decision (``--audit``).
- :mod:`synthfs.policy.globs`: path and argv globs.
- :mod:`synthfs.policy.lines`: line numbers of TOML keys, for load errors.
- :mod:`synthfs.policy.shipped`: the policies shipped with synthfs, by name.
- :mod:`synthfs.policy.cli`: ``synthfs policy list|check|explain``.

Pure: no ptrace, no sockets. The interposer consults it; nothing here trusts
the guest.
"""
