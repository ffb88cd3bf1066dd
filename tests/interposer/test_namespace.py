"""The namespace resolver, without ptrace: a dict stands for the repository."""

from __future__ import annotations

import errno

import pytest

from synthfs.interposer.namespace import Final, Namespace, Where, last_name
from synthfs.policy.engine import Symlinks
from synthfs.protocol.messages import Attrs, FileKind


def _a(kind: str, ino: int = 1) -> Attrs:
    return Attrs(kind=kind, size=0, mode=0o755, mtime_ns=0, ctime_ns=0, ino=ino)


TREE = {
    "/": _a("dir"),
    "/d": _a("dir"),
    "/d/f": _a("file"),
    "/d/e": _a("dir"),
    "/rel": _a("symlink"),  # -> d/e
    "/abs": _a("symlink"),  # -> /etc/passwd (the host file; anchored: /data/etc/passwd)
    "/up": _a("symlink"),  # -> ../../../d  (the host /d; anchored: /data/d)
    "/loop": _a("symlink"),  # -> loop
    "/f": _a("file"),
    "/abs2": _a("symlink"),  # -> /d/f
    "/d/e/back": _a("symlink"),  # -> /data/d/f (absolute, back into the mount)
    "/d/e/out": _a("symlink"),  # -> ../../../etc/x (climbs out of the mount)
    "/d/e/home": _a("symlink"),  # -> ../../../data/d (out to '/' and back in)
    "/d/e/root": _a("symlink"),  # -> ../../..  (the mount's parent: the host's '/')
    "/hop": _a("symlink"),  # -> /data/abs (an in-mount link to a host-bound one)
}
LINKS = {
    "/abs2": "/d/f",
    "/rel": "d/e",
    "/abs": "/etc/passwd",
    "/up": "../../../d",
    "/loop": "loop",
    "/d/e/back": "/data/d/f",
    "/d/e/out": "../../../etc/x",
    "/d/e/home": "../../../data/d",
    "/d/e/root": "../../..",
    "/hop": "/data/abs",
}


def resolve(
    path: str,
    base: str = "/",
    follow: bool = True,
    final: Final = Final.LOOKUP,
    symlinks: Symlinks = Symlinks.FOLLOW,
):
    return Namespace("/data", symlinks).resolve(
        path, base, follow=follow, lstat=TREE.get, readlink=LINKS.__getitem__, final=final
    )


def test_host_paths_stay_on_the_host() -> None:
    t = resolve("/usr/lib/../bin/x")
    assert t.where is Where.HOST and t.path == "/usr/bin/x"
    assert resolve("/database").where is Where.HOST  # a prefix that is not the mount


def test_synthetic_paths_and_relative_bases() -> None:
    t = resolve("/data/d/f")
    assert t.where is Where.SYNTH and t.path == "/d/f" and t.attrs == TREE["/d/f"]
    assert resolve("f", base="/data/d").path == "/d/f"
    assert resolve("data/d", base="/").path == "/d"
    assert resolve(".", base="/data/d").attrs == TREE["/d"]


def test_dotdot_at_the_mount_root_leaves_to_the_real_parent() -> None:
    t = resolve("/data/..")
    assert t.where is Where.HOST and t.path == "/"
    assert resolve("../etc", base="/data").path == "/etc"


def test_anchored_symlinks_resolve_inside_the_namespace() -> None:
    def anchored(path: str, follow: bool = True):
        return resolve(path, follow=follow, symlinks=Symlinks.ANCHORED)

    assert anchored("/data/rel").path == "/d/e"
    # An absolute target is anchored at the mount root: /etc/passwd names
    # /data/etc/passwd, which does not exist; it never names the host's file.
    with pytest.raises(FileNotFoundError):
        anchored("/data/abs")
    t = anchored("/data/abs2")
    assert t.where is Where.SYNTH and t.path == "/d/f"
    assert anchored("/data/up").path == "/d"
    assert anchored("/data/rel", follow=False).path == "/rel"
    with pytest.raises(FileNotFoundError):
        anchored("/data/d/e/out")  # /data/etc/x: clamped at the root


