"""Calico's label selector language, as libcalico-go v3.28.1 parses, prints and evaluates it.

Grammar (``libcalico-go/lib/selector/{tokenizer,parser}``)::

    or      := and ('||' and)*
    and     := op ('&&' op)*
    op      := '!'* ( 'all()' | 'global()' | 'has(' KEY ')' | '(' or ')'
                    | KEY ('==' | '!=' | 'contains' | 'starts with' | 'ends with') STRING
                    | KEY ('in' | 'not in') '{' STRING (',' STRING)* '}' )

``KEY`` is ``[a-zA-Z0-9_./-]{1,512}``; strings are single- or double-quoted
(no escapes). An empty selector selects everything. ``k != 'v'`` and
``k not in {...}`` match an absent label; the other comparisons need it.

:func:`parse_selector` returns a :class:`Selector` with

* ``matches(labels)``: evaluation, compiled to one Python expression (the
  policy index evaluates selectors millions of times);
* ``canonical()``: Calico's normalised text (``==`` and double quotes, single
  quotes for a value holding ``"``, ``in`` sets sorted and deduplicated, every
  ``&&``/``||`` group in parentheses), which is what Felix hashes;
* ``unique_id()``: ``"s:" + base64url(sha224("s:" + canonical))``, the ID of
  the selector's ipset (``cali40s:<first 23 chars>``);
* ``with_prefix(p)``: every label key prefixed (Calico's PrefixVisitor, used
  for ``pcns.``/``pcsa.`` namespace and service-account labels);
* ``required_labels()``: label (key, value) pairs any match must carry, for
  indexing.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache

Labels = Mapping[str, str]


class SelectorError(ValueError):
    """The selector text does not parse; the message says what and where."""


# ---------------------------------------------------------------------------
# Tokenizer (libcalico-go/lib/selector/tokenizer/tokenizer.go)

_KEY = r"[a-zA-Z0-9_./-]{1,512}"
_IDENT = re.compile(_KEY)
_HAS = re.compile(r"has\(\s*(" + _KEY + r")\s*\)")
_ALL = re.compile(r"all\(\s*\)")
_GLOBAL = re.compile(r"global\(\s*\)")
_NOT_IN = re.compile(r"not\s*in\b")
_IN = re.compile(r"in\b")
_CONTAINS = re.compile(r"contains")
_STARTS = re.compile(r"starts\s*with")
_ENDS = re.compile(r"ends\s*with")

# token kinds
LABEL, STRING, LBRACE, RBRACE, COMMA, EQ, NE, IN, NOT, NOT_IN = range(10)
CONTAINS, STARTS, ENDS, ALL, HAS, LPAREN, RPAREN, AND, OR, GLOBAL, EOF = range(10, 21)
_NAMES = {LABEL: "label", STRING: "string", LBRACE: "'{'", RBRACE: "'}'", COMMA: "','", EQ: "'=='",
          NE: "'!='", IN: "'in'", NOT: "'!'", NOT_IN: "'not in'", CONTAINS: "'contains'",
          STARTS: "'starts with'", ENDS: "'ends with'", ALL: "'all()'", HAS: "'has()'", LPAREN: "'('",
          RPAREN: "')'", AND: "'&&'", OR: "'||'", GLOBAL: "'global()'", EOF: "the end"}


@dataclass(frozen=True)
class _Tok:
    kind: int
    value: str | None
    pos: int


def _tokenize(text: str) -> list[_Tok]:
    toks: list[_Tok] = []
    pos, n = 0, len(text)
    while True:
        while pos < n and text[pos] in " \t":
            pos += 1
        if pos >= n:
            toks.append(_Tok(EOF, None, pos))
            return toks
        c = text[pos]
        start = pos
        if c in "(){},":
            toks.append(_Tok({"(": LPAREN, ")": RPAREN, "{": LBRACE, "}": RBRACE, ",": COMMA}[c], None, pos))
            pos += 1
        elif c in "\"'":
            end = text.find(c, pos + 1)
            if end < 0:
                raise SelectorError(f"unterminated string starting at position {pos}")
            toks.append(_Tok(STRING, text[pos + 1:end], pos))
            pos = end + 1
        elif c == "=":
            if text.startswith("==", pos):
                toks.append(_Tok(EQ, None, pos))
                pos += 2
            else:
                raise SelectorError(f"expected '==' at position {pos}")
        elif c == "!":
            if text.startswith("!=", pos):
                toks.append(_Tok(NE, None, pos))
                pos += 2
            else:
                toks.append(_Tok(NOT, None, pos))
                pos += 1
        elif c == "&":
            if not text.startswith("&&", pos):
                raise SelectorError(f"expected '&&' at position {pos}")
            toks.append(_Tok(AND, None, pos))
            pos += 2
        elif c == "|":
            if not text.startswith("||", pos):
                raise SelectorError(f"expected '||' at position {pos}")
            toks.append(_Tok(OR, None, pos))
            pos += 2
        elif toks and toks[-1].kind == LABEL:
            for rx, kind in ((_CONTAINS, CONTAINS), (_STARTS, STARTS), (_ENDS, ENDS), (_NOT_IN, NOT_IN),
                             (_IN, IN)):
                m = rx.match(text, pos)
                if m:
                    toks.append(_Tok(kind, None, pos))
                    pos = m.end()
                    break
            else:
                raise SelectorError(f"unexpected characters after label {toks[-1].value!r} at position {pos}, "
                                    "was expecting an operator (==, !=, in, not in, contains, starts with, "
                                    "ends with)")
        else:
            m = _HAS.match(text, pos)
            if m:
                toks.append(_Tok(HAS, m.group(1), pos))
                pos = m.end()
            elif (m := _ALL.match(text, pos)) is not None:
                toks.append(_Tok(ALL, None, pos))
                pos = m.end()
            elif (m := _GLOBAL.match(text, pos)) is not None:
                toks.append(_Tok(GLOBAL, None, pos))
                pos = m.end()
            elif (m := _IDENT.match(text, pos)) is not None:
                toks.append(_Tok(LABEL, m.group(0), pos))
                pos = m.end()
            else:
                raise SelectorError(f"unexpected character {c!r} at position {pos}")
        assert pos > start


# ---------------------------------------------------------------------------
# AST (libcalico-go/lib/selector/parser/ast.go)


def _quote(s: str) -> str:
    q = "'" if '"' in s else '"'
    return f"{q}{s}{q}"


class Node:
    """A selector expression node."""

    def evaluate(self, labels: Labels) -> bool:  # pragma: no cover - overridden
        raise NotImplementedError

    def fragments(self, out: list[str]) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def pyexpr(self, consts: list) -> str:  # pragma: no cover - overridden
        raise NotImplementedError

    def prefixed(self, prefix: str) -> Node:
        return self

    def required(self) -> dict[str, frozenset[str] | None]:
        """Labels every match carries: key -> allowed values (None: any value)."""
        return {}


@dataclass(frozen=True)
class AllNode(Node):
    def evaluate(self, labels: Labels) -> bool:
        return True

    def fragments(self, out: list[str]) -> None:
        out.append("all()")

    def pyexpr(self, consts: list) -> str:
        return "True"


@dataclass(frozen=True)
class GlobalNode(Node):
    def evaluate(self, labels: Labels) -> bool:
        return True

    def fragments(self, out: list[str]) -> None:
        out.append("global()")

    def pyexpr(self, consts: list) -> str:
        return "True"


@dataclass(frozen=True)
class HasNode(Node):
    key: str

    def evaluate(self, labels: Labels) -> bool:
        return self.key in labels

    def fragments(self, out: list[str]) -> None:
        out += ["has(", self.key, ")"]

    def pyexpr(self, consts: list) -> str:
        return f"({self.key!r} in lb)"

    def prefixed(self, prefix: str) -> Node:
        return HasNode(prefix + self.key)

    def required(self) -> dict[str, frozenset[str] | None]:
        return {self.key: None}


@dataclass(frozen=True)
class CompareNode(Node):
    """``key <op> 'value'`` for ==, !=, contains, starts with, ends with."""

    key: str
    op: str
    value: str

    def evaluate(self, labels: Labels) -> bool:
        v = labels.get(self.key)
        if self.op == "!=":
            return v != self.value
        if v is None:
            return False
        if self.op == "==":
            return v == self.value
        if self.op == "contains":
            return self.value in v
        if self.op == "starts with":
            return v.startswith(self.value)
        return v.endswith(self.value)

    def fragments(self, out: list[str]) -> None:
        out += [self.key, f" {self.op} ", _quote(self.value)]

    def pyexpr(self, consts: list) -> str:
        k, v = repr(self.key), repr(self.value)
        if self.op == "==":
            return f"(lb.get({k}) == {v})"
        if self.op == "!=":
            return f"(lb.get({k}) != {v})"
        if self.op == "contains":
            return f"({k} in lb and {v} in lb[{k}])"
        if self.op == "starts with":
            return f"({k} in lb and lb[{k}].startswith({v}))"
        return f"({k} in lb and lb[{k}].endswith({v}))"

    def prefixed(self, prefix: str) -> Node:
        return CompareNode(prefix + self.key, self.op, self.value)

    def required(self) -> dict[str, frozenset[str] | None]:
        if self.op == "==":
            return {self.key: frozenset((self.value,))}
        if self.op == "!=":
            return {}
        return {self.key: None}


@dataclass(frozen=True)
class InNode(Node):
    """``key in {...}`` / ``key not in {...}`` (values sorted, deduplicated)."""

    key: str
    values: tuple[str, ...]
    negated: bool = False

    def evaluate(self, labels: Labels) -> bool:
        v = labels.get(self.key)
        if v is None:
            return self.negated
        return (v in self.values) != self.negated

    def fragments(self, out: list[str]) -> None:
        out += [self.key, " not in {" if self.negated else " in {", ", ".join(_quote(v) for v in self.values), "}"]

    def pyexpr(self, consts: list) -> str:
        consts.append(frozenset(self.values))
        name = f"_c{len(consts) - 1}"
        return f"(lb.get({self.key!r}) {'not in' if self.negated else 'in'} {name})"

    def prefixed(self, prefix: str) -> Node:
        return InNode(prefix + self.key, self.values, self.negated)

    def required(self) -> dict[str, frozenset[str] | None]:
        return {} if self.negated else {self.key: frozenset(self.values)}


@dataclass(frozen=True)
class NotNode(Node):
    operand: Node

    def evaluate(self, labels: Labels) -> bool:
        return not self.operand.evaluate(labels)

    def fragments(self, out: list[str]) -> None:
        out.append("!")
        self.operand.fragments(out)

    def pyexpr(self, consts: list) -> str:
        return f"(not {self.operand.pyexpr(consts)})"

    def prefixed(self, prefix: str) -> Node:
        return NotNode(self.operand.prefixed(prefix))


@dataclass(frozen=True)
class AndNode(Node):
    operands: tuple[Node, ...]

    def evaluate(self, labels: Labels) -> bool:
        return all(o.evaluate(labels) for o in self.operands)

    def fragments(self, out: list[str]) -> None:
        out.append("(")
        for i, o in enumerate(self.operands):
            if i:
                out.append(" && ")
            o.fragments(out)
        out.append(")")

    def pyexpr(self, consts: list) -> str:
        return "(" + " and ".join(o.pyexpr(consts) for o in self.operands) + ")"

    def prefixed(self, prefix: str) -> Node:
        return AndNode(tuple(o.prefixed(prefix) for o in self.operands))

    def required(self) -> dict[str, frozenset[str] | None]:
        out: dict[str, frozenset[str] | None] = {}
        for o in self.operands:
            for k, vals in o.required().items():
                if k not in out:
                    out[k] = vals
                elif vals is not None:
                    cur = out[k]
                    out[k] = vals if cur is None else cur & vals
        return out


@dataclass(frozen=True)
class OrNode(Node):
    operands: tuple[Node, ...]

    def evaluate(self, labels: Labels) -> bool:
        return any(o.evaluate(labels) for o in self.operands)

    def fragments(self, out: list[str]) -> None:
        out.append("(")
        for i, o in enumerate(self.operands):
            if i:
                out.append(" || ")
            o.fragments(out)
        out.append(")")

    def pyexpr(self, consts: list) -> str:
        return "(" + " or ".join(o.pyexpr(consts) for o in self.operands) + ")"

    def prefixed(self, prefix: str) -> Node:
        return OrNode(tuple(o.prefixed(prefix) for o in self.operands))

    def required(self) -> dict[str, frozenset[str] | None]:
        reqs = [o.required() for o in self.operands]
        out: dict[str, frozenset[str] | None] = {}
        for k in set(reqs[0]).intersection(*reqs[1:]):
            vals = [r[k] for r in reqs]
            out[k] = None if any(v is None for v in vals) else frozenset().union(*vals)  # type: ignore[arg-type]
        return out


# ---------------------------------------------------------------------------
# Parser (libcalico-go/lib/selector/parser/parser.go)


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.toks = _tokenize(text)
        self.i = 0

    def peek(self) -> _Tok:
        return self.toks[self.i]

    def fail(self, what: str) -> SelectorError:
        tok = self.peek()
        found = f"{_NAMES[tok.kind]} {tok.value!r}" if tok.value is not None else _NAMES[tok.kind]
        where = "" if tok.kind == EOF else f" at position {tok.pos}"
        return SelectorError(f"expected {what}, found {found}{where}")

    def parse(self) -> Node:
        if self.peek().kind == EOF:
            return AllNode()
        node = self.or_expr()
        if self.peek().kind != EOF:
            raise self.fail("'&&', '||' or the end of the selector")
        return node

    def or_expr(self) -> Node:
        parts = [self.and_expr()]
        while self.peek().kind == OR:
            self.i += 1
            parts.append(self.and_expr())
        return parts[0] if len(parts) == 1 else OrNode(tuple(parts))

    def and_expr(self) -> Node:
        parts = [self.operation()]
        while self.peek().kind == AND:
            self.i += 1
            parts.append(self.operation())
        return parts[0] if len(parts) == 1 else AndNode(tuple(parts))

    def operation(self) -> Node:
        negated = False
        while self.peek().kind == NOT:
            negated = not negated
            self.i += 1
        tok = self.peek()
        node: Node
        if tok.kind == HAS:
            node, self.i = HasNode(tok.value or ""), self.i + 1
        elif tok.kind == ALL:
            node, self.i = AllNode(), self.i + 1
        elif tok.kind == GLOBAL:
            node, self.i = GlobalNode(), self.i + 1
        elif tok.kind == LPAREN:
            self.i += 1
            node = self.or_expr()
            if self.peek().kind != RPAREN:
                raise self.fail("')'")
            self.i += 1
        elif tok.kind == LABEL:
            key = tok.value or ""
            self.i += 1
            op = self.peek()
            self.i += 1
            if op.kind in (EQ, NE, CONTAINS, STARTS, ENDS):
                if self.peek().kind != STRING:
                    raise self.fail("a quoted string")
                value = self.peek().value or ""
                self.i += 1
                name = {EQ: "==", NE: "!=", CONTAINS: "contains", STARTS: "starts with", ENDS: "ends with"}[op.kind]
                node = CompareNode(key, name, value)
            elif op.kind in (IN, NOT_IN):
                if self.peek().kind != LBRACE:
                    raise self.fail("a set literal '{...}'")
                self.i += 1
                values: list[str] = []
                while self.peek().kind == STRING:
                    values.append(self.peek().value or "")
                    self.i += 1
                    if self.peek().kind != COMMA:
                        break
                    self.i += 1
                if self.peek().kind != RBRACE:
                    raise self.fail("'}'")
                self.i += 1
                node = InNode(key, tuple(sorted(set(values))), op.kind == NOT_IN)
            else:
                self.i -= 1
                raise self.fail(f"an operator after label {key!r}")
        else:
            raise self.fail("a label, has(), all(), '!' or '('")
        return NotNode(node) if negated else node


# ---------------------------------------------------------------------------
# Selector


class Selector:
    """A parsed selector: ``matches``, ``canonical``, ``unique_id``, ``with_prefix``."""

    __slots__ = ("text", "root", "_canon", "_uid", "matches")

    def __init__(self, text: str, root: Node) -> None:
        self.text = text
        self.root = root
        self._canon: str | None = None
        self._uid: str | None = None
        self.matches: Callable[[Labels | None], bool] = _compile(root)

    def canonical(self) -> str:
        """Calico's normalised form (``parser.Selector.String()``)."""
        if self._canon is None:
            out: list[str] = []
            self.root.fragments(out)
            self._canon = "".join(out)
        return self._canon

    def unique_id(self) -> str:
        """``s:<base64url(sha224("s:" + canonical))>`` (``hash.MakeUniqueID("s", ...)``)."""
        if self._uid is None:
            self._uid = make_unique_id("s", self.canonical())
        return self._uid

    def with_prefix(self, prefix: str) -> Selector:
        """A copy with every label key prefixed (``pcns.``, ``pcsa.``)."""
        return Selector(self.text, self.root.prefixed(prefix))

    def required_labels(self) -> dict[str, frozenset[str] | None]:
        """Labels every matching set of labels carries: key -> allowed values (None: any)."""
        return self.root.required()

    def __repr__(self) -> str:
        return f"Selector({self.canonical()!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Selector) and other.canonical() == self.canonical()

    def __hash__(self) -> int:
        return hash(self.canonical())


