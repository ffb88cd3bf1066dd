"""``synthfs learn``: run a command with every access allowed and recorded, write its policy.

    synthfs learn [--data DIR | --agent EP] [--mount /data] [--from POLICY] [--pin-sha256]
                  -o FILE -- CMD [ARGS...]

Role: the I/O shell around :mod:`synthfs.policy.learn` (which turns the
records into a policy). It runs CMD exactly as ``synthfs run`` would, under a
learning policy (:func:`~synthfs.policy.learn.learning_policy`: everything
allowed, host writes and the network checked so that they are recorded) with
``--audit-all`` into a private directory, lists what the repository held
before and after, then writes the narrowest policy to FILE (atomically: a
temporary file in FILE's directory, renamed when complete).

A command that fails still gets its policy (what it did until it failed is
what the same run needs), with a note; ``learn`` then exits with the
command's status, so a script sees the failure. Trusts its caller (the user).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import shlex
import shutil
import sys
import tempfile
from collections.abc import Callable
from typing import NoReturn

from synthfs.policy.engine import Policy, PolicyError
from synthfs.policy.learn import Tree, learn, learning_policy, read_accesses

__all__ = ["HELP", "configure", "main"]

HELP = "run a command with everything allowed and recorded; write the policy it needs"


def configure(parser: argparse.ArgumentParser) -> None:
    def error(message: str) -> NoReturn:  # one line, not argparse's usage block
        parser.exit(2, f"synthfs learn: {message} (see synthfs learn -h)\n")

    parser.error = error  # type: ignore[method-assign]
    src = parser.add_mutually_exclusive_group()
    src.add_argument("--data", metavar="DIR", help="serve DIR as the repository (as synthfs run)")
    src.add_argument("--agent", metavar="ENDPOINT", help="use a running agent (ipc://PATH)")
    parser.add_argument(
        "--mount", default="/data", help="guest path of the synthetic tree (default: /data)"
    )
    parser.add_argument(
        "--from", dest="base", metavar="POLICY",
        help="extend this policy (a file or a shipped name) instead of starting empty",
    )
    parser.add_argument(
        "-o", "--output", metavar="FILE", help="where to write the learned policy (required)"
    )
    parser.add_argument(
        "--pin-sha256", action="store_true",
        help="pin each new app to the sha256 of its executable (match.sha256)",
    )
    parser.add_argument("--cache", metavar="DIR", help="content cache directory for --data")
    parser.add_argument("command", nargs=argparse.REMAINDER, metavar="-- CMD [ARGS...]")


def _fail(message: str, code: int = 2) -> int:
    print(f"synthfs learn: {message}", file=sys.stderr)
    return code


def main(args: argparse.Namespace) -> int:
    command = list(args.command)
    if command and command[0] == "--":
        command.pop(0)
    if not command:
        return _fail("no command given (usage: synthfs learn [OPTIONS] -o FILE -- CMD [ARGS...])")
    if not args.output:
        return _fail("say where to write the policy: -o FILE")
    if not args.agent and not args.data:
        return _fail("say where the data is: --data DIR (a directory to serve) or --agent ENDPOINT")
    if args.data and not os.path.isdir(args.data):
        return _fail(f"--data {args.data}: not a directory")
    mount = os.path.normpath(args.mount) if args.mount.startswith("/") else ""
    if not mount or mount == "/":
        return _fail(f"--mount {args.mount!r} must be an absolute path below /")
    base_text, base_name, symlinks = None, "", None
    if args.base:
        from synthfs.policy.shipped import PolicyNotFound, locate

        try:
            path = locate(args.base)
            base = Policy.from_toml(path, notes=[])
            with open(path, encoding="utf-8") as f:
                base_text = f.read()
        except PolicyNotFound as exc:
            return _fail(str(exc))
        except PolicyError as exc:
            return _fail(f"--from: {exc}")
        if mount not in base.mounts:
            return _fail(f"--from {args.base} has no [[mount]] for {mount}"
                         f" (it names {', '.join(base.mounts) or 'none'}): pass --mount")
        base_name, symlinks = os.fspath(path), base.symlinks[mount].value
    # The output's directory must take a new file: found out now, not after the run.
    out = os.path.abspath(args.output)
    if os.path.isdir(out):
        return _fail(f"-o {args.output}: is a directory")
    try:
        _write_beside(out, None)
    except OSError as exc:
        return _fail(f"-o {args.output}: cannot write there ({exc.strerror or exc})")
    return _learn(args, command, mount, out, base_text, base_name, symlinks)


def _write_beside(out: str, text: str | None) -> None:
    """Write ``text`` to ``out`` whole or not at all: a temporary file in its directory,
    renamed over it (``None``: only find out that the directory takes one)."""
    fd, partial = tempfile.mkstemp(prefix=".synthfs-learn-", suffix=".toml",
                                   dir=os.path.dirname(out))
    try:
        if text is not None:
            umask = os.umask(0o022)
            os.umask(umask)
            os.fchmod(fd, 0o666 & ~umask)  # as a file the shell's > would make
            with open(fd, "w", encoding="utf-8", closefd=False) as f:
                f.write(text)
            os.replace(partial, out)
    finally:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(partial)


def _learn(
    args: argparse.Namespace, command: list[str], mount: str, out: str,
    base_text: str | None, base_name: str, symlinks: str | None,
) -> int:
    from synthfs.agent.embedded import private_dir

    work = private_dir("synthfs-learn-")
    try:
        policy_file = os.path.join(work, "learn.toml")
        audit_file = os.path.join(work, "audit.jsonl")
        with open(policy_file, "w", encoding="utf-8") as f:
            f.write(learning_policy(mount, symlinks))
        before = _contents(args, mount)
        status = _run(args, command, mount, policy_file, audit_file)
        if status is None:
            return 125
        after = _contents(args, mount)
        try:
            with open(audit_file, encoding="utf-8") as f:
                accesses = read_accesses(f)
        except OSError:
            accesses = []
        if not accesses and status != 0:  # it never ran (command not found): nothing to learn
            return _fail(f"the command did not run (status {status}); no policy written",
                         status)
        digest = _digest_of(args, mount) if args.pin_sha256 else None
        try:
            learned = learn(
                accesses, mount=mount, tree=before.merged(after), after=after,
                command=shlex.join(command),
                base=base_text, base_name=base_name, digest=digest,
                name=os.path.splitext(os.path.basename(out))[0] or "learned",
            )
        except PolicyError as exc:
            return _fail(str(exc), 1)
        try:
            _write_beside(out, learned.text)
        except OSError as exc:
            return _fail(f"-o {args.output}: {exc.strerror or exc}", 1)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for warning in learned.warnings:
        print(f"synthfs learn: note: {warning}", file=sys.stderr)
    if status != 0:
        print(f"synthfs learn: note: the command exited with status {status}; the policy"
              " allows what it did until then", file=sys.stderr)
    print(f"synthfs learn: wrote {args.output} ({learned.apps} apps, {learned.rules} learned"
          f" rules from {len(accesses)} decisions); review it, then enforce it with"
          f" synthfs run --policy {args.output}", file=sys.stderr)
    return status


def _run(
    args: argparse.Namespace, command: list[str], mount: str, policy_file: str, audit_file: str
) -> int | None:
    """``synthfs run`` of the command under the learning policy; its status (None: it
    could not start, and said why)."""
    from synthfs.interposer import run

    parser = argparse.ArgumentParser(prog="synthfs learn")
    parser.add_argument("-v", "--verbose", action="count", default=args.verbose)
    run.configure(parser)
    source = ["--data", args.data] if args.data else ["--agent", args.agent]
    cache = ["--cache", args.cache] if args.cache else []
    argv = [*source, *cache, "--mount", mount, "--policy", policy_file,
            "--audit", audit_file, "--audit-all", "--", *command]
    status = run.main(parser.parse_args(argv))
    if not os.path.exists(audit_file):  # it failed before the guest ran (it said why)
        return None
    return int(status)


def _contents(args: argparse.Namespace, mount: str) -> Tree:
    """What the repository holds now: each directory's names, as guest paths."""
    if args.data:
        root = os.path.realpath(args.data)
        dirs: dict[str, frozenset[str]] = {}
        for dirpath, dirnames, filenames in os.walk(root):
            rel = os.path.relpath(dirpath, root)
            guest = mount if rel == "." else f"{mount}/{rel}"
            dirs[guest] = frozenset(dirnames) | frozenset(filenames)
        return Tree(dirs)
    return _agent_contents(args.agent, mount)