def test_followed_symlinks_resolve_as_the_kernel() -> None:
    # The default: a target on the host is a host path, the link that led there noted.
    t = resolve("/data/abs")
    assert (t.where, t.path, t.via) == (Where.HOST, "/etc/passwd", "/data/abs")
    t = resolve("/data/d/e/out")
    assert (t.where, t.path, t.via) == (Where.HOST, "/etc/x", "/data/d/e/out")
    assert resolve("/data/up").path == "/d"  # ../../../d from /data: the host's /d
    assert resolve("/data/up").where is Where.HOST
    assert resolve("/data/d/e/root").path == "/"
    assert resolve("/data/hop").via == "/data/abs"  # the link that left the mount
    # A target back inside the mount stays synthetic.
    for path in ("/data/d/e/back", "/data/d/e/home/f"):
        t = resolve(path)
        assert (t.where, t.path, t.via) == (Where.SYNTH, "/d/f", ""), path
    assert resolve("/data/d/e/home").path == "/d"
    assert resolve("/data/rel").path == "/d/e"


def test_refuse_host_fails_a_link_that_leaves_the_mount() -> None:
    def refusing(path: str, follow: bool = True):
        return resolve(path, follow=follow, symlinks=Symlinks.REFUSE_HOST)

    for path in ("/data/abs", "/data/d/e/out", "/data/up", "/data/d/e/root", "/data/hop",
                 "/data/d/e/root/data/d"):  # fmt: skip
        with pytest.raises(PermissionError):
            refusing(path)
    # Through the mount's parents back in, or not followed, or the guest's own '..': fine.
    assert refusing("/data/d/e/back").path == "/d/f"
    assert refusing("/data/d/e/home/f").path == "/d/f"
    assert refusing("/data/abs", follow=False).path == "/abs"
    t = refusing("/data/rel/../../../etc")
    assert (t.where, t.path) == (Where.HOST, "/etc")


def test_symlink_then_dotdot_is_physical() -> None:
    # /data/rel -> d/e, so /data/rel/.. is /data/d, not /data.
    assert resolve("/data/rel/..").path == "/d"


def test_kernel_errnos() -> None:
    for path, err in [
        ("/data/loop", errno.ELOOP),
        ("/data/f/x", errno.ENOTDIR),
        ("/data/nope/x", errno.ENOENT),
        ("/data/f/", errno.ENOTDIR),
        ("", errno.ENOENT),
        ("/data/" + "x" * 256, errno.ENAMETOOLONG),
    ]:
        with pytest.raises(OSError) as info:
            resolve(path)
        assert info.value.errno == err, path


def test_missing_final_component_is_not_an_error() -> None:
    t = resolve("/data/d/new")
    assert t.where is Where.SYNTH and t.attrs is None


def test_entry_names_the_entry_itself_whatever_the_slash() -> None:
    # mkdir, unlink, rename...: a trailing slash neither follows a final symlink
    # nor fails on a file; the handler decides (EEXIST, ENOTDIR...).
    f = resolve("/data/f/", final=Final.ENTRY)
    assert (f.path, f.attrs, f.must_be_dir) == ("/f", TREE["/f"], True)
    link = resolve("/data/abs2/", follow=False, final=Final.ENTRY)
    assert (link.path, link.attrs) == ("/abs2", TREE["/abs2"])
    with pytest.raises(NotADirectoryError):
        resolve("/data/abs2/", symlinks=Symlinks.ANCHORED)
    # A long final name is left for the handler (ENAMETOOLONG once it is looked up),
    # and is never asked of the repository.
    asked: list[str] = []

    def lstat(path: str) -> Attrs | None:
        asked.append(path)
        return TREE.get(path)

    long = Namespace("/data").resolve(
        "/data/d/" + "x" * 256, "/", follow=False, lstat=lstat, readlink=LINKS.__getitem__,
        final=Final.ENTRY,
    )
    assert long.attrs is None and asked == ["/", "/d"]
    with pytest.raises(OSError) as info:  # not the final component: the walk fails
        resolve("/data/" + "x" * 256 + "/y", final=Final.ENTRY)
    assert info.value.errno == errno.ENAMETOOLONG


def test_last_name_keeps_dot_and_dotdot() -> None:
    assert [last_name(p) for p in ("/data/d/.", "e/../", "a//b//", "/", "x")] == [
        ".", "..", "b", "", "x"
    ]


def test_bad_mount_points_are_refused() -> None:
    for bad in ("data", "/", "/a/../b"):
        with pytest.raises(ValueError):
            Namespace(bad)
    assert Namespace("/mnt/repo/").guest_path("/x") == "/mnt/repo/x"
    assert FileKind.DIR.value == "dir"


