"""``calicoctl ipam show|check|release|configure``."""

from __future__ import annotations

import ipaddress
import json
from collections import Counter
from typing import Any, TextIO

from ipam import IPAM
from ipam.block import InvalidConfig
from testbed.calicoctl.tables import box_table, gfmt, usage_cell


def show(ipam: IPAM, show_blocks: bool, out: TextIO) -> int:
    """The pool (and block) usage table."""
    pools = sorted(ipam.pools(), key=lambda p: (int(p.cidr.network_address), p.cidr.prefixlen))
    blocks = sorted(ipam.blocks(), key=lambda b: int(b.cidr.network_address))
    rows = []
    for pool in pools:
        total = float(pool.cidr.num_addresses)
        inside = [b for b in blocks if b.cidr.subnet_of(pool.cidr)]
        used = float(sum(b.num_allocated() for b in inside))
        rows.append(["IP Pool", str(pool.cidr), gfmt(total), usage_cell(used, total),
                     usage_cell(total - used, total)])
        if show_blocks:
            for b in inside:
                size, n = float(b.size), float(b.num_allocated())
                rows.append(["Block", str(b.cidr), gfmt(size), usage_cell(n, size), usage_cell(size - n, size)])
    out.write(box_table(["GROUPING", "CIDR", "IPS TOTAL", "IPS IN USE", "IPS FREE"], rows))
    return 0


def show_ip(ipam: IPAM, ip_text: str, out: TextIO, err: TextIO) -> int:
    """``ipam show --ip=IP``."""
    try:
        ip = ipaddress.IPv4Address(ip_text)
    except ValueError:
        err.write(f"Failed to execute command: invalid IP address {ip_text!r} given to --ip\n")
        return 1
    info = ipam.ip_info(ip)
    if not info["in_use"]:
        out.write(f"{ip} is not assigned\n")
        return 0
    out.write(f"IP {ip} is in use\n")
    if info["handle_id"]:
        out.write(f"Handle ID: {info['handle_id']}\n")
    if info["attrs"]:
        out.write("Attributes:\n")
        for k in sorted(info["attrs"]):
            out.write(f"  {k}: {info['attrs'][k]}\n")
    else:
        out.write("No attributes defined\n")
    return 0


def show_borrowed(ipam: IPAM, out: TextIO) -> int:
    """``ipam show --show-borrowed``: addresses used by a node other than the block's owner."""
    rows = []
    for b in sorted(ipam.blocks(), key=lambda b: int(b.cidr.network_address)):
        for ip, attr in b.allocated():
            node = attr.secondary.get("node")
            if node and b.host and node != b.host:
                kind = "ipipTunnelAddress" if attr.secondary.get("type") == "ipipTunnelAddress" else "pod"
                who = (f"{attr.secondary.get('namespace')}/{attr.secondary.get('pod')}"
                       if attr.secondary.get("pod") else node)
                rows.append([str(ip), node, str(b.cidr), b.host, kind, who])
    out.write(box_table(["IP", "BORROWING-NODE", "BLOCK", "BLOCK OWNER", "TYPE", "ALLOCATED-TO"], rows))
    return 0


def show_configuration(ipam: IPAM, out: TextIO) -> int:
    """``ipam show --show-configuration``."""
    cfg = ipam.get_config()
    rows = [["StrictAffinity", str(cfg.strict_affinity).lower()],
            ["AutoAllocateBlocks", str(cfg.auto_allocate_blocks).lower()],
            ["MaxBlocksPerHost", str(cfg.max_blocks_per_host)]]
    out.write(box_table(["PROPERTY", "VALUE"], rows))
    return 0


