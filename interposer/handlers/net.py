"""Sockets: AF_UNIX paths are host paths; [host] network rules."""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Callable

from attrs import frozen

from synthfs.interposer.actions import CONTINUE, Fail, Result, Return, RunChecked, Scratch
from synthfs.interposer.handlers.locate import (
    NR_BIND,
    NR_CONNECT,
    Loc,
    Refused,
    guarded,
    host_check,
    s32,
    whose,
)
from synthfs.interposer.numbers import NR
from synthfs.interposer.ports import Call, Env
from synthfs.policy.engine import NetworkMode

AF_UNSPEC = 0
AF_UNIX = 1
AF_INET = 2
AF_INET6 = 10
AF_NETLINK = 16
NR_SENDTO = NR["sendto"]
NR_SENDMSG = NR["sendmsg"]
_LOCAL_FAMILIES = (AF_UNIX, AF_NETLINK)  # never leave the machine
_SOCKADDR_MAX = 128  # sizeof(struct sockaddr_storage)
_SUN_PATH = 108  # sizeof(sockaddr_un.sun_path)
_MSGHDR = 56  # sizeof(struct msghdr)
_V4_MAPPED = bytes(10) + b"\xff\xff"


@frozen
class SockAddr:
    """A sockaddr copied out of the guest once: its bytes, family and what it names."""

    raw: bytes
    family: int
    #: AF_UNIX: the path (None: abstract or unnamed); IP: "addr:port"
    text: str | None
    #: IP: the address stays on this machine (loopback)
    local: bool = False


def read_sockaddr(call: Call, addr: int, size: int) -> SockAddr | None:
    """The sockaddr at ``addr`` (None: no address). OSError EFAULT on a bad pointer."""
    if addr == 0 or size == 0:
        return None
    if size > _SOCKADDR_MAX:
        raise OSError(errno.EINVAL, "address too long")  # as the kernel says
    raw = call.guest.read(addr, size)
    if len(raw) < 2:
        return SockAddr(raw, -1, None)
    family = int.from_bytes(raw[:2], "little")
    if family == AF_UNIX:
        if len(raw) < 3 or raw[2] == 0:
            return SockAddr(raw, family, None)
        return SockAddr(raw, family, os.fsdecode(raw[2:].split(b"\0", 1)[0]))
    if family == AF_INET and len(raw) >= 8:
        port = int.from_bytes(raw[2:4], "big")
        ip = raw[4:8]
        return SockAddr(raw, family, f"{'.'.join(map(str, ip))}:{port}", ip[0] == 127)
    if family == AF_INET6 and len(raw) >= 24:
        import ipaddress

        port = int.from_bytes(raw[2:4], "big")
        ip6 = raw[8:24]
        local = ip6 == bytes(15) + b"\x01" or (ip6[:12] == _V4_MAPPED and ip6[12] == 127)
        return SockAddr(raw, family, f"[{ipaddress.IPv6Address(ip6)}]:{port}", local)
    return SockAddr(raw, family, None)


def net_check(call: Call, env: Env, op: str, sa: SockAddr) -> int:
    """0 when ``network`` lets ``op`` reach ``sa`` (an IP or other non-local family), else errno."""
    if sa.family in (AF_UNSPEC, *_LOCAL_FAMILIES):
        return 0
    what = sa.text or f"family {sa.family}"
    return env.check_net(call, op, what, sa.local)


def _unix_target(call: Call, env: Env, op: str, path: str) -> str:
    """The real host path of an AF_UNIX socket path, checked (raises OSError)."""
    base = call.proc.fs.cwd or call.guest.host_cwd()
    target = env.ns.resolve(
        path, base, follow=True, lstat=env.repo.lstat, readlink=env.repo.readlink
    )
    if target.synthetic:
        raise OSError(errno.ECONNREFUSED if op == "connect" else errno.EACCES, "on /data")
    real = env.host.realpath(target.path, True, whose(call))
    if env.host.refused(real):
        raise Refused(errno.EACCES, "refused path")
    loc = Loc(guest=real, real=real, via=target.via)
    host_check(call, env, "create" if op == "bind" else "write", loc)
    return real


def _unix_sockaddr(path: str) -> bytes:
    raw = os.fsencode(path)
    if len(raw) > _SUN_PATH - 1:
        raise OSError(errno.ENAMETOOLONG, "a socket path longer than sun_path holds")
    return AF_UNIX.to_bytes(2, "little") + raw + b"\0"