BENEATH, IN_ROOT, NO_SYMLINKS, NO_XDEV = 0x08, 0x10, 0x04, 0x01


def confined(path: str, base: str, confine: int, follow: bool = True):
    return Namespace("/data").resolve(
        path, base, follow=follow, lstat=TREE.get, readlink=LINKS.__getitem__, confine=confine
    )


@pytest.mark.parametrize(
    ("path", "base", "confine", "err"),
    [
        ("../f", "/data/d", BENEATH, errno.EXDEV),  # '..' above the dirfd
        ("e/../../f", "/data/d", BENEATH, errno.EXDEV),
        ("/data/f", "/data/d", BENEATH, errno.EXDEV),  # absolute
        ("abs2", "/data", BENEATH, errno.EXDEV),  # absolute repository symlink
        ("up", "/data", BENEATH, errno.EXDEV),  # a relative one climbing out of the dirfd
        ("rel/x", "/data", NO_SYMLINKS, errno.ELOOP),
        ("abs2", "/data", NO_SYMLINKS, errno.ELOOP),
        ("data/d", "/", NO_XDEV, errno.EXDEV),  # into the mount
        ("/data/d", "/data/d", NO_XDEV, errno.EXDEV),  # absolute: from '/', into the mount
        ("../../tmp", "/data/d", NO_XDEV, errno.EXDEV),  # out of it
    ],
)
def test_confinement_flags_refuse_as_the_kernel(path: str, base: str, confine: int, err: int):
    with pytest.raises(OSError) as info:
        confined(path, base, confine)
    assert info.value.errno == err


def test_confinement_flags_allow_what_stays_inside() -> None:
    assert confined("e/../f", "/data/d", BENEATH).path == "/d/f"
    assert confined("f", "/data/d", NO_SYMLINKS | NO_XDEV | BENEATH).path == "/d/f"
    assert confined("abs2", "/data", NO_SYMLINKS, follow=False).path == "/abs2"
    # IN_ROOT: '..' of the root is the root, absolute paths and symlinks start there
    assert confined("../../f", "/data/d", IN_ROOT).path == "/d/f"
    assert confined("/f", "/data/d", IN_ROOT).path == "/d/f"
    assert confined("/e", "/data/d", IN_ROOT).attrs == TREE["/d/e"]


def test_plain_paths_resolve_as_the_full_walk() -> None:
    """The shortcut for plain paths below the mount gives what the full walk gives, the
    same errno, and the same lookups (a symlink on the way hands over to the full walk)."""
    names = ["d", "f", "e", "rel", "abs", "up", "loop", "abs2", "back", "out", "home",
             "root", "hop", "nope", "x" * 256]  # fmt: skip
    paths = ["/data/" + a for a in names]
    paths += [f"/data/{a}/{b}" for a in names for b in names]
    paths += [f"/data/{a}/{b}/{c}" for a in ("d", "rel", "abs2") for b in names for c in names]

    def outcome(walk, path: str, follow: bool, symlinks: Symlinks):
        asked: list[str] = []

        def lstat(p: str) -> Attrs | None:
            asked.append(p)
            return TREE.get(p)

        ns = Namespace("/data", symlinks)
        try:
            got = walk(ns)(path, "/", follow=follow, lstat=lstat, readlink=LINKS.__getitem__)
        except OSError as exc:
            got = exc.errno
        return got, sorted(set(asked))

    def full(ns: Namespace):
        return lambda path, base, **kw: ns._walk(
            path, base, kw["follow"], kw["lstat"], kw["readlink"], None, Final.LOOKUP, 0
        )

    shortcuts = 0
    for symlinks in Symlinks:
        for follow in (True, False):
            for path in paths:
                fast = outcome(lambda ns: ns.resolve, path, follow, symlinks)
                slow = outcome(full, path, follow, symlinks)
                assert fast[0] == slow[0], (path, follow, symlinks)
                assert set(fast[1]) >= set(slow[1]), (path, follow, symlinks)
                try:
                    took = Namespace("/data", symlinks)._resolve_plain(path, follow, TREE.get)
                except OSError:
                    took = True
                shortcuts += took is not None
    assert shortcuts > 100  # the shortcut did answer (not every case handed over)
