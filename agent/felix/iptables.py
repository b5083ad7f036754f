"""iptables driver: read the tables, diff by rule hashes, apply with one iptables-restore.

Felix's scheme: every rule Felix writes carries ``-m comment --comment
"cali:<16-char hash>"``, the hash covering the chain name and every earlier
rule of the chain. Comparing hash lists tells which chains changed, so only
those are rewritten (``:chain - [0:0]`` flushes it inside the transaction).
Hooks in kernel chains (INPUT, FORWARD, ...) are recognised by the same
comment: when the cali rules at the top (inserts) or bottom (appends) of a
kernel chain are not exactly the desired ones, all cali rules of that chain
are deleted and the desired ones re-inserted, in the same transaction.

State read from the kernel is cached and trusted until :meth:`IptablesTable.apply`
is called with ``resync=True`` (the refresh timer) or a restore fails.

:func:`apply_tables` does it for all of a node's tables at once: one ``iptables-save``
when a read is due and one ``iptables-restore`` holding every changed table (each its
own ``*table ... COMMIT``), instead of a save and a restore per table: each exec of the
nft backend costs 10-20 ms before it does anything. A failed combined restore falls
back to table-by-table :meth:`IptablesTable.apply` with its retries.
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field

from agent.felix.model import TableState
from agent.felix.names import HASH_COMMENT_PREFIX, rule_hashes

log = logging.getLogger(__name__)

HASH_RE = re.compile(r'--comment "?cali:([A-Za-z0-9_-]{16})"?')
_backend_cache: str | None = None


class IptablesError(RuntimeError):
    """iptables-restore kept failing (Felix fails closed after its retries)."""


def detect_backend() -> str:
    """"nft" or "legacy": the backend the machine's ``iptables`` command uses."""
    global _backend_cache
    if _backend_cache is None:
        out = subprocess.run(["iptables", "--version"], capture_output=True, text=True).stdout
        _backend_cache = "nft" if "nf_tables" in out else "legacy"
    return _backend_cache


def commands(backend: str | None = None) -> tuple[str, str]:
    """(save, restore) executables for ``backend`` (default: detected)."""
    backend = backend or detect_backend()
    save, restore = f"iptables-{backend}-save", f"iptables-{backend}-restore"
    if shutil.which(save) and shutil.which(restore):
        return save, restore
    return "iptables-save", "iptables-restore"


@dataclass
class ActualTable:
    """What iptables-save showed: per chain, the list of (hash or None, rule text after ``-A chain``)."""

    chains: dict[str, list[tuple[str | None, str]]] = field(default_factory=dict)


def split_save(text: str) -> dict[str, str]:
    """``iptables-save`` output of several tables, per table (``*filter`` ... ``COMMIT``)."""
    out: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        if line.startswith("*"):
            current = out.setdefault(line[1:].strip(), [])
        elif current is not None:
            current.append(line)
    return {name: "\n".join(lines) for name, lines in out.items()}


def parse_save(text: str) -> ActualTable:
    """Parse ``iptables-save -t <table>`` output."""
    t = ActualTable()
    for line in text.splitlines():
        if line.startswith(":"):
            t.chains.setdefault(line[1:].split()[0], [])
        elif line.startswith("-A "):
            _, chain, rest = line.split(" ", 2)
            m = HASH_RE.search(rest)
            t.chains.setdefault(chain, []).append((m.group(1) if m else None, rest))
    return t


def _render(chain: str, rules: tuple[str, ...] | list[str], hashes: list[str], op: str = "-A") -> list[str]:
    pos = " 1" if op == "-I" else ""
    return [f'{op} {chain}{pos} -m comment --comment "{HASH_COMMENT_PREFIX}{h}" {r}'
            for h, r in zip(hashes, rules, strict=True)]


