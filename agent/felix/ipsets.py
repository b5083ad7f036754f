"""ipset driver: Calico's ``cali4*`` sets kept equal to the desired members via ``ipset restore``.

Order as Felix: create/update sets before iptables is applied (rules refer to
them), delete sets no longer wanted after iptables dropped the references.
"""

from __future__ import annotations

import ipaddress
import logging
import subprocess
from functools import lru_cache

from agent.felix.model import IPSet

log = logging.getLogger(__name__)
MAXELEM = 1048576


class IpsetError(RuntimeError):
    """ipset restore failed."""


@lru_cache(maxsize=262144)
def norm_member(member: str) -> str:
    """Canonical member text as ``ipset save`` prints it (a /32 is a bare address;
    ``ip,proto:port`` members of ``hash:ip,port`` sets are kept as they are)."""
    if "," in member:
        ip, _, rest = member.partition(",")
        return f"{ipaddress.ip_address(ip)},{rest}"
    net = ipaddress.ip_network(member, strict=False)
    return str(net.network_address) if net.prefixlen == net.max_prefixlen else str(net)


def parse_save(text: str, prefix: str = "cali4") -> dict[str, tuple[str, set[str]]]:
    """``ipset save`` output -> {name: (type, members)} for sets whose name starts with ``prefix``."""
    sets: dict[str, tuple[str, set[str]]] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[0] == "create" and parts[1].startswith(prefix):
            sets[parts[1]] = (parts[2], set())
        elif len(parts) >= 3 and parts[0] == "add" and parts[1] in sets:
            sets[parts[1]][1].add(parts[2])
    return sets


class IpsetDriver:
    """Keeps the ``cali4*`` ipsets of the current netns in the desired state."""

    def __init__(self) -> None:
        self._actual: dict[str, tuple[str, set[str]]] | None = None
        self._known: dict[str, IPSet] = {}  # set name -> IPSet object known to match the kernel

    def read(self) -> dict[str, tuple[str, set[str]]]:
        """Read Calico's sets from the kernel (and refresh the cache)."""
        res = subprocess.run(["ipset", "save"], capture_output=True, text=True)
        if res.returncode != 0:
            raise IpsetError(f"ipset save failed: {res.stderr.strip()}")
        self._actual = parse_save(res.stdout)
        self._known = {}
        return self._actual

    def _restore(self, lines: list[str]) -> None:
        if not lines:
            return
        res = subprocess.run(["ipset", "restore", "-exist"], input="\n".join(lines) + "\n",
                             capture_output=True, text=True)
        if res.returncode != 0:
            self._actual = None
            self._known = {}
            raise IpsetError(f"ipset restore failed: {res.stderr.strip()}")

    def apply_updates(self, desired: dict[str, IPSet], resync: bool = False) -> int:
        """Create missing sets and add/remove members; returns the number of changed members/sets."""
        if resync or self._actual is None:
            self.read()
        actual = self._actual
        assert actual is not None
        lines: list[str] = []
        changes = 0
        known = self._known
        todo = []
        for name, want in desired.items():
            if known.get(name) is want:
                continue
            todo.append((name, want))
            members = {norm_member(m) for m in want.members}
            have = actual.get(name)
            if have is not None and have[0] != want.type:
                tmp = ("cali4t" + name[6:])[:31]
                lines += [f"create {tmp} {want.type} family inet maxelem {MAXELEM}", f"flush {tmp}"]
                lines += [f"add {tmp} {m}" for m in sorted(members)]
                lines += [f"swap {name} {tmp}", f"destroy {tmp}"]
                changes += 1
            elif have is None:
                lines.append(f"create {name} {want.type} family inet maxelem {MAXELEM}")
                lines += [f"add {name} {m}" for m in sorted(members)]
                changes += 1 + len(members)
            else:
                lines += [f"add {name} {m}" for m in sorted(members - have[1])]
                lines += [f"del {name} {m}" for m in sorted(have[1] - members)]
                changes += len(members ^ have[1])
        self._restore(lines)
        if self._actual is not None:
            for name, want in todo:
                self._actual[name] = (want.type, {norm_member(m) for m in want.members})
                known[name] = want
        return changes

    def remove_stale(self, desired: dict[str, IPSet]) -> list[str]:
        """Destroy ``cali4*`` sets that are not desired (call after iptables stopped using them)."""
        if self._actual is None:
            self.read()
        assert self._actual is not None
        stale = sorted(set(self._actual) - set(desired))
        if stale:
            try:
                self._restore([f"destroy {name}" for name in stale])
            except IpsetError as exc:
                log.warning("could not remove stale ipsets %s: %s", stale, exc)
                return []
            for name in stale:
                self._actual.pop(name, None)
                self._known.pop(name, None)
        return stale
