"""iptables rules as Felix renders them (pure): match fragments, actions, comments.

Felix (``felix/iptables/{match_builder,actions,rules}.go``) renders a rule as
its comments, then its match criteria, then its action, with long options
(``--in-interface``, ``--jump``); that exact text is what the rule hashes
cover (``names.rule_hashes``) and what ``iptables-restore`` is given.
``iptables-save`` prints the short forms (``-i``, ``-j``, ``--set-xmark``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache

_UNSAFE = re.compile(r"[^\w @%+=:,./-]")
MAX_COMMENT = 256

# actions
ACCEPT = "--jump ACCEPT"
DROP = "--jump DROP"
REJECT = "--jump REJECT"
RETURN = "--jump RETURN"
MASQUERADE = "--jump MASQUERADE"


def jump(target: str) -> str:
    return f"--jump {target}"


def goto(target: str) -> str:
    return f"--goto {target}"


def set_mark(mark: int) -> str:
    """``SetMarkAction``: set the bits of ``mark``."""
    return f"--jump MARK --set-mark {mark:#x}/{mark:#x}"


def clear_mark(mask: int) -> str:
    """``ClearMarkAction``: clear the bits of ``mask``."""
    return f"--jump MARK --set-mark 0/{mask:#x}"


def set_masked_mark(mark: int, mask: int) -> str:
    return f"--jump MARK --set-mark {mark:#x}/{mask:#x}"


def log(prefix: str) -> str:
    return f'--jump LOG --log-prefix "{prefix}: " --log-level 5'


# matches


def mark_clear(mark: int) -> str:
    return f"-m mark --mark 0/{mark:#x}"


def mark_not_clear(mark: int) -> str:
    return f"-m mark ! --mark 0/{mark:#x}"


def mark_set(mark: int) -> str:
    """``MarkSingleBitSet``."""
    if bin(mark).count("1") != 1:
        raise ValueError(f"mark_set needs a single bit, got {mark:#x}")
    return f"-m mark --mark {mark:#x}/{mark:#x}"


def mark_matches(mark: int, mask: int) -> str:
    return f"-m mark --mark {mark:#x}/{mask:#x}"


def in_iface(name: str) -> str:
    return f"--in-interface {name}"


def out_iface(name: str) -> str:
    return f"--out-interface {name}"


def proto(p: str | int, negate: bool = False) -> str:
    """``-p tcp`` / ``-p 4`` (``! -p ...`` negated)."""
    return f"{'! ' if negate else ''}-p {p}"


def src_net(cidr: str, negate: bool = False) -> str:
    return f"{'! ' if negate else ''}--source {cidr}"


def dst_net(cidr: str, negate: bool = False) -> str:
    return f"{'! ' if negate else ''}--destination {cidr}"


def set_match(name: str, direction: str, negate: bool = False) -> str:
    """``-m set [!] --match-set NAME src|dst|src,src|dst,dst``."""
    return f"-m set {'! ' if negate else ''}--match-set {name} {direction}"


def ports(which: str, port_list: Iterable[str], negate: bool = False) -> str:
    """``-m multiport [!] --source-ports|--destination-ports a,b:c``."""
    flag = "--source-ports" if which == "src" else "--destination-ports"
    return f"-m multiport {'! ' if negate else ''}{flag} {','.join(port_list)}"


def icmp(icmp_type: int, code: int | None = None, negate: bool = False) -> str:
    value = f"{icmp_type}/{code}" if code is not None else f"{icmp_type}"
    return f"-m icmp {'! ' if negate else ''}--icmp-type {value}"


def ctstate(states: str, negate: bool = False) -> str:
    return f"-m conntrack {'! ' if negate else ''}--ctstate {states}"


def addrtype(which: str, kind: str = "LOCAL", negate: bool = False, limit_iface_out: bool = False) -> str:
    """``-m addrtype [!] --src-type|--dst-type LOCAL [--limit-iface-out]``."""
    flag = "--src-type" if which == "src" else "--dst-type"
    tail = " --limit-iface-out" if limit_iface_out else ""
    return f"-m addrtype {'! ' if negate else ''}{flag} {kind}{tail}"


RPF_FAILED = "-m rpfilter --invert --validmark"


@lru_cache(maxsize=65536)
def escape_comment(text: str) -> str:
    """Felix's ``escapeComment`` (shell-unsafe characters -> ``_``) and 256-char cut."""
    return _UNSAFE.sub("_", text)[:MAX_COMMENT]


def rule(action: str = "", *match: str, comment: str | Iterable[str] = ()) -> str:
    """One rule: ``-m comment --comment "..."`` per comment, the match fragments, the action."""
    comments = (comment,) if isinstance(comment, str) else tuple(comment)
    parts = [f'-m comment --comment "{escape_comment(c)}"' for c in comments]
    parts += [m for m in match if m]
    if action:
        parts.append(action)
    return " ".join(parts)


_TARGET = re.compile(r"--(?:jump|goto) (cali-[^\s]+)")


def referenced_chains(rules: Iterable[str]) -> tuple[str, ...]:
    """The Calico chains the rules jump or go to (for Felix's only-referenced-chains rule)."""
    return tuple(dict.fromkeys(_TARGET.findall("\n".join(rules))))
