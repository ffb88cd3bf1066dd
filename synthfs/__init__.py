"""synthfs: unmodified programs see a data repository as /data, without a kernel mount.

One import name for the whole product. Its parts are subpackages, one per
process and one per shared concern (the design card's top-level folders; in a
checkout ``synthfs/`` links them, in a wheel they are inside this package):

- :mod:`synthfs.interposer`: the supervisor that traps guest syscalls (table,
  filter, handlers, namespace).
- :mod:`synthfs.policy`: the policy language (loader, engine, globs, audit).
- :mod:`synthfs.agent`: the trusted agent (token, cache, uploads).
- :mod:`synthfs.server`: the data server and its storage backends.
- :mod:`synthfs.protocol`: the wire between them, and what both sides share.
- :mod:`synthfs.cli`: the ``synthfs`` command.

Importing this package imports nothing else: start-up pays only for the
subcommand it runs.
"""

__version__ = "0.2.0"
