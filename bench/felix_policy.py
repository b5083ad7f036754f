"""How fast Felix programs policy: from empty, after a label change, after a new policy.

Scenario (deterministic): 1,000 local workload endpoints, each with 20 labels
(``l0``..``l19``, 50 values each), in namespace ``bench`` (profile ``kns.bench``);
500 Calico NetworkPolicies, each selecting the endpoints with one label value
(about 2% of them) and allowing ingress from, and egress to, another label value
(TCP 80, 8080-8090), so each endpoint has about 10 policies per direction.

Measured in one run, inside a throwaway netns (never the root namespace):

* ``from empty``: Felix's calculation plus its ipset and iptables drivers (raw,
  mangle, filter, nat) from an empty dataplane, against the *floor*: one
  ``ipset restore`` plus one ``iptables-restore`` of the identical ruleset (the same
  sets and rules, hash comments included, that Felix wrote). Target: ratio <= 2.
* ``label change``: a running Felix watching a real etcd; from writing a
  WorkloadEndpoint with changed labels to the change being in the kernel:
  (a) a remote endpoint entering a rule's ipset (members only), (b) a local endpoint
  whose labels change the policies that apply to it (its chains rewritten).
  Target: p50 <= 100 ms.
* ``new policy``: from writing a NetworkPolicy to its chains and ipsets being in
  the kernel (and deleting it again). Target: p50 <= 200 ms.

Prints a table (with the load average before and after) and writes JSON (default
reports/bench/felix_policy.json). Run as root, under the shared lock:
``flock /work/wt/heavy.lock .venv/bin/python bench/felix_policy.py [--repeat 5]``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import tempfile
import time

import benchlib
from benchlib import REPO, TABLES, iface, ip_of, restore_texts

N_EP, N_POL, N_LABELS, N_VALUES = 1000, 500, 20, 50
NODE, REMOTE = "bench", "bench-remote"


def labels_of(i: int, seed: int = 7) -> dict[str, str]:
    rnd = random.Random(seed * 100003 + i)
    out = {f"l{k}": f"v{rnd.randrange(N_VALUES)}" for k in range(N_LABELS)}
    out["projectcalico.org/namespace"] = "bench"
    out["projectcalico.org/orchestrator"] = "k8s"
    return out


def policy_doc(j: int, seed: int = 7) -> dict:
    """NetworkPolicy ``p<j>``: select l<a> == v<x>; allow in from l<b> == v<y>, out to l<c> == v<z>."""
    rnd = random.Random(seed * 7919 + j)
    a, b, c = (rnd.randrange(N_LABELS) for _ in range(3))
    x, y, z = (rnd.randrange(N_VALUES) for _ in range(3))
    ports = [80, "8080:8090"]
    return {"apiVersion": "projectcalico.org/v3", "kind": "NetworkPolicy",
            "metadata": {"name": f"p{j}", "namespace": "bench"},
            "spec": {"order": j % 10, "selector": f"l{a} == 'v{x}'", "types": ["Ingress", "Egress"],
                     "ingress": [{"action": "Allow", "protocol": "TCP", "source": {"selector": f"l{b} == 'v{y}'"},
                                  "destination": {"ports": ports}}],
                     "egress": [{"action": "Allow", "protocol": "TCP",
                                 "destination": {"selector": f"l{c} == 'v{z}'", "ports": ports}}]}}


def wep(i: int, node: str = NODE, labels: dict[str, str] | None = None):
    from datastore.resources import Metadata, WorkloadEndpoint

    w = WorkloadEndpoint(metadata=Metadata(name=f"{node}-k8s-p{i}-eth0", namespace="bench",
                                           labels=labels or labels_of(i)))
    w.spec.orchestrator, w.spec.node, w.spec.pod, w.spec.endpoint = "k8s", node, f"p{i}", "eth0"
    w.spec.ip_networks = [f"{ip_of(i)}/32"]
    w.spec.profiles = ["kns.bench"]
    w.spec.interface_name = iface(i)
    return w


def felix_input():
    """The scenario as Felix's input, converted by Felix's own converters."""
    from agent.felix import convert
    from agent.felix.model import FelixInput, FelixSettings, HostNode, Pool
    from datastore.conversion import namespace_to_profile
    from datastore.resources import from_document

    eps = {}
    for i in range(N_EP):
        ep = convert.endpoint_from_wep(wep(i))
        eps[ep.key] = ep
    pols = {}
    for j in range(N_POL):
        obj = from_document(policy_doc(j))
        obj.apply_defaults()
        pols[convert.policy_key("NetworkPolicy", obj.metadata.name, "bench")] = convert.policy_from(obj)
    prof = convert.profile_from(namespace_to_profile({"metadata": {"name": "bench"}}))
    return FelixInput(hostname=NODE, endpoints=eps, nodes=(HostNode(NODE, "172.31.50.1/24", None),),
                      pools=(Pool("10.64.0.0/16", "Never", nat_outgoing=True),), settings=FelixSettings(),
                      policies=pols, profiles={prof.name: prof})


def flush_dataplane() -> None:
    """Drop the chains of every table and every ipset Felix programmed."""
    benchlib.flush_dataplane(TABLES)


def from_empty(repeat: int) -> dict[str, list[float]]:
    from agent.felix.calc import Calculator
    from agent.felix.ipsets import IpsetDriver
    from agent.felix.iptables import IptablesTable

    inp = felix_input()
    desired = Calculator().calculate(inp)
    ipt_text, set_text = restore_texts(desired)
    rules = ipt_text.count("\n-A ") + ipt_text.count("\n-I ")
    out: dict[str, list[float]] = {"felix from empty": [], "floor: ipset restore + iptables-restore": [],
                                   "felix: calculation only": []}
    for _ in range(repeat):
        flush_dataplane()
        out["floor: ipset restore + iptables-restore"].append(benchlib.raw_restore(ipt_text, set_text))
        flush_dataplane()
        t0 = time.perf_counter()
        d = Calculator().calculate(inp)
        t1 = time.perf_counter()
        ips = IpsetDriver()
        ips.apply_updates(d.ipsets)
        for table in TABLES:
            IptablesTable(table).apply(d.tables[table])
        ips.remove_stale(d.ipsets)
        out["felix from empty"].append(time.perf_counter() - t0)
        out["felix: calculation only"].append(t1 - t0)
    save = subprocess.run(["iptables-save", "-t", "filter"], capture_output=True, text=True).stdout
    if save.count("\n-A ") < 0.9 * desired.tables["filter"].chains.__len__():
        raise SystemExit("Felix's ruleset is not in the kernel")
    out["_size"] = [float(rules), float(len(desired.ipsets)),
                    float(sum(len(s.members) for s in desired.ipsets.values()))]
    return out


def wait_applied(felix, check, what: str, timeout: float = 10.0) -> None:
    deadline = time.perf_counter() + timeout
    while not (felix.desired is not None and check(felix.desired)):
        felix.applied_event.wait(0.005)
        felix.applied_event.clear()
        if time.perf_counter() > deadline:
            raise SystemExit(f"{what}: not programmed within {timeout:.0f} s ({felix.status()})")


def end_to_end(repeat: int) -> dict[str, list[float]]:
    from agent.felix import convert
    from agent.felix.daemon import Felix
    from datastore import Client
    from datastore.conversion import namespace_to_profile
    from datastore.resources import IPPool, Metadata, Node, NodeBGPSpec, from_document

    flush_dataplane()
    # the endpoints' interfaces exist (veths, as a node's cali interfaces are): Felix programs their
    # routes and sysctls once, instead of retrying missing interfaces every 250 ms
    batch = "".join(f"link add {iface(i)} type veth peer name bp{i}\nlink set {iface(i)} up\n"
                    for i in range(N_EP))
    subprocess.run(["ip", "-batch", "-"], input=batch, text=True, check=True)
    data = tempfile.mkdtemp(prefix="bench-etcd-")
    etcd, url = benchlib.start_etcd(data, 23890, quota_bytes=4 << 30)
    res: dict[str, list[float]] = {}
    try:
        client = Client([url])
        client.create(IPPool(metadata=Metadata(name="p"), spec=IPPool.Spec(cidr="10.64.0.0/16", block_size=26,
                                                                             ipip_mode="Never", nat_outgoing=True)))
        for name, addr in ((NODE, "172.31.50.1/24"), (REMOTE, "172.31.50.2/24")):
            node = Node(metadata=Metadata(name=name))
            node.spec.bgp = NodeBGPSpec(ipv4_address=addr)
            client.create(node)
        client.create(namespace_to_profile({"metadata": {"name": "bench"}}))
        for i in range(N_EP):
            client.create(wep(i))
        remote = N_EP  # one endpoint on another node, for ipset-only changes
        client.create(wep(remote, node=REMOTE, labels={"projectcalico.org/namespace": "bench"}))
        for j in range(N_POL):
            obj = from_document(policy_doc(j))
            client.create(obj)
        felix = Felix(client, NODE, env={}, var_lib=tempfile.mkdtemp())
        felix.host_ips_fn = lambda prefix: frozenset({"172.31.50.1"})
        t0 = time.perf_counter()
        felix.start()
        if not felix.wait_ready(120):
            raise SystemExit(f"felix not ready: {felix.status()}")
        res["end-to-end: running Felix from empty (etcd snapshot -> programmed)"] = [time.perf_counter() - t0]

        # (a) a remote endpoint enters (and leaves) the ipset of a policy's ingress rule
        # the first policy that applies to some local endpoint (its rule's ipset is programmed);
        # the set's name from Felix's parsed rule (a namespaced policy's selector is scoped to it)
        from agent.felix.names import ipset_name
        from agent.felix.policy import parse_rule
        from datastore.selector import parse_selector

        pols = felix_input().policies
        j = next(j for j in range(N_POL) if any(parse_selector(policy_doc(j)["spec"]["selector"]).matches(labels_of(i))
                                                for i in range(N_EP)))
        pol = pols[convert.policy_key("NetworkPolicy", f"p{j}", "bench")]
        set_name = ipset_name(parse_rule(pol.inbound[0])[0].src_ipset_ids[0])
        src = policy_doc(j)["spec"]["ingress"][0]["source"]["selector"]
        key, val = src.split(" == ")[0], src.split(" == ")[1].strip("'")
        member = f"{ip_of(remote)}/32"
        times = []
        for k in range(repeat * 2):
            on = k % 2 == 0
            labels = {"projectcalico.org/namespace": "bench", **({key: val} if on else {})}
            t0 = time.perf_counter()
            client.update(wep(remote, node=REMOTE, labels=labels))
            wait_applied(felix, lambda d, on=on: set_name in d.ipsets and (member in d.ipsets[set_name].members) == on,
                         "remote label change")
            if on:
                times.append(time.perf_counter() - t0)
                test = subprocess.run(["ipset", "test", set_name, ip_of(remote)], capture_output=True, text=True)
                if test.returncode != 0:
                    raise SystemExit(f"{ip_of(remote)} not in {set_name} in the kernel: {test.stderr}")
        res["label change: remote endpoint into a rule's ipset"] = times

        # (b) a local endpoint's labels change the policies that apply to it; where its time goes
        phases: dict[str, float] = {}
        starts: list[float] = []

        apply_fn = felix.apply

        def apply_logged(*a, **kw):
            starts.append(time.perf_counter())
            return apply_fn(*a, **kw)
        felix.apply = apply_logged
        benchlib.time_phases(felix, phases, {"calculate": "calculation", "ipsets": "ipset driver",
                                             "routes": "routes and sysctls", "sysctls": "routes and sysctls",
                                             "iptables": "iptables driver (iptables-restore)"})
        breakdown: dict[str, list[float]] = {}
        i = 3
        ep_key = f"bench/{NODE}-k8s-p{i}-eth0"
        times = []
        for k in range(repeat * 2):
            labels = labels_of(i) if k % 2 else labels_of(i, seed=11)
            want = {p.id for p in pols.values() if parse_selector(p.selector).matches(labels)}
            phases.clear()
            starts.clear()
            t0 = time.perf_counter()
            client.update(wep(i, labels=labels))

            def programmed(d, want=want) -> bool:
                chains = felix.calc.endpoint_chains(ep_key)
                return (chains is not None and set(felix.calc.policies_of(ep_key)[0]) == want
                        and d.tables["filter"].chains.get(chains[0].name) is chains[0])
            wait_applied(felix, programmed, "local label change")
            times.append(time.perf_counter() - t0)
            if starts:
                breakdown.setdefault("  of which: write to etcd, watch, until Felix's apply starts", []).append(
                    starts[0] - t0)
            for name, secs in phases.items():
                breakdown.setdefault(f"  of which: {name}", []).append(secs)
        res["label change: local endpoint, its policies change"] = times
        res.update(breakdown)
        felix.apply = apply_fn
        check = subprocess.run(["ipset", "save"], capture_output=True, text=True).stdout

        # new policy: selects ~2% of the endpoints, with new rule selectors
        times = []
        fresh = (j for j in range(10000, 20000)
                 if any(parse_selector(policy_doc(j)["spec"]["selector"]).matches(labels_of(i)) for i in range(N_EP)))
        for k in range(repeat):
            doc = policy_doc(next(fresh))
            doc["metadata"]["name"] = f"new{k}"
            obj = from_document(doc)
            chain_id = f"bench/default.new{k}"
            t0 = time.perf_counter()
            client.create(obj)
            wait_applied(felix, lambda d, cid=chain_id: any(
                r.endswith(f"Policy {cid} ingress\"") or f"Policy {cid} ingress" in r
                for ch in d.tables["filter"].chains.values() for r in ch.rules[:1]), "new policy")
            times.append(time.perf_counter() - t0)
            client.delete("NetworkPolicy", f"new{k}", "bench")
            wait_applied(felix, lambda d, cid=chain_id: not any(
                f"Policy {cid} ingress" in r for ch in d.tables["filter"].chains.values() for r in ch.rules[:1]),
                "policy deleted")
        res["new policy enforced"] = times
        rules = subprocess.run(["iptables-save", "-t", "filter"], capture_output=True, text=True).stdout
        if "cali-pi-" not in rules or "cali40s:" not in check:
            raise SystemExit("policy chains or selector ipsets missing from the kernel")
        felix.stop()
        return res
    finally:
        etcd.terminate()
        etcd.wait(10)
        subprocess.run(["rm", "-rf", data])


def inside(repeat: int) -> dict:
    out = from_empty(repeat)
    out.update(end_to_end(repeat))
    return out


def main() -> int:
    global N_EP, N_POL
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--json", default=os.path.join(REPO, "reports", "bench", "felix_policy.json"))
    ap.add_argument("--endpoints", type=int, default=N_EP, help="smaller for a smoke run (targets are for 1000)")
    ap.add_argument("--policies", type=int, default=N_POL, help="smaller for a smoke run (targets are for 500)")
    ap.add_argument("--inside", metavar="OUT", help=argparse.SUPPRESS)
    args = ap.parse_args()
    N_EP, N_POL = args.endpoints, args.policies
    if args.inside:
        res = inside(args.repeat)
        with open(args.inside, "w") as f:
            json.dump(res, f)
        return 0
    res, load_before, load_after = benchlib.run_inside_netns(
        __file__, ["--repeat", str(args.repeat), "--endpoints", str(N_EP), "--policies", str(N_POL)], "fpbench")
    size = res.pop("_size")
    felix, floor = statistics.median(res["felix from empty"]), statistics.median(
        res["floor: ipset restore + iptables-restore"])
    targets = {"label change: remote endpoint into a rule's ipset": 0.100,
               "label change: local endpoint, its policies change": 0.100, "new policy enforced": 0.200}
    print(f"scenario: {N_EP} endpoints x {N_LABELS} labels, {N_POL} policies -> {int(size[0])} iptables rules, "
          f"{int(size[1])} ipsets ({int(size[2])} members); load average {load_before[0]:.1f} before, "
          f"{load_after[0]:.1f} after; {os.cpu_count()} CPUs")

    def target_of(name: str, med: float) -> tuple[str, dict]:
        tgt = targets.get(name)
        target = f"{tgt * 1000:.0f} ms" if tgt else ("ratio <= 2" if name == "felix from empty" else "-")
        ok = (med <= tgt) if tgt else ((felix / floor <= 2) if name == "felix from empty" else None)
        return target, {"target": target, "meets_target": ok}

    rows = benchlib.print_median_table(res, 70, "p50 ms", target_of)
    print(f"{'ratio felix from empty / floor (same run)':<70} {felix / floor:>9.2f} {'':>9} {'':>9} "
          f"{'<= 2':>12}")
    benchlib.write_json(args.json, {
        "benchmark": "felix_policy", "cpus": os.cpu_count(), "repeat": args.repeat,
        "load_average": {"before": load_before, "after": load_after},
        "scenario": {"endpoints": N_EP, "policies": N_POL, "labels": N_LABELS, "values": N_VALUES,
                     "iptables_rules": size[0], "ipsets": size[1], "ipset_members": size[2]},
        "ratio_from_empty": felix / floor, "results": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