def _pinned_socket(env: Env, real: str) -> tuple[bytes, int | None]:
    """The sockaddr of a checked socket path, pinned on the socket itself
    (``/proc/SUPERVISOR/fd/N``: a swapped-in symlink cannot lead the kernel to the
    agent's socket), and the pin to drop after the call (None: not pinned)."""
    pinned = env.pin(real, True)
    if pinned is None:
        return _unix_sockaddr(real), None
    return _unix_sockaddr(pinned[0]), pinned[1]


def _unix_reach(
    env: Env, nr: int, real: str, args: Callable[[Scratch, int], tuple[int | Scratch, ...]]
) -> Result:
    """connect/sendto to a checked socket path: the kernel gets the pinned socket."""
    sockaddr, pin = _pinned_socket(env, real)
    if pin is None:
        return RunChecked(nr, args(Scratch(sockaddr), len(sockaddr)))

    return RunChecked(nr, args(Scratch(sockaddr), len(sockaddr)), None, lambda: env.unpin(pin))


def _sock_call(call: Call, env: Env, nr: int) -> Result:
    """connect and bind: (fd, sockaddr, addrlen)."""
    a = call.args
    op = "connect" if nr == NR_CONNECT else "bind"
    sa = read_sockaddr(call, a[1], a[2] & 0xFFFFFFFF)
    if sa is None:
        return CONTINUE
    if sa.family == AF_UNIX:
        if sa.text is None:
            return CONTINUE  # abstract or unnamed: no path
        real = _unix_target(call, env, op, sa.text)
        if nr == NR_CONNECT:
            return _unix_reach(env, nr, real, lambda sock, size: (a[0], sock, size))
        return _unix_bind(call, env, real, sa)
    if env.network is NetworkMode.ALLOW:
        return CONTINUE
    err = net_check(call, env, op, sa)
    if err:
        return Fail(err)
    return RunChecked(nr, (a[0], Scratch(sa.raw), len(sa.raw)))


def _unix_bind(call: Call, env: Env, real: str, sa: SockAddr) -> Result:
    """bind to a checked socket path: under ``[host]`` rules, in the pinned parent.

    The kernel keeps the path text it was given as the socket's name; the
    pinned ``/proc/SUPERVISOR/fd/N/name`` would show in getsockname, so the
    supervisor remembers the name the guest gave (by socket inode) and
    getsockname answers with it. A pinned path longer than sun_path allows is
    refused (ENAMETOOLONG) rather than walked unpinned. Without ``[host]`` rules
    getsockname is not trapped (syscalls.Need.HOST), so the kernel walks the
    checked copy of the name the guest gave, relative to its cwd as natively (its
    name in getsockname; a short relative name in a deep directory fits sun_path
    where the whole path would not), unless that cwd is on /data (the kernel's is
    another directory then: the checked path): bind creates a name, never follows
    or replaces one, so a race can at worst add a socket file beside a trusted one
    (docs/policy.md).
    """
    pinned = env.pin(real, False) if env.host_rules else None
    if pinned is None:
        sockaddr = _unix_sockaddr(real if call.proc.fs.cwd is not None else sa.text or real)
        return RunChecked(NR_BIND, (call.args[0], Scratch(sockaddr), len(sockaddr)))
    path, pin = pinned
    if len(os.fsencode(path)) > _SUN_PATH - 1:
        env.unpin(pin)
        return Fail(errno.ENAMETOOLONG)
    sockaddr = _unix_sockaddr(path)
    text = os.fsencode(sa.text or "")
    name = sa.raw[:2] + text + b"\0"  # what the kernel stores: family, path, NUL
    holder = f"/proc/{call.guest.tgid}/fd/{s32(call.args[0])}"

    def done(ret: int) -> None:
        if ret == 0:
            with contextlib.suppress(OSError):
                env.bound_names[os.stat(holder).st_ino] = name

    return RunChecked(NR_BIND, (call.args[0], Scratch(sockaddr), len(sockaddr)), done,
                      lambda: env.unpin(pin))


@guarded
def sys_getsockname(call: Call, env: Env) -> Result:
    """getsockname of a socket bound in a pinned directory: the name the guest gave."""
    if not env.bound_names:
        return CONTINUE
    fd, addr, lenp = s32(call.args[0]), call.args[1], call.args[2]
    try:
        name = env.bound_names.get(os.stat(f"/proc/{call.guest.tgid}/fd/{fd}").st_ino)
    except OSError:
        return CONTINUE  # EBADF and the like: the kernel's answer
    if name is None:
        return CONTINUE
    room = int.from_bytes(call.guest.read(lenp, 4), "little")
    if room > 0x7FFFFFFF:
        return Fail(errno.EINVAL)
    return Return(0, ((addr, name[:room]), (lenp, len(name).to_bytes(4, "little"))))