def check(ipam: IPAM, show_all: bool, show_problems: bool, report_path: str | None, out: TextIO) -> int:
    """``ipam check``: the consistency report."""
    w = out.write
    w("Checking IPAM for inconsistencies...\n\n")
    rep = ipam.check()
    blocks = ipam.blocks()
    w("Loading all IPAM blocks...\n")
    w(f"Found {rep.blocks} IPAM blocks.\n")
    for b in sorted(blocks, key=lambda b: int(b.cidr.network_address)):
        w(f" IPAM block {b.cidr} affinity={b.affinity or '<none>'}:\n")
        if show_all:
            for ip, attr in b.allocated():
                w(f"  {ip} handle={attr.handle_id}\n")
    w(f"IPAM blocks record {rep.allocations} allocations.\n\n")
    w("Loading all IPAM pools...\n")
    for p in ipam.pools():
        if not p.disabled:
            w(f"  {p.cidr}\n")
    w(f"Found {rep.pools} active IP pools.\n\n")
    w("Loading all nodes.\n")
    w(f"Found {rep.tunnel_ips} node tunnel IPs.\n\n")
    w("Loading all workload endpoints.\n")
    w(f"Found {rep.workload_ips} workload IPs.\n")
    w(f"Workloads and nodes are using {rep.tunnel_ips + rep.workload_ips} IPs.\n\n")
    per_node = Counter(attr.secondary.get("node") or "<unknown>"
                       for b in blocks for _, attr in b.allocated())
    w("Looking for top (up to 20) nodes by allocations...\n")
    for node, n in per_node.most_common(20):
        w(f"  {node} has {n} allocations\n")
    if per_node:
        counts = sorted(per_node.values())
        w(f"Node with most allocations has {counts[-1]}; median is {counts[len(counts) // 2]}\n")
    w("\nScanning for IPs that are allocated but not actually in use...\n")
    if show_problems or show_all:
        for line in rep.leaked:
            w(f"  {line}\n")
    w(f"Found {len(rep.leaked)} IPs that are allocated in IPAM but not actually in use.\n")
    w("Scanning for IPs that are in use by a workload or node but not allocated in IPAM...\n")
    if show_problems or show_all:
        for line in rep.missing:
            w(f"  {line}\n")
    w(f"Found {len(rep.missing)} in-use IPs that are in active IP pools but have no "
      "corresponding IPAM allocation.\n\n")
    w("Scanning for IPAM handles with no matching IPs...\n")
    for line in rep.bad_handles:
        w(f"  {line}\n")
    w(f"Found {len(rep.bad_handles)} handles with no matching IPs or wrong counts.\n")
    for line in rep.other:
        w(f"  {line}\n")
    w(f"Found {len(rep.other)} inconsistencies in blocks and affinities.\n")
    w(f"Check complete; found {rep.problems} problems.\n")
    if report_path:
        report = {"leaked": rep.leaked, "missing": rep.missing, "badHandles": rep.bad_handles,
                  "other": rep.other, "allocations": {}}
        for line in rep.leaked:
            report["allocations"][line.split()[0]] = line
        with open(report_path, "w") as fh:
            json.dump(report, fh, indent=2)
        w(f"Wrote report to {report_path}\n")
    return 0


def release(ipam: IPAM, ip_text: str | None, reports: list[str], out: TextIO, err: TextIO) -> int:
    """``ipam release --ip=IP`` or ``--from-report=FILE`` (IPs leaked in every report)."""
    if ip_text:
        try:
            ip = ipaddress.IPv4Address(ip_text)
        except ValueError:
            err.write(f"Failed to execute command: invalid IP address {ip_text!r} given to --ip\n")
            return 1
        if ipam.release_ips([ip]):
            err.write(f"Failed to execute command: IP address {ip} is not assigned\n")
            return 1
        out.write(f"Successfully released IP address {ip}\n")
        return 0
    if not reports:
        err.write("Failed to execute command: give --ip=<IP> or --from-report=<FILE>\n")
        return 1
    common: set[str] | None = None
    for path in reports:
        try:
            with open(path) as fh:
                ips = set((json.load(fh).get("allocations") or {}).keys())
        except (OSError, ValueError) as exc:
            err.write(f"Failed to execute command: cannot read report {path}: {exc}\n")
            return 1
        common = ips if common is None else common & ips
    todo = sorted(common or set(), key=lambda s: int(ipaddress.IPv4Address(s)))
    ipam.release_ips(todo)
    out.write(f"Released {len(todo)} IPs successfully\n")
    return 0


def configure(ipam: IPAM, strict: str | None, max_blocks: int | None, out: TextIO, err: TextIO) -> int:
    """``ipam configure --strictaffinity=<true|false> [--max-blocks-per-host=N]``."""
    cfg = ipam.get_config()
    if strict is not None:
        if strict.lower() not in ("true", "false"):
            err.write("Failed to execute command: --strictaffinity must be true or false\n")
            return 1
        cfg.strict_affinity = strict.lower() == "true"
    if max_blocks is not None:
        cfg.max_blocks_per_host = max_blocks
    try:
        ipam.set_config(cfg)
    except InvalidConfig as exc:
        err.write(f"Failed to execute command: {exc}\n")
        return 1
    out.write("Successfully set StrictAffinity to: "
              f"{str(cfg.strict_affinity).lower()}\n")
    return 0


def run(client: Any, args: Any, out: TextIO, err: TextIO) -> int:
    """Dispatch ``calicoctl ipam ...``."""
    ipam = IPAM(client)
    cmd = args.ipam_command
    if cmd == "show":
        if args.ip:
            return show_ip(ipam, args.ip, out, err)
        if args.show_borrowed:
            return show_borrowed(ipam, out)
        if args.show_configuration:
            return show_configuration(ipam, out)
        return show(ipam, args.show_blocks, out)
    if cmd == "check":
        return check(ipam, args.show_all_ips, args.show_problem_ips, args.output, out)
    if cmd == "release":
        return release(ipam, args.ip, args.from_report, out, err)
    if cmd == "configure":
        return configure(ipam, args.strictaffinity, args.max_blocks_per_host, out, err)
    err.write("Failed to execute command: usage: calicoctl ipam (show|check|release|configure) ...\n")
    return 1

