"""``calicoctl ipam show|check|release|configure``."""

from __future__ import annotations

import ipaddress
import json
from collections import Counter
from typing import Any, TextIO

from datastore.resources import cidr_name
from ipam import IPAM
from ipam.block import BadSequenceNumber, InvalidConfig
from testbed.calicoctl.resources import InputError
from testbed.calicoctl.tables import box_table, gfmt, usage_cell


def show(ipam: IPAM, show_blocks: bool, out: TextIO) -> int:
    """The pool (and block) usage table. Rows come in the order v3.28.1's ``GetUtilization``
    lists them: pools in the datastore's list order (by name), each followed by its blocks in
    list order, which is by object name (``192-168-133-0-24`` before ``192-168-9-0-24``, in
    both datastores: the etcd key ``192.168.133.0-24`` sorts the same way)."""
    pools = sorted(ipam.pools(), key=lambda p: p.name)
    blocks = sorted(ipam.blocks(), key=lambda b: cidr_name(str(b.cidr)))
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
    orphans = [b for b in blocks if not any(b.cidr.subnet_of(p.cidr) for p in pools)]
    if show_blocks:  # blocks whose pool was deleted: block rows without an IP Pool row
        for b in orphans:
            size, n = float(b.size), float(b.num_allocated())
            rows.append(["Block", str(b.cidr), gfmt(size), usage_cell(n, size), usage_cell(size - n, size)])
    out.write(box_table(["GROUPING", "CIDR", "IPS TOTAL", "IPS IN USE", "IPS FREE"], rows))
    return 0


def show_ip(ipam: IPAM, ip_text: str, out: TextIO, err: TextIO) -> int:
    """``ipam show --ip=IP``, as calicoctl v3.28.1 prints it (calico.md section 13)."""
    try:
        ip = ipaddress.IPv4Address(ip_text)
    except ValueError:
        err.write(f"Failed to execute command: invalid IP address {ip_text!r} given to --ip\n")
        return 1
    info = ipam.ip_info(ip)
    if not info["in_use"]:
        out.write(f"{ip} is not assigned\n")
        return 0
    # v3.28.1's ipam/show.go: no Handle ID line (v3.32+ prints one); attributes sorted
    # (calicoctl iterates a Go map, so its order varies from run to run)
    out.write(f"IP {ip} is in use\n")
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
                sec = attr.secondary
                if sec.get("pod"):
                    kind, who = "pod", f"{sec.get('namespace', '')}/{sec['pod']}"
                else:
                    kind, who = sec.get("type", ""), ""
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


def _cluster_info(client: Any) -> tuple[str, str, str, bool | None]:
    """(clusterGUID, clusterType, resourceVersion, datastoreReady) of ClusterInformation default."""
    from datastore import errors

    try:
        ci = client.get("ClusterInformation", "default")
    except errors.NotFound:
        return "", "", "", None
    spec = ci.to_dict().get("spec") or {}
    return (spec.get("clusterGUID", ""), spec.get("clusterType", ""), ci.metadata.resource_version or "",
            spec.get("datastoreReady"))


