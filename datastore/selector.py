"""Calico label selectors: ``all()``, ``has(k)``, ``k == 'v'``, ``k != 'v'``,
``k in {'a','b'}``, ``k not in {...}``, ``k contains 's'``, ``k starts with 's'``,
``k ends with 's'``, ``!``, ``&&``, ``||`` and parentheses.

``parse_selector(text).matches(labels)``; an empty selector matches everything.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

Labels = dict[str, str]


class SelectorError(ValueError):
    """The selector text does not parse; the message says where."""


_TOKEN = re.compile(
    r"\s*(?:(?P<op>&&|\|\||==|!=|!|\(|\)|\{|\}|,)|(?P<str>\"[^\"]*\"|'[^']*')|(?P<word>[A-Za-z0-9_./\-]+))"
)


@dataclass(frozen=True)
class Selector:
    """A parsed selector."""

    text: str
    _fn: Callable[[Labels], bool]

    def matches(self, labels: Labels | None) -> bool:
        """True if ``labels`` satisfy the selector."""
        return self._fn(labels or {})


def _tokens(text: str) -> list[str]:
    out, pos = [], 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise SelectorError(f"unexpected character {text[pos:].strip()[:1]!r} at position {pos} in {text!r}")
        out.append(m.group("op") or m.group("str") or m.group("word"))
        pos = m.end()
    return out


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.toks = _tokens(text)
        self.i = 0

    def peek(self) -> str | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self, want: str | None = None) -> str:
        tok = self.peek()
        if tok is None or (want is not None and tok != want):
            raise SelectorError(f"expected {want or 'more'} in selector {self.text!r}, found {tok or 'the end'}")
        self.i += 1
        return tok

    def parse(self) -> Callable[[Labels], bool]:
        if not self.toks:
            return lambda labels: True
        fn = self.or_expr()
        if self.peek() is not None:
            raise SelectorError(f"unexpected {self.peek()!r} in selector {self.text!r}")
        return fn

    def or_expr(self) -> Callable[[Labels], bool]:
        parts = [self.and_expr()]
        while self.peek() == "||":
            self.take()
            parts.append(self.and_expr())
        return parts[0] if len(parts) == 1 else (lambda lb: any(p(lb) for p in parts))

    def and_expr(self) -> Callable[[Labels], bool]:
        parts = [self.unary()]
        while self.peek() == "&&":
            self.take()
            parts.append(self.unary())
        return parts[0] if len(parts) == 1 else (lambda lb: all(p(lb) for p in parts))

    def unary(self) -> Callable[[Labels], bool]:
        if self.peek() == "!":
            self.take()
            inner = self.unary()
            return lambda lb: not inner(lb)
        if self.peek() == "(":
            self.take()
            inner = self.or_expr()
            self.take(")")
            return inner
        return self.term()

    def string(self) -> str:
        tok = self.take()
        if len(tok) >= 2 and tok[0] in "'\"" and tok[-1] == tok[0]:
            return tok[1:-1]
        raise SelectorError(f"expected a quoted string in selector {self.text!r}, found {tok!r}")

    def term(self) -> Callable[[Labels], bool]:
        word = self.take()
        if word in ("all", "has") and self.peek() == "(":
            self.take("(")
            if word == "all":
                self.take(")")
                return lambda lb: True
            key = self.take()
            self.take(")")
            return lambda lb: key in lb
        key = word
        op = self.take()
        if op == "==":
            val = self.string()
            return lambda lb: lb.get(key) == val
        if op == "!=":
            val = self.string()
            return lambda lb: lb.get(key) != val
        if op == "contains":
            val = self.string()
            return lambda lb: key in lb and val in lb[key]
        if op in ("starts", "ends"):
            self.take("with")
            val = self.string()
            if op == "starts":
                return lambda lb: key in lb and lb[key].startswith(val)
            return lambda lb: key in lb and lb[key].endswith(val)
        negate = False
        if op == "not":
            negate = True
            op = self.take()
        if op == "in":
            self.take("{")
            values = set()
            while self.peek() != "}":
                values.add(self.string())
                if self.peek() == ",":
                    self.take()
            self.take("}")
            if negate:
                return lambda lb: lb.get(key) not in values
            return lambda lb: key in lb and lb[key] in values
        raise SelectorError(f"unknown operator {op!r} in selector {self.text!r}")


def parse_selector(text: str | None) -> Selector:
    """Parse a Calico selector; raises SelectorError with a clear message."""
    text = (text or "").strip()
    return Selector(text, _Parser(text).parse())
