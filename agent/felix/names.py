"""Felix's naming rules: length-limited chain names, rule hashes, ipset names (pure)."""

from __future__ import annotations

import base64
import hashlib
from functools import lru_cache

MAX_CHAIN_NAME = 28
MAX_IPSET_NAME = 31
RULE_HASH_LEN = 16
HASH_COMMENT_PREFIX = "cali:"

IPSET_ALL_HOSTS = "cali40all-hosts-net"
IPSET_MASQ_POOLS = "cali40masq-ipam-pools"
IPSET_ALL_POOLS = "cali40all-ipam-pools"
IPSET_THIS_HOST = "cali40this-host"
IPSET_ALL_VXLAN = "cali40all-vxlan-net"


def length_limited_id(prefix: str, suffix: str, max_len: int = MAX_CHAIN_NAME) -> str:
    """``prefix + suffix`` if it fits in ``max_len``, else ``prefix + "_" + base64url(sha256(suffix))``
    cut to ``max_len`` (Felix's ``hashutils.GetLengthLimitedID``).

    A name of exactly ``max_len`` whose suffix starts with "_" is hashed too, so
    it cannot be mistaken for a hashed name.
    """
    total = len(prefix) + len(suffix)
    if total < max_len or (total == max_len and not suffix.startswith("_")):
        return prefix + suffix
    digest = base64.urlsafe_b64encode(hashlib.sha256(suffix.encode()).digest()).decode().rstrip("=")
    room = max_len - len(prefix) - 1
    if room <= 0:
        raise ValueError(f"chain prefix {prefix!r} leaves no room for a hash within {max_len} chars")
    return prefix + "_" + digest[:room]


@lru_cache(maxsize=65536)
def endpoint_chain(direction: str, iface: str) -> str:
    """``cali-tw-<iface>`` (to workload) or ``cali-fw-<iface>`` (from workload)."""
    if direction not in ("tw", "fw"):
        raise ValueError(f"endpoint chain direction must be 'tw' or 'fw', got {direction!r}")
    return length_limited_id(f"cali-{direction}-", iface)


@lru_cache(maxsize=65536)
def profile_chain(direction: str, profile: str) -> str:
    """``cali-pri-<profile>`` (inbound) or ``cali-pro-<profile>`` (outbound), hashed if too long."""
    if direction not in ("pri", "pro"):
        raise ValueError(f"profile chain direction must be 'pri' or 'pro', got {direction!r}")
    return length_limited_id(f"cali-{direction}-", profile)


@lru_cache(maxsize=65536)
def policy_chain(direction: str, policy_id: str) -> str:
    """``cali-pi-<id>`` (ingress) or ``cali-po-<id>`` (egress); ids are ``<ns>/<name>`` or ``<name>``."""
    if direction not in ("pi", "po"):
        raise ValueError(f"policy chain direction must be 'pi' or 'po', got {direction!r}")
    return length_limited_id(f"cali-{direction}-", policy_id)


def rule_hashes(chain: str, rules: list[str] | tuple[str, ...]) -> list[str]:
    """One 16-char hash per rule, as Felix's ``Chain.RuleHashes``.

    ``h0 = sha224(chain)``, ``h_i = sha224(h_{i-1} + "-A <chain> HASH <rule>")``,
    hash = base64url(h_i)[:16], so each hash covers the chain name, the rule
    and every rule before it. ``rule`` is Felix's rendering (comments, match,
    action with long options). Appended hooks hash with ``<chain>*appends*``.
    """
    return list(_rule_hashes(chain, tuple(rules)))


@lru_cache(maxsize=65536)
def _rule_hashes(chain: str, rules: tuple[str, ...]) -> tuple[str, ...]:
    digest = hashlib.sha224(chain.encode()).digest()
    prefix = f"-A {chain} HASH "
    out = []
    for rule in rules:
        digest = hashlib.sha224(digest + (prefix + rule).encode()).digest()
        out.append(base64.urlsafe_b64encode(digest).decode()[:RULE_HASH_LEN])
    return tuple(out)


def ipset_name(set_id: str, temp: bool = False) -> str:
    """``cali40<id>`` (or ``cali4t<id>`` for a temporary set), truncated to 31 chars."""
    return (("cali4t" if temp else "cali40") + set_id)[:MAX_IPSET_NAME]
