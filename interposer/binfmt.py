"""The kernel's ``#!`` rules (fs/binfmt_script.c and fs/exec.c), as pure functions.

An execve of a script on /data is rewritten by the supervisor to run the
interpreter (docs/policy.md, exec): these functions say what the kernel would
have done, so that the rewrite gives the same argv and the same errors. They
trust nothing in the bytes they are given (a guest wrote them).
"""

from __future__ import annotations

import errno
import struct
from collections.abc import Callable

__all__ = ["BUF_SIZE", "MAX_SCRIPTS", "elf_interp", "parse", "rewrite_argv"]

#: BINPRM_BUF_SIZE: the kernel reads this much of the file to decide its format.
BUF_SIZE = 256
#: exec_binprm allows 4 levels of interpreter rewrites beyond the first script
#: (``depth > 5``): a chain of this many scripts fails with ELOOP.
MAX_SCRIPTS = 6

_SPACETAB = b" \t"
#: PT_INTERP: the program header naming the loader the kernel maps with an ELF.
_PT_INTERP = 3
#: PATH_MAX: the kernel refuses a longer PT_INTERP (binfmt_elf: ENOEXEC).
_PATH_MAX = 4096
#: ELF class -> (e_phoff, e_phentsize, e_phnum) and (p_type, p_offset, p_filesz) layouts.
_ELF = {
    1: (struct.Struct("<28xI10xHH"), struct.Struct("<II8xI")),
    2: (struct.Struct("<32xQ14xHH"), struct.Struct("<I4xQ16xQ")),
}


def parse(head: bytes) -> tuple[bytes, bytes | None] | None:
    """``(interpreter, optional argument)`` of a ``#!`` file, from its first bytes.

    None: not a script (no ``#!``: another format, ELF or ENOEXEC, decides).
    Raises ``OSError(ENOEXEC)`` for a ``#!`` line the kernel refuses: no
    interpreter name, or one that may have been cut at the buffer's end. As in
    ``load_script``: the line ends at the first newline in the first
    :data:`BUF_SIZE` bytes; spaces and tabs separate; everything after the
    interpreter (inner blanks kept, trailing ones trimmed) is one argument; a NUL
    ends a string.
    """
    buf = head[:BUF_SIZE].ljust(BUF_SIZE, b"\0")  # the kernel's buffer: NUL padded
    if not buf.startswith(b"#!"):
        return None
    end = buf.find(b"\n")
    if end < 0:
        first = _skip_blanks(buf, 2, BUF_SIZE - 1)
        if first is None:
            raise OSError(errno.ENOEXEC, "a #! line of blanks")
        if _terminator(buf, first, BUF_SIZE - 1) is None:
            raise OSError(errno.ENOEXEC, "the #! line's interpreter is cut off")
        end = BUF_SIZE - 1
    while end > 2 and buf[end - 1] in _SPACETAB:
        end -= 1
    name = _skip_blanks(buf, 2, end)
    if name is None or name == end:
        raise OSError(errno.ENOEXEC, "no interpreter on the #! line")
    sep = _terminator(buf, name, end)
    arg = None
    if sep is not None and buf[sep] != 0:
        start = _skip_blanks(buf, sep, end)
        if start is not None:
            arg = _cstring(buf[start:end])
    stop = sep if sep is not None and sep < end else end
    return _cstring(buf[name:stop]), arg


def _skip_blanks(buf: bytes, first: int, last: int) -> int | None:
    """next_non_spacetab: the first index in [first, last] not a space or tab."""
    for i in range(first, last + 1):
        if buf[i] not in _SPACETAB:
            return i
    return None


def _terminator(buf: bytes, first: int, last: int) -> int | None:
    """next_terminator: the first index in [first, last] that is a space, tab or NUL."""
    for i in range(first, last + 1):
        if buf[i] in _SPACETAB or buf[i] == 0:
            return i
    return None


def _cstring(b: bytes) -> bytes:
    return b.split(b"\0", 1)[0]


def rewrite_argv(
    argv: list[bytes], script: bytes, interp: bytes, arg: bytes | None
) -> list[bytes]:
    """The argv the interpreter gets: ``[interp, arg?, script, argv[1:]...]``.

    ``script`` is the name the kernel used for the script (the execve path as
    written, ``/dev/fd/N[/name]`` for execveat on an fd), not the caller's
    ``argv[0]`` (which is dropped, as ``remove_arg_zero`` does).
    """
    return [interp, *([arg] if arg is not None else []), script, *argv[1:]]


def elf_interp(read: Callable[[int, int], bytes]) -> bytes | None:
    """The loader path in an ELF's ``PT_INTERP`` (load_elf_binary: the kernel opens it
    as by open(2) and maps it too), or None (not a little-endian ELF, or no
    ``PT_INTERP``: a static program). ``read(offset, size)`` reads the file."""
    head = read(0, 64)
    if head[:4] != b"\x7fELF" or len(head) < 64 or head[5] != 1 or head[4] not in _ELF:
        return None
    ehdr, phdr = _ELF[head[4]]
    phoff, phentsize, phnum = ehdr.unpack_from(head)
    if phentsize < phdr.size:
        return None
    table = read(phoff, phentsize * phnum)
    for i in range(len(table) // phentsize):
        p_type, p_offset, p_filesz = phdr.unpack_from(table, i * phentsize)
        if p_type == _PT_INTERP:
            if p_filesz < 2 or p_filesz > _PATH_MAX:
                raise OSError(errno.ENOEXEC, "a bad PT_INTERP")
            return _cstring(read(p_offset, p_filesz))
    return None
