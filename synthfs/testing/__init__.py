"""What a new part of synthfs needs to prove it keeps the contract.

:mod:`synthfs.testing.backend_suite` is the file-system contract every
repository backend passes: subclass its suite and give it ``make_backend``.
"""