def check(ipam: IPAM, client: Any, show_all: bool, show_problems: bool, report_path: str | None,
          out: TextIO) -> int:
    """``ipam check``: the consistency report, worded as calicoctl prints it."""
    from testbed.calicoctl.version import VERSION

    show_problems = show_problems or show_all
    w = out.write
    w("Checking IPAM for inconsistencies...\n\n")
    guid, ctype, ci_rev, ready = _cluster_info(client)
    rep = ipam.check()
    w("Loading all IPAM blocks...\n")
    w(f"Found {len(rep.blocks)} IPAM blocks.\n")
    by_block: dict[Any, list[Any]] = {}
    for recs in rep.allocations.values():
        for r in recs:
            by_block.setdefault(r.block, []).append(r)
    for cidr, affinity in rep.blocks:
        w(f" IPAM block {cidr} affinity={affinity or '<none>'}:\n")
        if show_all:
            for r in sorted(by_block.get(cidr, []), key=lambda r: int(r.ip)):
                w(f"  {r.ip} allocated; attrs {r.attr_string()}\n")
    w(f"IPAM blocks record {rep.num_allocations} allocations.\n\n")
    w("Loading all IPAM pools...\n")
    for p in rep.active_pools:
        w(f"  {p}\n")
    w(f"Found {len(rep.active_pools)} active IP pools.\n\n")
    w("Loading all nodes.\n")
    w(f"Found {rep.tunnel_ips} node tunnel IPs.\n\n")
    w("Loading all workload endpoints.\n")
    w(f"Found {rep.workload_ips} workload IPs.\n")
    w(f"Workloads and nodes are using {len(rep.in_use)} IPs.\n\n")
    w("Loading all handles\n")
    per_node = Counter(r.node for recs in rep.allocations.values() for r in recs)
    w("Looking for top (up to 20) nodes by allocations...\n")
    ranked = per_node.most_common()
    for node, n in ranked[:20]:
        w(f"  {node} has {n} allocations\n")
    if ranked:
        w(f"Node with most allocations has {ranked[0][1]}; median is {ranked[len(ranked) // 2][1]}\n")
    w("\n")
    w("Scanning for IPs that are allocated but not actually in use...\n")
    if show_problems:
        for ip in rep.leaked_ips:
            for r in rep.allocations[ip]:
                w(f"  {ip} leaked; attrs {r.attr_string()}\n")
    w(f"Found {len(rep.leaked_ips)} IPs that are allocated in IPAM but not actually in use.\n")
    w("Scanning for IPs that are in use by a workload or node but not allocated in IPAM...\n")
    if show_problems:
        for ip, owners in sorted(rep.in_use.items()):
            if len(owners) > 1:
                w(f"  {ip} has multiple owners.\n")
        for ip in rep.outside_pools:
            for o in rep.in_use[ip]:
                w(f"  {ip} in use by {o} is not in any active IP pool.\n")
        for ip in rep.not_allocated:
            for o in rep.in_use[ip]:
                w(f"  {ip} in use by {o} and in active IPAM pool but has no IPAM allocation.\n")
    w(f"Found {len(rep.outside_pools)} in-use IPs that are not in active IP pools.\n")
    w(f"Found {len(rep.not_allocated)} in-use IPs that are in active IP pools but have no "
      "corresponding IPAM allocation.\n\n")
    w("Scanning for IPAM handles with no matching IPs...\n")
    if show_all:
        for h, _ in rep.leaked_handles:
            w(f"  {h} doesn't have any active IPs.\n")
    w(f"Found {len(rep.leaked_handles)} handles with no matching IPs (and {rep.good_handles} "
      "handles with matches).\n")
    w("Scanning for IPs with missing handle...\n")
    if show_problems:
        for h in rep.missing_handles:
            w(f"  {h} is in use in a block but doesn't exist.\n")
    w(f"Found {len(rep.missing_handles)} handles mentioned in blocks with no matching handle resource.\n")
    for line in rep.handle_mismatches + rep.other:
        w(f"  {line}\n")
    w(f"Found {len(rep.handle_mismatches) + len(rep.other)} inconsistencies in handle counts, "
      "blocks and affinities.\n")
    w(f"Check complete; found {rep.problems} problems.\n")
    if report_path:
        doc = rep.to_report(VERSION, guid, ctype, ci_rev, ready is False)
        try:
            with open(report_path, "w") as fh:
                json.dump(doc, fh, indent=2)
        except OSError as exc:
            raise InputError(f"cannot write report {report_path}: {exc.strerror}") from None
    return 0


def release(ipam: IPAM, client: Any, ip_text: str | None, reports: list[str], force: bool,
            out: TextIO, err: TextIO) -> int:
    """``ipam release --ip=IP`` or ``--from-report=FILE...`` (leaked IPs common to every report,
    released with their handles and sequence numbers so a reused address is never freed)."""
    if reports:
        return _release_from_reports(ipam, client, reports, force, out, err)
    if not ip_text:
        err.write("Failed to execute command: give --ip=<IP> or --from-report=<REPORT>\n")
        return 1
    try:
        ip = ipaddress.IPv4Address(ip_text)
    except ValueError:
        err.write(f"Failed to execute command: invalid IP address {ip_text!r} given to --ip\n")
        return 1
    if ipam.release_ips([ip]):
        err.write(f"IP address {ip} is not assigned\n")
        return 1
    out.write(f"Successfully released IP address {ip}\n")
    return 0


