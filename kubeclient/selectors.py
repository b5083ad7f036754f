"""Kubernetes label and field selectors: the query-string syntax and ``LabelSelector`` objects.

``parse_labels("app=web,tier in (a,b),!canary")`` -> requirements;
``matches(reqs, labels)``; ``match_label_selector({"matchLabels":..., "matchExpressions":...}, labels)``;
``parse_fields("spec.nodeName=n1,status.phase!=Running")``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


class SelectorError(ValueError):
    """A selector string that does not parse (worded as the API server words it)."""


@dataclass(frozen=True)
class Requirement:
    """One term: ``op`` is =, !=, in, notin, exists, !, gt, lt."""

    key: str
    op: str
    values: tuple[str, ...] = ()

    def matches(self, labels: dict[str, str]) -> bool:
        has = self.key in labels
        v = labels.get(self.key)
        if self.op in ("=", "in"):
            return has and v in self.values
        if self.op in ("!=", "notin"):
            return not has or v not in self.values
        if self.op == "exists":
            return has
        if self.op == "!":
            return not has
        if self.op in ("gt", "lt"):
            try:
                n, ref = int(v or ""), int(self.values[0])
            except ValueError:
                return False
            return n > ref if self.op == "gt" else n < ref
        return False


_TOKEN = re.compile(r"\s*(!=|==|=|!|,|\(|\)|>|<|[^\s!=,()<>]+)")


def parse_labels(text: str | None) -> list[Requirement]:
    """Parse a label selector string (``a=b,c notin (x,y),!d,e``)."""
    if not text:
        return []
    toks = _TOKEN.findall(text)
    if "".join(toks).replace(" ", "") != text.replace(" ", ""):
        raise SelectorError(f'unable to parse requirement: found "{text}"')
    reqs: list[Requirement] = []
    i = 0

    def need(cond: bool, what: str) -> None:
        if not cond:
            raise SelectorError(f"unable to parse requirement: {what}")

    while i < len(toks):
        t = toks[i]
        if t == "!":
            need(i + 1 < len(toks), "found '', expected: identifier after '!'")
            reqs.append(Requirement(toks[i + 1], "!"))
            i += 2
        else:
            key = t
            need(key not in (",", "(", ")", "=", "!=", "=="), f"found '{key}', expected: !, identifier, or 'end of string'")
            i += 1
            if i >= len(toks) or toks[i] == ",":
                reqs.append(Requirement(key, "exists"))
            elif toks[i] in ("=", "==", "!="):
                op = "!=" if toks[i] == "!=" else "="
                val = toks[i + 1] if i + 1 < len(toks) and toks[i + 1] != "," else ""
                reqs.append(Requirement(key, op, (val,)))
                i += 2 if val else 1
            elif toks[i] in (">", "<"):
                need(i + 1 < len(toks), "missing value")
                reqs.append(Requirement(key, "gt" if toks[i] == ">" else "lt", (toks[i + 1],)))
                i += 2
            elif toks[i] in ("in", "notin"):
                op = toks[i]
                need(i + 1 < len(toks) and toks[i + 1] == "(", f"found '{toks[i + 1] if i + 1 < len(toks) else ''}', expected: '('")
                i += 2
                vals = []
                while i < len(toks) and toks[i] != ")":
                    if toks[i] != ",":
                        vals.append(toks[i])
                    i += 1
                need(i < len(toks), "found '', expected: ')'")
                i += 1
                reqs.append(Requirement(key, op, tuple(vals)))
            else:
                raise SelectorError(f"unable to parse requirement: found '{toks[i]}', expected: "
                                    "in, notin, =, ==, !=, gt, lt")
        if i < len(toks):
            need(toks[i] == ",", f"found '{toks[i]}', expected: ',' or 'end of string'")
            i += 1
    return reqs


def matches(reqs: list[Requirement], labels: dict[str, str] | None) -> bool:
    """True when ``labels`` satisfy every requirement."""
    labels = labels or {}
    return all(r.matches(labels) for r in reqs)


def from_label_selector(sel: dict | None) -> list[Requirement]:
    """Requirements of a ``LabelSelector`` object (matchLabels + matchExpressions)."""
    reqs = [Requirement(k, "=", (v,)) for k, v in ((sel or {}).get("matchLabels") or {}).items()]
    for e in (sel or {}).get("matchExpressions") or []:
        op = {"In": "in", "NotIn": "notin", "Exists": "exists", "DoesNotExist": "!"}.get(e.get("operator", ""))
        if op is None:
            raise SelectorError(f'"{e.get("operator")}" is not a valid label selector operator')
        reqs.append(Requirement(e.get("key", ""), op, tuple(e.get("values") or ())))
    return reqs


def match_label_selector(sel: dict | None, labels: dict[str, str] | None) -> bool:
    """A ``LabelSelector`` object against labels (an empty selector matches everything)."""
    return matches(from_label_selector(sel), labels)


def to_string(sel: dict | None) -> str:
    """The query-string form of a ``LabelSelector`` object."""
    parts = [f"{k}={v}" for k, v in sorted(((sel or {}).get("matchLabels") or {}).items())]
    for e in (sel or {}).get("matchExpressions") or []:
        op = e.get("operator")
        if op in ("In", "NotIn"):
            parts.append(f"{e['key']} {op.lower()} ({','.join(sorted(e.get('values') or []))})")
        elif op == "Exists":
            parts.append(e["key"])
        elif op == "DoesNotExist":
            parts.append("!" + e["key"])
    return ",".join(parts)


def parse_fields(text: str | None) -> list[tuple[str, str, str]]:
    """Parse a field selector (``a=b,c!=d``, ``==`` too) into (field, op, value)."""
    out: list[tuple[str, str, str]] = []
    for part in filter(None, (p.strip() for p in (text or "").split(","))):
        if "!=" in part:
            k, v = part.split("!=", 1)
            out.append((k.strip(), "!=", v.strip()))
        elif "==" in part:
            k, v = part.split("==", 1)
            out.append((k.strip(), "=", v.strip()))
        elif "=" in part:
            k, v = part.split("=", 1)
            out.append((k.strip(), "=", v.strip()))
        else:
            raise SelectorError(f"invalid selector: '{text}'; can't understand '{part}'")
    return out
