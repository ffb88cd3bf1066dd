"""``synthfs policy``: check a policy file, or explain one decision.

    synthfs policy list
    synthfs policy check FILE [FILE ...]
    synthfs policy explain FILE --exe PATH [--argv 'ARGV' | --arg A ...] --op OP --path PATH

Role: a thin shell around :mod:`synthfs.policy.engine` for humans and CI.
``check`` prints ``FILE: ok (N apps, M rules)`` or the error with its line
and fix, and exits 0 (all ok) or 1; a variable the environment (and
``--var``) leaves unset is checked as a placeholder and noted on stderr,
since it need only be set where the policy is used. ``explain`` identifies the app the way
the supervisor would at execve (realpath of ``--exe``, argv, sha256 of the
file only if a pin needs it), then prints the decision, the rule that made
it, the rules it beat, and the errno; exit 0 if allowed, 1 if denied or the
file is invalid. Usage errors exit 2 (argparse).

Wherever a FILE is expected, the name of a shipped policy works too
(``synthfs policy check readonly``); ``list`` shows the shipped ones with
their descriptions.

Trusts its caller (the user at a terminal); reads the policy file and, for a
pinned app, the executable.
"""

from __future__ import annotations

import argparse
import errno as _errno
import hashlib
import os
import shlex
import sys
from collections.abc import Mapping

from synthfs.policy.engine import Op, Policy, PolicyError
from synthfs.policy.shipped import PolicyNotFound, locate, shipped

__all__ = ["HELP", "configure", "main"]

HELP = "check or explain a policy file"


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="policy_command", metavar="{check,explain}")
    sub.add_parser("list", help="list the policies shipped with synthfs (use them by name)")
    check = sub.add_parser("check", help="validate policy files (exit 1 if any is invalid)")
    check.add_argument("files", nargs="+", metavar="FILE")
    _add_vars(check)
    explain = sub.add_parser(
        "explain",
        help="say which app matches, which rule decides and why",
        description="Explain one decision. Give the guest's argv as one shell-quoted string"
        " (--argv 'python3 -m pytest') or element by element (--arg python3 --arg=-m)."
        " Paths on a mount are decided by the app's rules; other paths by [host].",
    )
    explain.add_argument("file", metavar="FILE")
    explain.add_argument("--exe", required=True, help="executable (its realpath is matched)")
    explain.add_argument("--argv", default=None, help="argv as one shell-quoted string")
    explain.add_argument(
        "--op", required=True, choices=[o.value for o in Op], help="operation to decide"
    )
    explain.add_argument("--path", required=True, help="absolute guest path")
    explain.add_argument(
        "--read-only", action="store_true", help="as under synthfs run --read-only"
    )
    explain.add_argument(
        "--arg",
        dest="rest",
        action="append",
        default=[],
        metavar="ARG",
        help="append one argv element (repeatable; write --arg=-m for a dash)",
    )
    _add_vars(explain)


def _add_vars(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--var",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="set a policy variable (default: the environment), e.g. --var WORKSPACE=$PWD",
    )


def _env(pairs: list[str]) -> Mapping[str, str] | None:
    env = dict(os.environ)
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            return None
        env[name] = value
    return env


def main(args: argparse.Namespace) -> int:
    env = _env(args.var) if args.policy_command in ("check", "explain") else None
    if args.policy_command == "list":
        return _list()
    if args.policy_command == "check":
        if env is None:
            print("synthfs policy: --var needs NAME=VALUE", file=sys.stderr)
            return 2
        return _check(args.files, env)
    if args.policy_command == "explain":
        if env is None:
            print("synthfs policy: --var needs NAME=VALUE", file=sys.stderr)
            return 2
        return _explain(args, env)
    print("usage: synthfs policy {list,check,explain} ... (see synthfs policy -h)", file=sys.stderr)
    return 2


def _list() -> int:
    for name, path in shipped().items():
        try:
            description = Policy.from_toml(path, env={"WORKSPACE": "/"}).description
        except PolicyError as exc:  # a broken shipped file is a bug: say so, keep listing
            description = f"(invalid: {exc})"
        print(f"{name:<10} {description}")
        print(f"{'':<10} {path}")
    return 0


