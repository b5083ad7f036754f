"""Felix's iptables driver skips planning a table the kernel was last brought to (no root:
iptables-save/-restore stand-ins record what would run)."""

from __future__ import annotations

import subprocess

import pytest

import agent.felix.iptables as ipt
from agent.felix.calc import Calculator
from agent.felix.model import Endpoint, FelixInput, HostNode, Pool

pytestmark = pytest.mark.unit

NODES = (HostNode("w0", "172.31.9.1/24", "192.168.1.0", "192.168.1.0"),
         HostNode("w1", "172.31.9.2/24", "192.168.2.0", "192.168.2.0"))


EP = Endpoint("ns/p1", "cali00000000001", ("192.168.1.1/32",), ("kns.ns",))


def inp(nodes=NODES) -> FelixInput:
    """Felix's input; the endpoint is the same object each time, as the daemon's cache keeps it."""
    return FelixInput(hostname="w0", endpoints={EP.key: EP}, nodes=nodes,
                      pools=(Pool("192.168.0.0/16", "Always", nat_outgoing=True),))


def test_an_unchanged_table_is_not_planned_again_until_the_kernel_is_read(monkeypatch):
    runs: list[str] = []

    def run(argv, **kw):
        runs.append(argv[0])
        return subprocess.CompletedProcess(argv, 0, "", "")

    monkeypatch.setattr(ipt.subprocess, "run", run)
    planned: list[str] = []
    real_plan = ipt.IptablesTable.plan
    monkeypatch.setattr(ipt.IptablesTable, "plan",
                        lambda self, d, a: planned.append(self.table) or real_plan(self, d, a))
    tables = {n: ipt.IptablesTable(n, backend="nft") for n in ("raw", "mangle", "filter", "nat")}
    for t in tables.values():
        t.read_from("")  # an empty kernel
    calc = Calculator()
    first = calc.calculate(inp())
    ipt.apply_tables(tables, first.tables)
    assert len(planned) == 4 and runs.count("iptables-nft-restore") == 1
    # a node joined: only what depends on it is new; every table object is the same again
    second = calc.calculate(inp(NODES + (HostNode("w2", "172.31.9.3/24", "192.168.3.0"),)))
    assert all(second.tables[n] is first.tables[n] for n in tables)
    planned.clear()
    ipt.apply_tables(tables, second.tables)
    assert planned == [] and runs.count("iptables-nft-restore") == 1
    # once the kernel is read again the table is planned again (the read found it empty: written)
    tables["nat"].read_from("")
    ipt.apply_tables(tables, second.tables)
    assert planned == ["nat"] and runs.count("iptables-nft-restore") == 2  # the kernel read empty
    planned.clear()
    ipt.apply_tables(tables, second.tables)
    assert planned == []
