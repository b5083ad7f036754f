"""Go's regular-expression syntax (RE2, package ``regexp``) evaluated with Python's ``re``.

kube-apiserver checks a CRD schema's ``pattern`` with Go's ``regexp``; Calico's own CRDs use
its syntax, e.g. FelixConfiguration's ``logSeverityScreen`` has ``^(?i)(Debug|Info|...)?$``.
Python refuses an inline flag group that is not at the very start ("global flags not at the
start of the expression"), so the pattern is translated first:

* ``(?flags)`` sets flags until the end of the enclosing group, across ``|``, as RE2 does:
  it becomes a scoped ``(?flags:...)`` closed before each ``|`` and at the group's end (and
  opened again after each ``|``);
* ``\\z`` (end of text) becomes Python's ``\\Z``; ``$`` without the ``m`` flag matches only at
  the end of the text in Go (Python's also before a final newline), so it becomes ``\\Z`` too;
* ``\\Q...\\E`` (literal text) is escaped; ``(?<name>...)`` becomes ``(?P<name>...)``;
* the ASCII classes ``[[:alpha:]]`` (and ``[[:^alpha:]]``) are expanded inside brackets.

What RE2 rejects is rejected here too (:class:`GoRegexpError`): lookaround, back-references,
atomic groups, ``\\Z``. What RE2 has and this translation does not (the ``U`` flag, Unicode
classes ``\\pL``) is rejected by name rather than evaluated differently.
"""

from __future__ import annotations

import functools
import re

#: Go's ASCII character classes (regexp/syntax: perl_groups.go's posixGroup), as Python set items
POSIX_CLASSES = {
    "alnum": "0-9A-Za-z", "alpha": "A-Za-z", "ascii": "\\x00-\\x7f", "blank": "\\t ",
    "cntrl": "\\x00-\\x1f\\x7f", "digit": "0-9", "graph": "!-~", "lower": "a-z", "print": " -~",
    "punct": "!-/:-@\\[-`{-~", "space": "\\t\\n\\v\\f\\r ", "upper": "A-Z", "word": "0-9A-Za-z_",
    "xdigit": "0-9A-Fa-f",
}
_FLAGS = set("imsU-")
#: Go's Perl classes are ASCII (Python's are Unicode unless told): \\d \\s \\w as set items
_PERL = {"d": "0-9", "s": "\\t\\n\\f\\r ", "w": "0-9A-Za-z_"}


class GoRegexpError(ValueError):
    """The pattern is not valid Go regexp syntax, or uses a part calicolab does not translate."""


@functools.lru_cache(maxsize=512)
def compile(pattern: str) -> re.Pattern[str]:  # noqa: A001 - the module's verb, as re.compile
    """``pattern`` (Go syntax) compiled for Python's ``re``; raises :class:`GoRegexpError`."""
    try:
        return re.compile(translate(pattern))
    except re.error as exc:
        raise GoRegexpError(f"error parsing regexp {pattern!r}: {exc}") from None


def search(pattern: str, text: str) -> bool:
    """Whether Go's ``regexp.MatchString(pattern, text)`` is true (an unanchored search)."""
    return compile(pattern).search(text) is not None