def _check(files: list[str], env: Mapping[str, str]) -> int:
    """Validate each file; a variable set neither in ``env`` nor by --var is a note."""
    status = 0
    for name in files:
        notes: list[str] = []
        try:
            policy = Policy.from_toml(locate(name), env=env, notes=notes)
        except PolicyNotFound as exc:
            print(f"synthfs policy: {exc}", file=sys.stderr)
            status = 1
            continue
        except PolicyError as exc:
            print(exc, file=sys.stderr)
            status = 1
        else:
            print(f"{name}: ok ({len(policy.apps)} apps, {policy.rule_count} rules)")
        for note in notes:
            print(note, file=sys.stderr)
    return status


def _explain(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    try:
        policy = Policy.from_toml(locate(args.file), env=env)
    except PolicyNotFound as exc:
        print(f"synthfs policy: {exc}", file=sys.stderr)
        return 1
    except PolicyError as exc:
        print(exc, file=sys.stderr)
        return 1
    if args.read_only:
        policy = policy.read_only()
    exe = os.path.realpath(args.exe)
    try:
        argv = shlex.split(args.argv) if args.argv is not None else []
    except ValueError as exc:  # an unbalanced quote
        print(f"synthfs policy: --argv {args.argv!r}: {exc}", file=sys.stderr)
        return 2
    argv += args.rest
    if not argv:
        argv = [args.exe]
    path = args.path
    if not path.startswith("/"):
        print(f"synthfs policy: --path {path!r} must be absolute", file=sys.stderr)
        return 2
    path = os.path.normpath(path)
    if path.startswith("//"):
        path = "/" + path.lstrip("/")
    op = Op(args.op)

    hashed: list[str] = []

    def sha256() -> str:
        with open(exe, "rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
        hashed.append(digest)
        return digest

    app = policy.identify(exe, argv, sha256)
    print(f"policy:   {policy.source} ({policy.name}){' --read-only' if args.read_only else ''}")
    shown = exe if exe == args.exe else f"{exe} (realpath of {args.exe})"
    print(f"exe:      {shown}")
    print(f"argv:     {shlex.join(argv)}")
    if app.deny_all is not None:
        print(f"app:      {app.name} — {app.ref}: sha256 {hashed[0] if hashed else '(unreadable)'}")
        print(f"          differs from the pin {', '.join(sorted(app.sha256 or ()))}")
    elif app.matched:
        how = ", ".join(g.text for g in app.exe if g.matches(exe))
        if app.argv:
            how += "; argv " + ", ".join(repr(g.text) for g in app.argv)
        if app.sha256:
            how += "; sha256 pin ok"
        print(f"app:      {app.name} ({app.ref}) — matched exe {how}")
    else:
        print("app:      (none) — no [[app]] matches; the policy default applies")
    on_mount = policy.is_on_mount(path)
    where = "on a synthetic mount" if on_mount else "a host path"
    print(f"op:       {op.value} {path} ({where})")
    if on_mount:
        chain = policy.explain(app, op, path)
        decision = chain[0]
        assert decision == policy.decide(app, op, path)
    else:
        decision = policy.decide_host(app, op, path)
        chain = (decision,)
    verdict = decision.action.value.upper()
    print(f"decision: {verdict} by {decision.rule}: {decision.reason}")
    if decision.errno:
        name = _errno.errorcode.get(decision.errno, str(decision.errno))
        print(f"errno:    {name} ({decision.errno}, {os.strerror(decision.errno)})")
    else:
        print("errno:    0")
    lower = [d for d in chain[1:] if d.rule != "default"]
    if lower:
        print("also matches, lower precedence:")
    for other in lower:
        print(f"          {other.action.value} by {other.rule}: {other.reason}")
    for other in chain[1:]:
        if other.rule == "default":
            print(f"fallback: {other.action.value} by default: {other.reason}")
    return 0 if decision.allowed else 1
