"""iptables rule counters: which rule dropped (or logged) a packet (``iptables-save -c``).

Packets a policy drops never reach a capture after the drop, so the proof of *where*
they died is the counter of the rule that dropped them. :func:`read` takes the
counters of one table in one netns; :func:`delta` compares two readings and lists
the rules whose packet count grew; :func:`dropped_by` keeps the DROP/REJECT ones.
Rules are identified by chain and Felix's ``cali:<hash>`` comment, and shown with
their other comments ("Drop if no policies passed packet", "Policy ... ingress").
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass

_LINE = re.compile(r"^\[(\d+):(\d+)\] -A (\S+) (.*)$")
_HASH = re.compile(r'--comment "?cali:([A-Za-z0-9_-]{16})"?')
_COMMENT = re.compile(r'--comment (?:"([^"]*)"|(\S+))')


@dataclass(frozen=True)
class RuleCount:
    """One rule with its counters."""

    table: str
    chain: str
    position: int  # 1-based within the chain
    packets: int
    bytes: int
    rule: str  # the rule as iptables-save prints it, after ``-A <chain>``

    @property
    def rule_hash(self) -> str | None:
        m = _HASH.search(self.rule)
        return m.group(1) if m else None

    @property
    def comments(self) -> list[str]:
        """Comments other than Felix's hash."""
        return [a or b for a, b in _COMMENT.findall(self.rule) if not (a or b).startswith("cali:")]

    @property
    def target(self) -> str:
        m = re.search(r"-j (\S+)", self.rule)
        return m.group(1) if m else ""

    def describe(self) -> str:
        note = "; ".join(self.comments)
        return (f"{self.table} {self.chain} rule {self.position} (-j {self.target}"
                + (f", \"{note}\"" if note else "") + f"): {self.packets} packet(s)")


def parse(text: str, table: str) -> list[RuleCount]:
    """``iptables-save -c -t <table>`` output -> counters per rule."""
    out = []
    pos: dict[str, int] = {}
    for line in text.splitlines():
        m = _LINE.match(line)
        if not m:
            continue
        chain = m.group(3)
        pos[chain] = pos.get(chain, 0) + 1
        out.append(RuleCount(table, chain, pos[chain], int(m.group(1)), int(m.group(2)), m.group(4)))
    return out


def read(netns: str, table: str = "filter") -> list[RuleCount]:
    """The counters of ``table`` in the named netns (``ip netns exec``)."""
    res = subprocess.run(["ip", "netns", "exec", netns, "iptables-save", "-c", "-t", table],
                         capture_output=True, text=True, timeout=30)
    if res.returncode != 0:
        raise RuntimeError(f"iptables-save -c -t {table} in {netns} failed: {res.stderr.strip()}")
    return parse(res.stdout, table)


def _key(r: RuleCount) -> tuple[str, str, str]:
    return r.table, r.chain, r.rule_hash or f"{r.position}:{r.rule}"


def delta(before: list[RuleCount], after: list[RuleCount]) -> list[RuleCount]:
    """Rules whose packet count grew between two readings (counts are the growth)."""
    old = {_key(r): r for r in before}
    out = []
    for r in after:
        prev = old.get(_key(r))
        grown = r.packets - (prev.packets if prev is not None else 0)
        if grown > 0:
            out.append(RuleCount(r.table, r.chain, r.position, grown,
                                 r.bytes - (prev.bytes if prev is not None else 0), r.rule))
    return out


def dropped_by(before: list[RuleCount], after: list[RuleCount], chain_prefix: str = "cali-") -> list[RuleCount]:
    """The DROP/REJECT rules of Calico's chains whose packet count grew."""
    return [r for r in delta(before, after) if r.target in ("DROP", "REJECT") and r.chain.startswith(chain_prefix)]