def _release_from_reports(ipam: IPAM, client: Any, paths: list[str], force: bool, out: TextIO,
                          err: TextIO) -> int:
    from testbed.calicoctl.version import VERSION

    guid, _ctype, ci_rev, ready = _cluster_info(client)
    docs = []
    for path in paths:
        try:
            with open(path) as fh:
                doc = json.load(fh)
        except (OSError, ValueError) as exc:
            err.write(f"Failed to execute command: cannot read report {path}: {exc}\n")
            return 1
        if not isinstance(doc, dict) or not isinstance(doc.get("allocations"), dict):
            err.write(f"Failed to execute command: {path} is not an 'ipam check' report\n")
            return 1
        if doc.get("clusterGUID", "") != guid:
            err.write(f"cluster does not match the provided report ({path}): mismatched cluster GUID. "
                      "Refusing to release\n")
            return 1
        if doc.get("version") != VERSION:
            if not force:
                err.write(f"the provided report ({path}) was produced using a different version "
                          f"({doc.get('version')}) of calicoctl. Refusing to release\n")
                return 1
            out.write("WARNING: Report was produced using a different version of calicoctl. "
                      "Ignoring due to --force option\n")
        docs.append(doc)
    if not any(d.get("clusterInformationRevision", "") == ci_rev for d in docs):
        err.write("the provided reports are all stale - at least one should be up-to-date. Please generate "
                  "a new report while the data store is locked and try again\n")
        return 1
    if ready is None or ready:
        if not force:
            err.write("data store is not locked. Either lock the data store, or re-run with --force\n")
            return 1
        out.write("WARNING: Data store is not locked. Ignoring due to --force option\n")
    leaked: dict[str, dict[str, Any]] | None = None
    for doc in docs:
        here = {ip: a for ip, recs in doc["allocations"].items() for a in recs if not a.get("inUse")}
        leaked = here if leaked is None else {ip: a for ip, a in here.items() if ip in leaked}
    leaked = leaked or {}
    if leaked:
        out.write(f"Releasing {len(leaked)} old IPs...\n")
        ips = [ipaddress.IPv4Address(ip) for ip in leaked]
        seqs = {ipaddress.IPv4Address(ip): int(a["sequenceNumber"]) for ip, a in leaked.items()
                if a.get("sequenceNumber") is not None}
        released = 0
        stale = 0
        for ip in ips:
            try:
                if ipam.release_ips([ip], {ip: seqs[ip]} if ip in seqs else None):
                    stale += 1
                else:
                    released += 1
            except BadSequenceNumber:
                stale += 1
        out.write(f"Released {released} IPs successfully\n")
        if stale:
            out.write(f"{stale} addresses marked as leaked in the report had already been cleaned up.\n")
    else:
        out.write("Report didn't contain any leaked IPs to clean up.\n")
    out.write("Report didn't contain any handles to clean up.\n" if not docs[-1].get("leakedHandles")
              else _release_handles(ipam, docs))
    out.write("You may now unlock the data store.\n")
    return 0


def _release_handles(ipam: IPAM, docs: list[dict[str, Any]]) -> str:
    """Delete handles leaked in every report and unchanged since (CAS on their revision)."""
    from datastore import errors

    common: dict[str, str] | None = None
    for doc in docs:
        here = {h["ID"]: h["Revision"] for h in doc.get("leakedHandles") or []}
        common = here if common is None else {k: v for k, v in here.items() if common.get(k) == v}
    done = skipped = 0
    for hid, rev in (common or {}).items():
        try:
            ipam.store.delete_handle(hid, int(rev))
            done += 1
        except (errors.Conflict, errors.NotFound):
            skipped += 1
    return (f"Deleting {done + skipped} handles...\n"
            f"Released {done} handles; {skipped} skipped; 0 errors.\n")


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
        return check(ipam, client, args.show_all_ips, args.show_problem_ips, args.output, out)
    if cmd == "release":
        return release(ipam, client, args.ip, args.from_report, args.force, out, err)
    if cmd == "configure":
        return configure(ipam, args.strictaffinity, args.max_blocks_per_host, out, err)
    err.write("Failed to execute command: usage: calicoctl ipam (show|check|release|configure) ...\n")
    return 1

