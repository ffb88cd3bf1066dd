"""Line numbers for the keys of a TOML document that ``tomllib`` accepted.

``tomllib`` returns plain dicts without positions, but a policy error must
name its line. :func:`key_lines` re-scans the text (already known to be
valid TOML) and maps every key path to the line where it is written:

* ``("app", 2, "allow", 1)`` is the 2nd inline table of ``allow`` in the
  3rd ``[[app]]`` (indices count from 0, as in the parsed document);
* ``("app", 2)`` is the ``[[app]]`` header line; dotted keys
  (``match.exe = ...``) record every prefix (``("app", 2, "match")``).

Pure and total: on anything it does not understand it stops and returns what
it found so far (:func:`line_of` then falls back to the nearest ancestor).
Trusts nothing; reads only the string it is given.
"""

from __future__ import annotations

import bisect
import contextlib
import tomllib

__all__ = ["KeyPath", "key_lines", "line_of"]

KeyPath = tuple[str | int, ...]

_BARE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


class _Stop(Exception):
    """The scanner met something it does not understand."""


class _Scanner:
    def __init__(self, text: str) -> None:
        self.text = text
        self.n = len(text)
        self.newlines = [i for i, c in enumerate(text) if c == "\n"]
        self.lines: dict[KeyPath, int] = {}
        self.aot: dict[KeyPath, int] = {}

    # -- helpers ---------------------------------------------------------------
    def line(self, i: int) -> int:
        return bisect.bisect_left(self.newlines, i) + 1

    def record(self, path: KeyPath, i: int) -> None:
        self.lines.setdefault(path, self.line(i))

    def ch(self, i: int) -> str:
        return self.text[i] if i < self.n else ""

    def skip_ws(self, i: int) -> int:
        while i < self.n and self.text[i] in " \t":
            i += 1
        return i

    def skip_blank(self, i: int) -> int:
        """Skip whitespace, newlines and comments."""
        while i < self.n:
            c = self.text[i]
            if c in " \t\r\n":
                i += 1
            elif c == "#":
                j = self.text.find("\n", i)
                i = self.n if j < 0 else j + 1
            else:
                break
        return i

    # -- strings and keys ------------------------------------------------------
    def skip_string(self, i: int) -> int:
        t = self.text
        if t.startswith('"""', i) or t.startswith("'''", i):
            q = t[i : i + 3]
            j = i + 3
            while j < self.n:
                if q == '"""' and t[j] == "\\":
                    j += 2
                    continue
                if t.startswith(q, j):
                    j += 3
                    while j < self.n and t[j] == q[0]:  # up to two extra quotes
                        j += 1
                    return j
                j += 1
            raise _Stop
        q = t[i]
        j = i + 1
        while j < self.n:
            if q == '"' and t[j] == "\\":
                j += 2
                continue
            if t[j] == q:
                return j + 1
            if t[j] == "\n":
                raise _Stop
            j += 1
        raise _Stop

    def parse_key(self, i: int) -> tuple[list[str], int]:
        keys: list[str] = []
        while True:
            i = self.skip_ws(i)
            c = self.ch(i)
            if c in ('"', "'"):
                j = self.skip_string(i)
                keys.append(str(tomllib.loads("k = " + self.text[i:j])["k"]))
                i = j
            else:
                j = i
                while j < self.n and self.text[j] in _BARE:
                    j += 1
                if j == i:
                    raise _Stop
                keys.append(self.text[i:j])
                i = j
            i = self.skip_ws(i)
            if self.ch(i) == ".":
                i += 1
                continue
            return keys, i

    # -- values ------------------------------------------------------------------
    def skip_value(self, i: int, path: KeyPath, depth: int = 0) -> int:
        if depth > 200:
            raise _Stop
        c = self.ch(i)
        if c in ('"', "'"):
            return self.skip_string(i)
        if c == "[":
            i += 1
            idx = 0
            while True:
                i = self.skip_blank(i)
                if self.ch(i) == "]":
                    return i + 1
                if i >= self.n:
                    raise _Stop
                self.record((*path, idx), i)
                i = self.skip_value(i, (*path, idx), depth + 1)
                i = self.skip_blank(i)
                if self.ch(i) == ",":
                    i += 1
                    idx += 1
                elif self.ch(i) != "]":
                    raise _Stop
        if c == "{":
            i += 1
            while True:
                i = self.skip_blank(i)
                if self.ch(i) == "}":
                    return i + 1
                if i >= self.n:
                    raise _Stop
                start = i
                keys, i = self.parse_key(i)
                self.record_keys(path, keys, start)
                if self.ch(i) != "=":
                    raise _Stop
                i = self.skip_blank(i + 1)
                i = self.skip_value(i, (*path, *keys), depth + 1)
                i = self.skip_blank(i)
                if self.ch(i) == ",":
                    i += 1
                elif self.ch(i) != "}":
                    raise _Stop
        j = i
        while j < self.n and self.text[j] not in ",]}\n#":
            j += 1
        if j == i:
            raise _Stop
        return j

    def record_keys(self, base: KeyPath, keys: list[str], i: int) -> None:
        for k in range(1, len(keys) + 1):
            self.record((*base, *keys[:k]), i)

    # -- document ------------------------------------------------------------------
    def header(self, keys: list[str], array: bool) -> KeyPath:
        resolved: list[str | int] = []
        for j, k in enumerate(keys):
            resolved.append(k)
            t = tuple(resolved)
            last = j == len(keys) - 1
            if t in self.aot and not (array and last):
                resolved.append(self.aot[t] - 1)
        if array:
            t = tuple(resolved)
            self.aot[t] = self.aot.get(t, 0) + 1
            resolved.append(self.aot[t] - 1)
        return tuple(resolved)

    def scan(self) -> None:
        current: KeyPath = ()
        i = 0
        while True:
            i = self.skip_blank(i)
            if i >= self.n:
                return
            start = i
            if self.text.startswith("[[", i):
                keys, i = self.parse_key(i + 2)
                if not self.text.startswith("]]", i):
                    raise _Stop
                i += 2
                current = self.header(keys, array=True)
                for k in range(1, len(current) + 1):
                    self.record(current[:k], start)
            elif self.ch(i) == "[":
                keys, i = self.parse_key(i + 1)
                if self.ch(i) != "]":
                    raise _Stop
                i += 1
                current = self.header(keys, array=False)
                for k in range(1, len(current) + 1):
                    self.record(current[:k], start)
            else:
                keys, i = self.parse_key(i)
                self.record_keys(current, keys, start)
                if self.ch(i) != "=":
                    raise _Stop
                i = self.skip_ws(i + 1)
                i = self.skip_value(i, (*current, *keys))


def key_lines(text: str) -> dict[KeyPath, int]:
    """Map key paths of a valid TOML ``text`` to 1-based line numbers (best effort)."""
    scanner = _Scanner(text)
    with contextlib.suppress(_Stop, ValueError, IndexError, RecursionError):
        scanner.scan()
    return scanner.lines


def line_of(lines: dict[KeyPath, int], path: KeyPath) -> int | None:
    """The line of ``path``, or of its nearest ancestor that has one."""
    p = tuple(path)
    while p:
        if p in lines:
            return lines[p]
        p = p[:-1]
    return None