def _agent_contents(endpoint: str, mount: str) -> Tree:
    """The repository's directories as the agent lists them (unknown if it cannot)."""
    from synthfs.interposer.remote import Remote
    from synthfs.protocol.messages import FileKind

    try:
        remote = Remote(endpoint)
    except OSError:
        return Tree.unknown()
    dirs: dict[str, frozenset[str]] = {}
    try:
        stack = ["/"]
        while stack:
            repo = stack.pop()
            listing = remote.listdir(repo)
            guest = mount if repo == "/" else mount + repo
            dirs[guest] = frozenset(e.name for e in listing.entries)
            base = "" if repo == "/" else repo
            stack += [f"{base}/{e.name}" for e in listing.entries if e.attrs.kind is FileKind.DIR]
    except OSError:
        return Tree.unknown()
    finally:
        remote.close()
    return Tree(dirs)


def _digest_of(args: argparse.Namespace, mount: str) -> Callable[[str], str | None]:
    """sha256 of an executable by its path (a /data one through --data's directory)."""
    root = os.path.realpath(args.data) if args.data else None

    def digest(exe: str) -> str | None:
        path = exe
        if exe == mount or exe.startswith(mount + "/"):
            if root is None:
                return None
            path = root + exe[len(mount):]
        try:
            with open(path, "rb") as f:
                return hashlib.file_digest(f, "sha256").hexdigest()
        except OSError:
            return None

    return digest