@guarded
def sys_connect(call: Call, env: Env) -> Result:
    return _sock_call(call, env, NR_CONNECT)


@guarded
def sys_bind(call: Call, env: Env) -> Result:
    return _sock_call(call, env, NR_BIND)


@guarded
def sys_socket(call: Call, env: Env) -> Result:
    """socket(domain, ...): under "deny" no IP socket; no family that leaves the machine
    other than IP under "loopback" (connect/bind/send then check each address)."""
    domain = call.args[0] & 0xFFFFFFFF
    if domain in _LOCAL_FAMILIES or env.network is NetworkMode.ALLOW:
        return CONTINUE
    local = domain in (AF_INET, AF_INET6)  # creating one sends nothing; its uses are checked
    name = {AF_INET: "AF_INET", AF_INET6: "AF_INET6"}.get(domain, f"family {domain}")
    err = env.check_net(call, "socket", name, local)
    return Fail(err) if err else CONTINUE


@guarded
def sys_sendto(call: Call, env: Env) -> Result:
    """sendto(fd, buf, len, flags, dest, addrlen): the destination is checked and copied."""
    a = call.args
    sa = read_sockaddr(call, a[4], a[5] & 0xFFFFFFFF)
    if sa is None:
        return CONTINUE
    if sa.family == AF_UNIX:
        if sa.text is None:
            return CONTINUE
        real = _unix_target(call, env, "send", sa.text)
        return _unix_reach(env, NR_SENDTO, real, lambda sock, size: (*a[:4], sock, size))
    if env.network is NetworkMode.ALLOW:
        return CONTINUE
    err = net_check(call, env, "send", sa)
    if err:
        return Fail(err)
    return RunChecked(NR_SENDTO, (*a[:4], Scratch(sa.raw), len(sa.raw)))


def _checked_msghdr(call: Call, env: Env, msghdr: bytes) -> tuple[Scratch, int | None]:
    """A copy of one ``struct msghdr`` whose destination was checked, and the pin to drop.

    The copy, and the copy of ``msg_name`` it points to, go to the scratch page:
    a guest thread that rewrites the address (or sets one where there was none)
    after the check changes nothing the kernel reads. An AF_UNIX path is the
    pinned socket, as for sendto. Raises OSError with the errno of a denial.
    """
    name = int.from_bytes(msghdr[0:8], "little")
    namelen = int.from_bytes(msghdr[8:12], "little")
    sa = read_sockaddr(call, name, namelen)
    raw, pin = b"", None
    if sa is not None and sa.family == AF_UNIX and sa.text is not None:
        raw, pin = _pinned_socket(env, _unix_target(call, env, "send", sa.text))
    elif sa is not None:
        err = 0 if env.network is NetworkMode.ALLOW else net_check(call, env, "send", sa)
        if err:
            raise OSError(err, "denied by the network policy")
        raw = sa.raw
    header = bytes(8) + len(raw).to_bytes(4, "little") + msghdr[12:_MSGHDR]
    return Scratch(header, ((0, Scratch(raw)),) if raw else ()), pin


def _send_checked(
    env: Env,
    call: Call,
    msghdr: bytes,
    flags: int,
    after: Callable[[int], Return | None] | None = None,
) -> Result:
    """sendmsg(fd, checked copy of ``msghdr``, flags); ``after`` sees the result."""
    copy, pin = _checked_msghdr(call, env, msghdr)

    def unpin() -> None:
        if pin is not None:
            env.unpin(pin)

    return RunChecked(NR_SENDMSG, (call.args[0], copy, flags), after, unpin)


@guarded
def sys_sendmsg(call: Call, env: Env) -> Result:
    """sendmsg(fd, msghdr, flags): the kernel reads a checked copy of the header."""
    return _send_checked(env, call, call.guest.read(call.args[1], _MSGHDR), call.args[2])


@guarded
def sys_sendmmsg(call: Call, env: Env) -> Result:
    """sendmmsg(fd, mmsghdr[], vlen, flags): the first message, as a checked sendmsg.

    The kernel stores each message's ``msg_len`` back into the table, which a
    read-only copy cannot take; so one message is sent per call (sendmmsg may
    send fewer than ``vlen``: callers send the rest again) and its ``msg_len``
    is stored in the guest's table at the exit.
    """
    table = call.args[1]
    if call.args[2] & 0xFFFFFFFF == 0:
        return CONTINUE

    def one(ret: int) -> Return | None:
        if ret < 0:
            return None
        return Return(1, ((table + _MSGHDR, ret.to_bytes(4, "little")),))

    return _send_checked(env, call, call.guest.read(table, _MSGHDR), call.args[3], one)
