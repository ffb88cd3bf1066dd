"""The interposer: supervisor, syscall table, seccomp filter, handlers, namespace, policy, CLI."""
