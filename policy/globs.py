"""Globs of the policy language, compiled once to regular expressions.

Pure helpers for :mod:`synthfs.policy.engine`. Two kinds of glob:

* **path globs** (rule paths, ``match.exe``, ``[host]`` lists, mount paths):
  absolute, ``/``-separated, normalised (no empty, ``.`` or ``..``
  component, no trailing ``/``). ``*`` matches any run of characters inside
  one component (possibly empty, dot-files included), ``?`` exactly one
  character inside a component, and a component that is exactly ``**``
  matches any number of components, zero included (so ``/data/**`` matches
  ``/data`` itself). Every other character, ``[`` and ``\\`` included, is
  literal: there are no character classes and no escapes.
* **argv globs** (``match.argv``): ``*`` matches any run of characters,
  ``/`` included, ``?`` one character; everything else literal.

Specificity of a path glob (the most specific rule wins, see
``docs/policy.md``) is the tuple ``(literal characters, -(number of **),
-(number of * and ?))``, compared lexicographically: more literal characters
first, then fewer ``**``, then fewer single wildcards. Separators do not
count as literal characters.

Trusts nothing: every string comes from a policy file; errors are
:class:`GlobError` (a ``ValueError``) with a message meant for a human.
"""

from __future__ import annotations

import re

import attrs

__all__ = ["ArgvGlob", "GlobError", "PathGlob", "literal_prefix", "paths_related"]

_WILDCARDS = frozenset("*?")


class GlobError(ValueError):
    """A glob that cannot be compiled; the message says why and how to fix it."""


@attrs.frozen(slots=True)
class PathGlob:
    """A compiled path glob. ``text`` is the glob after variable expansion."""

    text: str
    regex: str  # without anchors, non-capturing groups only
    specificity: tuple[int, int, int]
    components: tuple[str, ...]

    @classmethod
    def compile(cls, text: str) -> PathGlob:
        if not isinstance(text, str) or not text:
            raise GlobError("empty glob")
        if "\x00" in text:
            raise GlobError("NUL character in glob")
        if not text.startswith("/"):
            raise GlobError(f"glob {text!r} is not absolute (start it with '/' or a variable)")
        if text == "/":
            return cls(text="/", regex="/", specificity=(0, 0, 0), components=())
        if text.endswith("/"):
            raise GlobError(
                f"glob {text!r} ends with '/' (write {text.rstrip('/') or '/'!r}"
                f" or {text.rstrip('/') + '/**'!r})"
            )
        comps = tuple(text[1:].split("/"))
        pieces: list[str] = []
        literal = dstar = star = 0
        for comp in comps:
            if comp == "":
                raise GlobError(f"glob {text!r} has an empty component ('//')")
            if comp in (".", ".."):
                raise GlobError(
                    f"glob {text!r} has a {comp!r} component (write the normalised path)"
                )
            if comp == "**":
                dstar += 1
                pieces.append("(?:/[^/]+)*")
                continue
            if "**" in comp:
                raise GlobError(
                    f"glob {text!r}: '**' must be a whole component"
                    f" (use '*' inside a component, or '/**/')"
                )
            out = ["/"]
            for ch in comp:
                if ch == "*":
                    star += 1
                    out.append("[^/]*")
                elif ch == "?":
                    star += 1
                    out.append("[^/]")
                else:
                    literal += 1
                    out.append(re.escape(ch))
            pieces.append("".join(out))
        regex = "".join(pieces)
        if dstar == len(comps):  # "/**", "/**/**": the root or any path, never ""
            regex = "(?:/|(?:/[^/]+)+)"
        return cls(text=text, regex=regex, specificity=(literal, -dstar, -star), components=comps)

    @property
    def has_wildcard(self) -> bool:
        return any(c == "**" or _WILDCARDS.intersection(c) for c in self.components)

    def matches(self, path: str) -> bool:
        return re.fullmatch(self.regex, path) is not None

    def covers(self, other: PathGlob) -> bool:
        """True when every path ``other`` matches is certainly matched by ``self``.

        Conservative (may say False for globs that do cover): equal text, a
        literal ``other`` that ``self`` matches, or ``self`` = ``P/**`` with
        ``other`` under the literal ``P``.
        """
        if self.text == other.text:
            return True
        if not other.has_wildcard:
            return self.matches(other.text)
        if self.components and self.components[-1] == "**":
            head = self.components[:-1]
            if not any(c == "**" or _WILDCARDS.intersection(c) for c in head):
                return other.components[: len(head)] == head
        return False


@attrs.frozen(slots=True)
class ArgvGlob:
    """A compiled argv glob: ``*`` any characters (``/`` included), ``?`` one."""

    text: str
    pattern: re.Pattern[str]

    @classmethod
    def compile(cls, text: str) -> ArgvGlob:
        if not isinstance(text, str) or not text:
            raise GlobError("empty argv glob (remove it, or write '*')")
        if "\x00" in text:
            raise GlobError("NUL character in argv glob")
        out = []
        for ch in text:
            if ch == "*":
                out.append(".*")
            elif ch == "?":
                out.append(".")
            else:
                out.append(re.escape(ch))
        return cls(text=text, pattern=re.compile("".join(out), re.DOTALL))

    def matches(self, arg: str) -> bool:
        return self.pattern.fullmatch(arg) is not None


def literal_prefix(glob: PathGlob) -> tuple[str, ...]:
    """The components before the first wildcard component."""
    out: list[str] = []
    for comp in glob.components:
        if comp == "**" or _WILDCARDS.intersection(comp):
            break
        out.append(comp)
    return tuple(out)


def paths_related(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    """True if one component tuple is a prefix of the other."""
    n = min(len(a), len(b))
    return a[:n] == b[:n]