def _compile(root: Node) -> Callable[[Labels | None], bool]:
    """One Python lambda for the whole expression (falls back to tree walking if too deep)."""
    consts: list = []
    try:
        expr = root.pyexpr(consts)
        env = {f"_c{i}": c for i, c in enumerate(consts)}
        env["__builtins__"] = {}
        fn = eval(compile(f"lambda lb: {expr}", "<selector>", "eval"), env)  # noqa: S307 - generated from the AST
    except (RecursionError, SyntaxError, MemoryError):
        def fn(lb: Labels) -> bool:
            return root.evaluate(lb)

    def matches(labels: Labels | None) -> bool:
        return bool(fn(labels if labels is not None else {}))

    matches.fast = fn  # type: ignore[attr-defined]  # no None check, for hot loops
    return matches


def make_unique_id(prefix: str, content: str) -> str:
    """libcalico-go's ``hash.MakeUniqueID``: ``prefix:base64url(sha224(prefix:content))``."""
    digest = hashlib.sha224(f"{prefix}:{content}".encode()).digest()
    return f"{prefix}:" + base64.urlsafe_b64encode(digest).decode().rstrip("=")


@lru_cache(maxsize=16384)
def parse_selector(text: str | None) -> Selector:
    """Parse a Calico selector; raises SelectorError with a clear message.

    Parsed selectors are cached and must be treated as immutable.
    """
    text = (text or "").strip()
    try:
        root = _Parser(text).parse()
    except SelectorError as exc:
        raise SelectorError(f"invalid selector {text!r}: {exc}") from None
    return Selector(text, root)


def normalise(text: str) -> str:
    """``selector.Normalise``: the canonical form, or the text unchanged if it does not parse."""
    try:
        return parse_selector(text).canonical()
    except SelectorError:
        return text.strip()