class IptablesTable:
    """Keeps one table (filter, nat, ...) in the desired state with minimal rewrites."""

    def __init__(self, table: str, backend: str | None = None, retries: int = 10) -> None:
        self.table = table
        self.save_cmd, self.restore_cmd = commands(backend)
        # The xtables lock (-w) only matters to the legacy backend; nft is transactional.
        legacy = (backend or detect_backend()) == "legacy"
        self._restore_argv = [self.restore_cmd, "--noflush"] + (["-w", "10"] if legacy else [])
        self.retries = retries
        self._actual: ActualTable | None = None
        self._known: dict[str, object] = {}  # chain name -> Chain object known to match the kernel
        # the TableState the kernel was last brought to (written, or found to match) since the
        # last read: the same object again needs no plan (Felix's calc hands out one object per
        # unchanged table)
        self._applied: TableState | None = None
        self.last_written: list[str] = []  # chains written by the last apply (for tests/benchmarks)

    def read(self) -> ActualTable:
        """Read the table from the kernel (and refresh the cache)."""
        res = subprocess.run([self.save_cmd, "-t", self.table], capture_output=True, text=True)
        if res.returncode != 0:
            raise IptablesError(f"{self.save_cmd} -t {self.table} failed: {res.stderr.strip()}")
        return self.read_from(res.stdout)

    def read_from(self, save_text: str) -> ActualTable:
        """Take ``save_text`` (this table's part of ``iptables-save``) as the kernel's state."""
        self._actual = parse_save(save_text)
        self._known = {}
        self._applied = None
        return self._actual

    def _plan(self, desired: TableState) -> tuple[list[str], list[str]]:
        """:meth:`plan` against the cache, skipped when ``desired`` is what was applied last."""
        if desired is self._applied:
            return [], []
        assert self._actual is not None
        lines, written = self.plan(desired, self._actual)
        if not lines:
            self._applied = desired
        return lines, written

    def plan(self, desired: TableState, actual: ActualTable) -> tuple[list[str], list[str]]:
        """(restore lines, names of chains rewritten) turning ``actual`` into ``desired``."""
        decls, deletes, adds, inserts, drops = [], [], [], [], []
        written = []
        known = self._known
        for name, chain in desired.chains.items():
            if known.get(name) is chain:
                continue
            hashes = rule_hashes(name, chain.rules)
            have = actual.chains.get(name)
            if have is not None and [h for h, _ in have] == hashes:
                known[name] = chain
                continue
            decls.append(f":{name} - [0:0]")
            adds += _render(name, chain.rules, hashes)
            written.append(name)
        for kchain in sorted(set(desired.inserts) | set(desired.appends) | _hooked(actual)):
            ins = desired.inserts.get(kchain, ())
            app = desired.appends.get(kchain, ())
            ins_h = rule_hashes(kchain, list(ins))
            app_h = rule_hashes(kchain + "*appends*", list(app))
            have = actual.chains.get(kchain, [])
            cali = [r for h, r in have if h is not None]
            top = [h for h, _ in have[:len(ins)]]
            bottom = [h for h, _ in have[len(have) - len(app):]] if app else []
            if top == ins_h and bottom == app_h and len(cali) == len(ins) + len(app):
                continue
            deletes += [f"-D {kchain} {r}" for r in cali]
            inserts += _render(kchain, list(reversed(ins)), list(reversed(ins_h)), op="-I")
            inserts += _render(kchain, app, app_h)
            written.append(kchain)
        for name in sorted(actual.chains):
            if name.startswith("cali-") and name not in desired.chains:
                decls.append(f":{name} - [0:0]")
                drops.append(f"-X {name}")
                written.append(name)
        if not written:
            return [], []
        return [f"*{self.table}", *decls, *deletes, *adds, *inserts, *drops, "COMMIT", ""], written

    def apply(self, desired: TableState, resync: bool = False) -> list[str]:
        """Bring the table to ``desired``; returns the chains written (empty when nothing changed)."""
        delay = 0.001
        last_err = ""
        for attempt in range(self.retries + 1):
            if resync or self._actual is None or attempt > 0:
                self.read()
            lines, written = self._plan(desired)
            if not lines:
                self.last_written = []
                return []
            res = subprocess.run(self._restore_argv, input="\n".join(lines), capture_output=True, text=True)
            if res.returncode == 0:
                self._after_write(desired, written)
                self.last_written = written
                return written
            last_err = res.stderr.strip()
            self._known = {}
            self._applied = None
            log.warning("iptables-restore (%s) failed (attempt %d): %s", self.table, attempt + 1, last_err)
            self._actual = None
            time.sleep(delay)
            delay *= 2
        raise IptablesError(f"iptables-restore for table {self.table} failed {self.retries + 1} times: {last_err}")

    def _after_write(self, desired: TableState, written: list[str]) -> None:
        """Update the cache as if the kernel now holds exactly what we wrote."""
        act = self._actual
        assert act is not None
        self._applied = desired
        for name in written:
            if name in desired.chains:
                rules = desired.chains[name].rules
                act.chains[name] = [(h, r) for h, r in zip(rule_hashes(name, rules), rules, strict=True)]
                self._known[name] = desired.chains[name]
            elif not name.startswith("cali-"):
                # Kernel chain: its other rules stay; cali ones replaced by inserts (top) and appends (end).
                ins = desired.inserts.get(name, ())
                app = desired.appends.get(name, ())
                others = [(h, r) for h, r in act.chains.get(name, []) if h is None]
                act.chains[name] = (_cached(rule_hashes(name, list(ins)), ins) + others
                                    + _cached(rule_hashes(name + "*appends*", list(app)), app))
            else:
                act.chains.pop(name, None)
                self._known.pop(name, None)