def translate(pattern: str) -> str:
    """The Python ``re`` source equivalent to Go ``pattern`` (see the module docstring)."""
    multiline = re.search(r"\(\?[imsU]*m", pattern) is not None  # then $ keeps Python's line meaning
    out: list[str] = []
    # per open group: the inline flag strings set in it so far (each one wrapper to close)
    groups: list[list[str]] = [[]]
    i, n = 0, len(pattern)

    def bad(what: str) -> GoRegexpError:
        return GoRegexpError(f"error parsing regexp: {what} in `{pattern}`")

    while i < n:
        c = pattern[i]
        if c == "\\":
            i, piece = _escape(pattern, i, bad)
            out.append(piece)
            continue
        if c == "[":
            i, piece = _bracket(pattern, i, bad)
            out.append(piece)
            continue
        if c == "(":
            if pattern.startswith("(?", i):
                j = i + 2
                while j < n and pattern[j] in _FLAGS:
                    j += 1
                flags = pattern[i + 2:j]
                if j < n and pattern[j] in ":)" and (flags or pattern[j] == ":"):
                    if "U" in flags:
                        raise bad("the U (ungreedy) flag, which calicolab does not translate,")
                    if flags.endswith("-") or flags.count("-") > 1:
                        raise bad(f"invalid or unsupported Perl syntax: `(?{flags}{pattern[j]}`")
                    if pattern[j] == ")":  # (?i): to the end of the enclosing group
                        groups[-1].append(flags)
                        out.append(f"(?{flags}:")
                        i = j + 1
                        continue
                    groups.append([])
                    out.append(f"(?{flags}:")
                    i = j + 1
                    continue
                if pattern.startswith("(?P<", i) or (pattern.startswith("(?<", i)
                                                     and pattern[i + 3:i + 4] not in ("=", "!")):
                    end = pattern.find(">", i)
                    name = pattern[pattern.index("<", i) + 1:end] if end > 0 else ""
                    if not re.fullmatch(r"[A-Za-z0-9_]+", name):
                        raise bad(f"invalid named capture: `{pattern[i:end + 1 if end > 0 else n]}`")
                    groups.append([])
                    out.append(f"(?P<{name}>")
                    i = end + 1
                    continue
                raise bad(f"invalid or unsupported Perl syntax: `{pattern[i:i + 3]}`")
            groups.append([])
            out.append("(")
            i += 1
            continue
        if c == ")":
            if len(groups) == 1:
                raise bad("unexpected )")
            out.append(")" * len(groups.pop()) + ")")
            i += 1
            continue
        if c == "|":
            flags = groups[-1]
            out.append(")" * len(flags) + "|" + "".join(f"(?{f}:" for f in flags))
            i += 1
            continue
        if c == "$" and not multiline:
            out.append("\\Z")
            i += 1
            continue
        out.append(c)
        i += 1
    if len(groups) > 1:
        raise bad("missing closing )")
    out.append(")" * len(groups[0]))
    return "".join(out)


def _escape(pattern: str, i: int, bad, in_class: bool = False) -> tuple[int, str]:
    """The escape at ``pattern[i]`` (a backslash): (index after it, Python source)."""
    if i + 1 >= len(pattern):
        raise bad("trailing backslash at end of expression")
    e = pattern[i + 1]
    if e == "z":
        return i + 2, "\\Z"
    if e == "Q":
        end = pattern.find("\\E", i + 2)
        literal = pattern[i + 2:] if end < 0 else pattern[i + 2:end]
        return (len(pattern) if end < 0 else end + 2), re.escape(literal)
    if e in "123456789" or e in "Zk":
        raise bad(f"invalid escape sequence: `\\{e}`")
    if e.lower() in _PERL and not (in_class and e.isupper()):
        items = _PERL[e.lower()]
        return i + 2, items if in_class else f"[{'^' if e.isupper() else ''}{items}]"
    if e in "pP":
        raise bad(f"the Unicode class `\\{e}`, which calicolab does not translate,")
    return i + 2, pattern[i:i + 2]


def _bracket(pattern: str, i: int, bad) -> tuple[int, str]:
    """The character class starting at ``pattern[i]`` (``[``): (index after it, Python source)."""
    n = len(pattern)
    j = i + 1
    out = ["["]
    if j < n and pattern[j] == "^":
        out.append("^")
        j += 1
    first = True
    while j < n:
        c = pattern[j]
        if c == "]" and not first:
            out.append("]")
            return j + 1, "".join(out)
        first = False
        if c == "[" and pattern.startswith("[:", j):
            end = pattern.find(":]", j + 2)
            name = pattern[j + 2:end] if end > 0 else ""
            negated = name.startswith("^")
            items = POSIX_CLASSES.get(name.lstrip("^"))
            if items is None:
                raise bad(f"invalid character class range: `{pattern[j:end + 2 if end > 0 else n]}`")
            if negated:
                raise bad(f"the negated class `[:{name}:]` inside brackets, which calicolab does not translate,")
            out.append(items)
            j = end + 2
            continue
        if c == "\\":
            j, piece = _escape(pattern, j, bad, in_class=True)
            out.append(piece)
            continue
        if c in "[&~|":  # literal in Go; Python warns of (future) set operations
            out.append("\\" + c)
        else:
            out.append(c)
        j += 1
    raise bad(f"missing closing ]: `{pattern[i:]}`")
