"""``interposer.binfmt``: the kernel's ``#!`` parsing, pure (fs/binfmt_script.c)."""

from __future__ import annotations

import errno

import pytest

from synthfs.interposer import binfmt

LINES = [
    # (first bytes of the file, (interpreter, argument) or None: not a script)
    (b"\x7fELF\x02\x01", None),
    (b"", None),
    (b"#", None),
    (b"#!/bin/sh\necho hi\n", (b"/bin/sh", None)),
    (b"#!/bin/sh", (b"/bin/sh", None)),  # no newline: the NUL padding ends the name
    (b"#! /usr/bin/env python3\n", (b"/usr/bin/env", b"python3")),
    (b"#!\t/bin/sh -e  \t\n", (b"/bin/sh", b"-e")),  # trailing blanks trimmed
    (b"#!/bin/sh -e -u x\n", (b"/bin/sh", b"-e -u x")),  # one argument, inner blanks kept
    (b"#!/bin/sh  \t -x\n", (b"/bin/sh", b"-x")),
    (b"#!rel/interp\n", (b"rel/interp", None)),
    (b"#!/bin/sh\0junk -x\n", (b"/bin/sh", None)),  # a NUL ends the name: no argument
    (b"#!/bin/sh -a\0b\n", (b"/bin/sh", b"-a")),
    (b"#!/bin/sh\r\n", (b"/bin/sh\r", None)),  # CR is part of the name, as natively
    # no newline in the buffer: the name must end before it, the argument may be cut
    (b"#!/bin/sh " + b"a" * 300, (b"/bin/sh", b"a" * 245)),
]


@pytest.mark.parametrize(("head", "expected"), LINES)
def test_parse_as_the_kernel(head: bytes, expected: object) -> None:
    assert binfmt.parse(head) == expected


@pytest.mark.parametrize(
    "head",
    [b"#!\n", b"#!   \t\nx", b"#!" + b" " * 300, b"#!/" + b"x" * 300, b"#!" + b" " * 254 + b"/x"],
)
def test_refused_lines_are_enoexec(head: bytes) -> None:
    with pytest.raises(OSError) as exc:
        binfmt.parse(head)
    assert exc.value.errno == errno.ENOEXEC


def test_rewrite_drops_argv0_for_the_script_name() -> None:
    argv = [b"caller-name", b"a", b"b c"]
    assert binfmt.rewrite_argv(argv, b"./s.sh", b"/bin/sh", None) == [
        b"/bin/sh",
        b"./s.sh",
        b"a",
        b"b c",
    ]
    assert binfmt.rewrite_argv([], b"/data/t", b"/usr/bin/env", b"python3") == [
        b"/usr/bin/env",
        b"python3",
        b"/data/t",
    ]


def test_the_exec_budget_is_the_scratch_slot() -> None:
    from synthfs.interposer import handlers, supervisor

    assert handlers.EXEC_SCRATCH == supervisor.SLOT_SIZE


def _elf64(interp: bytes | None, filesz: int | None = None) -> bytes:
    """A minimal little-endian ELF64 header and one program header at 64."""
    import struct

    head = b"\x7fELF\x02\x01" + bytes(26) + struct.pack("<Q", 64) + bytes(14)
    head += struct.pack("<HH", 56, 1) + bytes(6)
    body = interp + b"\0" if interp is not None else b""
    p_type = 3 if interp is not None else 1
    size = len(body) if filesz is None else filesz
    phdr = struct.pack("<II", p_type, 0) + struct.pack("<QQQQQQ", 120, 0, 0, size, size, 1)
    return head + phdr + body


def _reader(data: bytes):
    return lambda at, n: data[at : at + n]


def test_elf_interp_reads_pt_interp() -> None:
    assert binfmt.elf_interp(_reader(_elf64(b"/lib/ld.so"))) == b"/lib/ld.so"
    assert binfmt.elf_interp(_reader(_elf64(None))) is None  # static: no PT_INTERP
    assert binfmt.elf_interp(_reader(b"#!/bin/sh\n")) is None  # not an ELF
    assert binfmt.elf_interp(_reader(_elf64(b"/lib/ld.so")[:40])) is None  # cut short
    with pytest.raises(OSError) as e:  # the kernel's bounds: ENOEXEC
        binfmt.elf_interp(_reader(_elf64(b"/x", filesz=1 << 20)))
    assert e.value.errno == errno.ENOEXEC


def test_elf_interp_of_a_real_program() -> None:
    with open("/bin/true", "rb") as f:
        data = f.read()
    assert binfmt.elf_interp(_reader(data)) == b"/lib64/ld-linux-x86-64.so.2"  # readelf -l