def _hooked(actual: ActualTable) -> set[str]:
    """Non-cali chains that hold cali-hashed rules (hooks to clean up even if no longer desired)."""
    return {name for name, rules in actual.chains.items()
            if not name.startswith("cali-") and any(h is not None for h, _ in rules)}


def _cached(hashes: list[str], rules: tuple[str, ...]) -> list[tuple[str | None, str]]:
    """Cache entries for rules we wrote: the rule text as ``-D`` needs it (with its hash comment)."""
    return [(h, f'-m comment --comment "{HASH_COMMENT_PREFIX}{h}" {r}') for h, r in zip(hashes, rules, strict=True)]


def apply_tables(tables: dict[str, IptablesTable], desired: dict[str, TableState], resync: bool = False) -> None:
    """Bring every table of ``tables`` to ``desired[name]``: one save if a read is due, one restore.

    Falls back to :meth:`IptablesTable.apply` table by table (re-reading each, with its
    retries) when the combined save or restore fails; IptablesError if that fails too.
    """
    first = next(iter(tables.values()))
    due = [t for t in tables.values() if resync or t._actual is None]
    if due:
        res = subprocess.run([first.save_cmd], capture_output=True, text=True)
        if res.returncode != 0:
            log.warning("%s failed: %s; reading table by table", first.save_cmd, res.stderr.strip())
            for t in due:
                t.read()
        else:
            parts = split_save(res.stdout)
            for t in due:
                t.read_from(parts.get(t.table, ""))
    plans = {name: t._plan(desired[name]) for name, t in tables.items()}
    lines = [line for plan, _ in plans.values() for line in plan]
    if not lines:
        for t in tables.values():
            t.last_written = []
        return
    res = subprocess.run(first._restore_argv, input="\n".join(lines), capture_output=True, text=True)
    if res.returncode == 0:
        for name, t in tables.items():
            written = plans[name][1]
            if written:
                t._after_write(desired[name], written)
            t.last_written = written
        return
    log.warning("iptables-restore of tables %s failed: %s; applying table by table",
                ", ".join(n for n, (plan, _) in plans.items() if plan), res.stderr.strip())
    for name, t in tables.items():
        t._actual, t._known, t._applied = None, {}, None
        t.apply(desired[name])
