"""``calicolab``: bring labs up and down, walk into nodes, run kubectl and calicoctl.

Exit codes: 0 success; 1 the operation failed; 2 bad input (usage, invalid
topology, unknown node); 3 no such lab, or no lab / several labs running;
4 the lab is already running. ``exec``, ``shell``, ``kubectl`` and
``calicoctl`` exit with the status of what they ran.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import sys
from collections.abc import Sequence

EXIT_OK, EXIT_FAIL, EXIT_INPUT, EXIT_NOLAB, EXIT_EXISTS = 0, 1, 2, 3, 4

EPILOG = """\
examples:
  calicolab demo                                   # the walkthrough with captures and a report
  calicolab capture start --nodes k8s-w0,k8s-w1    # pcaps/<lab>/<run>/<node>-<iface>.pcap
  calicolab capture stop
  calicolab up topologies/walkthrough.yaml        # lab "walkthrough", returns when ready
  calicolab kubectl get nodes -o wide
  calicolab kubeconfig > lab.conf                  # the lab's admin kubeconfig
  calicolab shell k8s-w0                           # bash inside the node
  calicolab exec k8s-w0 -- ip -c route
  calicolab exec default/nginx-0 -- ip addr        # inside a pod (kubectl exec)
  calicolab status
  calicolab down
  calicolab clean                                  # remove every lab, also after a crash
"""


def _progress(msg: str) -> None:
    print(f"calicolab: {msg}", file=sys.stderr, flush=True)


def _err(msg: str) -> None:
    print(f"calicolab: error: {msg}", file=sys.stderr, flush=True)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (every subcommand has --help)."""
    lab_opt = argparse.ArgumentParser(add_help=False)
    lab_opt.add_argument("--lab", metavar="NAME", default=argparse.SUPPRESS,
                         help="the lab to act on (needed only when several labs run)")
    p = argparse.ArgumentParser(
        prog="calicolab", description="Calico pod networking labs on Mininet.",
        epilog=EPILOG + "\n" + (__doc__ or "").split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lab", metavar="NAME", help="the lab to act on (needed only when several run)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    s = sub.add_parser("up", help="build a lab from a topology file and start it",
                       description="Build the lab, start etcd and the node services; returns "
                       "once the lab is ready and leaves it running. Calico's datastore is Kubernetes "
                       "(Calico's default) unless the topology or --datastore says etcdv3.")
    s.add_argument("topology", help="topology file (topologies/*.yaml)")
    s.add_argument("--name", help="lab name (default: the file's name: field)")
    s.add_argument("--datastore", choices=("kubernetes", "etcdv3"),
                   help="Calico's datastore: kubernetes (Calico's default: its CRDs in the "
                   "API server) or etcdv3 (default: the topology's calico.datastore, else kubernetes)")
    s.add_argument("--no-cni", action="store_true",
                   help="do not start calico-node (nodes stay NotReady until install-cni)")
    s.add_argument("--runtime", metavar="NAME",
                   help="who runs the pods: netns (processes; the default), containerd or docker "
                        "(overrides the topology's runtime; docs/runtimes.md)")
    s.add_argument("--timeout", type=float, default=180.0, help="give up after this many seconds")
    s.add_argument("--ready-timeout", type=float, default=30.0,
                   help="how long to wait for calico-node/Nodes to turn ready (warn after)")
    s.add_argument("--tunnels", help=argparse.SUPPRESS)  # one machine's part (testbed.multihost)
    s.add_argument("--join-files", help=argparse.SUPPRESS)  # its workers' kubeadm join files (ditto)

    s = sub.add_parser("down", parents=[lab_opt], help="stop a lab and remove everything it made")
    s.add_argument("name", nargs="?", help="lab name (default: the only running lab)")

    s = sub.add_parser("status", parents=[lab_opt], help="nodes, addresses, datapath, agent health")
    s.add_argument("--json", action="store_true", help="machine-readable output")

    sub.add_parser("list", help="the labs on this machine and their phase")

    s = sub.add_parser("clean", help="remove every lab (processes, netns, mounts, cgroups, files)",
                       description="Removes everything any calicolab lab made (or only the labs "
                       "named), from the state files in /run/calicolab; works after kill -9 of "
                       "any lab process. Never runs mn -c.")
    s.add_argument("names", nargs="*", metavar="NAME", help="only these labs (default: all)")

    s = sub.add_parser("shell", parents=[lab_opt], help="interactive bash inside a node")
    s.add_argument("node")

    s = sub.add_parser("exec", parents=[lab_opt], help="run a command in a node or a pod",
                       usage="calicolab exec [--lab NAME] NODE|NAMESPACE/POD -- CMD [ARG ...]")
    s.add_argument("target", help="a node name, or NAMESPACE/POD")
    s.add_argument("cmd", nargs=argparse.REMAINDER, help="the command (after --)")

    for tool in ("kubectl", "calicoctl"):
        s = sub.add_parser(tool, parents=[lab_opt], add_help=False,
                           help=f"run {'the real kubectl' if tool == 'kubectl' else tool} against the lab "
                                "(from its control-plane node)",
                           usage=f"calicolab {tool} [--lab NAME] ARGS ...")
        s.add_argument("args", nargs=argparse.REMAINDER)

    sub.add_parser("kubeconfig", parents=[lab_opt],
                   help="print the lab's admin kubeconfig (/etc/kubernetes/admin.conf)",
                   description="Prints the admin kubeconfig of the lab (the API server at "
                   "https://<control-plane address>:6443, reachable from inside the lab's nodes).")

    s = sub.add_parser("install-cni", parents=[lab_opt],
                       help="install Calico: kubectl apply -f calico.yaml (the project's manifest of the "
                            "lab's datastore), or --manifest FILE, or --operator")
    s.add_argument("--timeout", type=float, default=120.0)
    s.add_argument("--manifest", nargs="?", const="", metavar="FILE",
                   help="by manifest, as the second seed (the default): the project's calico.yaml "
                        "(calico-etcd.yaml in an etcd lab), or FILE applied as it is, e.g. Calico's "
                        "own calico.yaml (python -m testbed.k8s.upstream calico.yaml; docs/install.md)")
    s.add_argument("--operator", action="store_true",
                   help="by the Tigera operator, as the first seed: kubectl create -f "
                        "manifests/tigera-operator.yaml, then custom-resources.yaml; waits for "
                        "tigerastatus calico Available (Kubernetes datastore; docs/install.md)")

    s = sub.add_parser("capture", parents=[lab_opt], add_help=False,
                       help="tcpdump on the nodes: capture start [--nodes a,b] [--ifaces GLOBS] "
                            "[--filter BPF] | stop | status",
                       usage="calicolab capture [--lab NAME] start|stop|status ...")
    s.add_argument("args", nargs=argparse.REMAINDER)

    s = sub.add_parser("demo", add_help=False,
                       help="replay the walkthrough: NotReady -> Ready, six flows (policy too) under capture, report",
                       usage="calicolab demo [--name NAME] [--keep] [--topology FILE] [--datastore kubernetes|etcdv3]")
    s.add_argument("args", nargs=argparse.REMAINDER)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    from testbed.lab.state import LabError
    from testbed.lab.topology import TopologyError

    tool = _split_tool(args_list, ("kubectl", "calicoctl", "capture", "demo"))
    try:
        if tool is not None and tool[1] == "demo":  # its own parser: `demo --help` is the demo's
            from testbed import walkthrough

            return walkthrough.main(tool[2])
        if tool is not None and tool[1] == "capture":
            from testbed.capture.command import capture_command
            from testbed.lab import state as labstate

            if tool[2][:1] in (["-h"], ["--help"]) or not tool[2]:
                return capture_command(tool[2] or ["--help"], "-")
            st = labstate.resolve(tool[0])
            if labstate.is_multihost(st):
                from testbed.multihost.capture import capture_command as machines_capture

                return machines_capture(tool[2], st)
            return capture_command(tool[2], st["lab"])
        if tool is not None:
            return run_tool(tool[1], tool[2], tool[0])
        args = build_parser().parse_args(args_list)
        return _dispatch(args)
    except TopologyError as exc:
        _err(str(exc))
        return EXIT_INPUT
    except LabError as exc:
        _err(str(exc))
        return _code(exc)
    except KeyboardInterrupt:
        return 130


def _code(exc: Exception) -> int:
    return int(getattr(exc, "exit_code", EXIT_FAIL))


def _split_tool(args: list[str], tools: tuple[str, ...] = ("kubectl", "calicoctl")
                ) -> tuple[str | None, str, list[str]] | None:
    """``[--lab N] TOOL [--lab N] ARGS`` -> (lab, tool, ARGS), passed verbatim (TOOL in ``tools``)."""
    lab = None
    i = 0
    while i < len(args) and args[i].startswith("--lab"):
        if args[i] == "--lab" and i + 1 < len(args):
            lab, i = args[i + 1], i + 2
        elif args[i].startswith("--lab="):
            lab, i = args[i][6:], i + 1
        else:
            return None
    if i >= len(args) or args[i] not in tools:
        return None
    tool, rest = args[i], args[i + 1:]
    if rest[:1] == ["--lab"] and len(rest) > 1:
        lab, rest = rest[1], rest[2:]
    elif rest and rest[0].startswith("--lab="):
        lab, rest = rest[0][6:], rest[1:]
    return lab, tool, rest


def _dispatch(args: argparse.Namespace) -> int:
    from testbed.lab import lifecycle as labmod
    from testbed.lab import state as labstate

    cmd = args.command
    lab = getattr(args, "lab", None)
    if cmd == "up":
        st = labmod.up(args.topology, name=args.name, no_cni=args.no_cni, timeout=args.timeout,
                       progress=_progress, ready_timeout=args.ready_timeout, runtime=args.runtime,
                       tunnels=json.loads(args.tunnels) if args.tunnels else None,
                       datastore=args.datastore, join_files=args.join_files)
        print(f"lab {st['lab']} is up: {len([h for h in st['hosts'].values() if h['kind'] == 'node'])}"
              f" node(s), etcd at {','.join(st['etcd_endpoints'])}")
        print(f"  calicolab{'' if len(labstate.running_labs()) < 2 else ' --lab ' + st['lab']} "
              "kubectl get nodes    # or: calicolab shell "
              f"{st['control_plane']}")
        return EXIT_OK
    if cmd == "down":
        labmod.down(args.name or lab, progress=_progress)
        return EXIT_OK
    if cmd == "list":
        for name in labstate.list_labs():
            st = labstate.read_state(name) or {}
            phase = st.get("phase", "?") if labstate.is_running(st) else f"{st.get('phase', '?')} (dead)"
            print(f"{name}\t{phase}\t{st.get('topology', '')}")
        return EXIT_OK
    if cmd == "clean":
        from testbed.lab.clean import clean_all, clean_lab

        unknown = [n for n in args.names if n not in labstate.list_labs()]
        if unknown:
            raise labstate.LabError(f"no lab named {', '.join(map(repr, unknown))} "
                                   f"(labs: {', '.join(labstate.list_labs()) or 'none'})",
                                   labstate.EXIT_NOLAB)
        reports = [clean_lab(n) for n in args.names] if args.names else clean_all()
        for r in reports:
            print(r.summary())
        if not reports:
            print("nothing to clean")
        return EXIT_FAIL if any(r.errors for r in reports) else EXIT_OK
    if cmd == "status":
        return _status(lab, args.json)
    if cmd == "shell":
        from testbed.lab import nodeshell

        st = labstate.resolve(lab)
        if labstate.is_multihost(st):
            from testbed.multihost import controller

            return controller.shell(st, args.node)
        return nodeshell.shell(st, args.node)
    if cmd == "exec":
        return _exec(lab, args.target, args.cmd)
    if cmd in ("kubectl", "calicoctl"):
        return run_tool(cmd, args.args, lab)
    if cmd == "capture":
        from testbed.capture.command import capture_command

        return capture_command(args.args, labstate.resolve(lab)["lab"])
    if cmd == "demo":
        from testbed import walkthrough

        return walkthrough.main(args.args)
    if cmd == "kubeconfig":
        from testbed.lab import kubeadm

        st = labstate.resolve(lab)
        try:
            sys.stdout.write(kubeadm.admin_conf(st).read_text())
        except OSError as exc:
            raise labstate.LabError(f"lab {st['lab']!r} has no admin kubeconfig ({exc.strerror})") from None
        return EXIT_OK
    if cmd == "install-cni":
        if args.operator:
            if args.manifest is not None:
                _err("install-cni: --manifest and --operator are two ways to install Calico: give one")
                return EXIT_FAIL
            return _install_operator(lab, args.timeout)
        reply = labmod.install_cni(lab, timeout=args.timeout, manifest=args.manifest or None)
        started = reply.get("started") or []
        print(f"calico-node started on {', '.join(started)}" if started
              else "calico-node already runs on every node")
        return EXIT_OK
    raise AssertionError(cmd)


def _install_operator(lab: str | None, timeout: float) -> int:
    """``install-cni --operator``: testbed.k8s.tigera.install, then the lab marks Calico installed."""
    from testbed.k8s.install import InstallError
    from testbed.k8s.tigera.install import install_by_operator
    from testbed.lab import lifecycle as labmod
    from testbed.lab import state as labstate

    st = labstate.resolve(lab)
    if st.get("datastore", "etcdv3") != "kubernetes":
        _err(f"lab {st['lab']!r} keeps Calico's data in etcd: the operator installs Calico in the Kubernetes "
             "datastore (calico.datastore: kubernetes, or `up --datastore kubernetes`)")
        return EXIT_FAIL
    try:
        install_by_operator(st["lab"], _progress, timeout=timeout)
    except InstallError as exc:
        _err(str(exc))
        return EXIT_FAIL
    reply = labmod.install_cni(st["lab"], timeout=timeout, operator=True)
    print(f"Calico installed by the operator: calico-node runs on {', '.join(reply.get('started') or [])}")
    return EXIT_OK


def _status(lab: str | None, as_json: bool) -> int:
    from testbed.lab import lifecycle as labmod

    info = labmod.status(lab)
    verdict = EXIT_FAIL if info["health"]["state"] in ("broken", "degraded") else EXIT_OK
    if as_json:
        print(json.dumps(info, indent=2, sort_keys=True))
        return verdict
    print(f"lab {info['lab']} ({info['phase']}), etcd {','.join(info['etcd_endpoints'])}, "
          + (f"{len(info['machines'])} machine(s)" if "machines" in info
             else f"supervisor pid {info['supervisor']}"))
    rows = [("NODE", "ROLE", "ADDRESS", "NETNS", "SERVICES", "DATAPATH", "AGENT", "BGP", "DATAPLANE")]
    for n in info["nodes"]:
        svcs = ",".join(labmod.describe_service(k, v) for k, v in sorted(n["services"].items())) or "-"
        bgp = n.get("bgp")
        peers = bgp.get("peers") if isinstance(bgp, dict) else None
        sessions = "-" if peers is None else \
            f"{sum(1 for p in peers if p.get('info') == 'Established')}/{len(peers)} Established"
        datapath = n.get("datapath") or "-"
        if n.get("encap") and n["encap"] != "none":  # e.g. "vxlan (kernel)", "ipip (userspace)"
            datapath = f"{n['encap']} ({datapath})"
        rows.append((n["name"], n["role"], n["address"], n["netns"], svcs,
                     datapath, n["agent"], sessions, n.get("dataplane") or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    for n in info["nodes"]:
        if n.get("datapath_note"):
            print(f"{n['name']}: tunl0 is {n['datapath']}: {n['datapath_note']}")
    for skip in info["skipped"]:
        print(f"skipped: {skip}")
    if info["others"]:
        print("other hosts: " + ", ".join(f"{o['name']} ({o['kind']}, {o['address']})"
                                           for o in info["others"]))
    unimpl = [(n["name"], u) for n in info["nodes"] for u in n.get("unimplemented") or []]
    if unimpl:
        print("in effect but not implemented in calicolab (no effect; see docs/inventory.md):")
        width = max(len(name) for name, _ in unimpl)
        for name, u in unimpl:
            print(f"  {name.ljust(width)}  {u['setting']}  ({u['why']})")
    for name, m in sorted((info.get("machines") or {}).items()):
        where = ", ".join(n["name"] for n in info["nodes"] + info["others"] if n.get("host") == name)
        if m["ok"]:
            print(f"{m['machine']}: ok, supervisor pid {m.get('supervisor')} ({where})")
        else:
            print(f"{m['machine']}: UNREACHABLE ({where}): {m['error']}")
    h = info["health"]
    print(f"status: {h['state'].upper() if h['state'] in ('broken', 'degraded') else h['state']}"
          + (": " + "; ".join(h["problems"]) if h["problems"] else ""))
    return verdict


def _exec(lab: str | None, target: str, cmd: list[str]) -> int:
    from testbed.lab import nodeshell
    from testbed.lab import state as labstate

    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        raise labstate.LabError("no command given (usage: calicolab exec NODE -- CMD ...)",
                               exit_code=EXIT_INPUT)
    if "/" in target:
        ns, _, pod = target.partition("/")
        if not ns or not pod:
            raise labstate.LabError(f"bad pod {target!r}: use NAMESPACE/POD", exit_code=EXIT_INPUT)
        st = labstate.resolve(lab)
        if labstate.is_multihost(st):  # kubectl exec on the control plane's machine
            from testbed.multihost import controller

            return controller.exec_in(st, target, cmd)
        return run_tool("kubectl", ["exec", "-n", ns, pod, "--", *cmd], lab)
    st = labstate.resolve(lab)
    if labstate.is_multihost(st):
        from testbed.multihost import controller

        return controller.exec_in(st, target, cmd)
    return nodeshell.run_in_node(st, target, cmd).returncode


def _tool_main(tool: str):  # noqa: ANN202
    import importlib

    from testbed.lab import state as labstate

    candidates = [f"testbed.{tool}", f"testbed.{tool}.main"]
    for mod in candidates:
        try:
            m = importlib.import_module(mod)
        except ModuleNotFoundError as exc:
            if exc.name and (mod.startswith(exc.name) or exc.name == mod):
                continue
            raise
        fn = getattr(m, "main", None)
        if callable(fn):
            return fn
    raise labstate.LabError(f"{tool} is not available yet (no testbed.{tool}.main)")


def run_kubectl(args: list[str], lab: str | None) -> int:
    """The real kubectl (``.venv/bin/kubectl``) against the lab's API server, run in the
    control-plane node's network namespace (where https://<control plane>:6443 is
    reachable) with the lab's admin kubeconfig; files and the working directory are the
    caller's. ``port-forward`` therefore listens inside the control-plane node.

    The process becomes kubectl (exec, nsenter execs it in turn), so a signal sent to
    ``calicolab kubectl get -w`` ends kubectl itself, and its exit code is kubectl's."""
    from testbed.lab import kubeadm
    from testbed.lab import state as labstate
    from testbed.lab.netns import nsenter_argv
    from testbed.lab.nodeshell import node_target

    st = labstate.resolve(lab)
    if labstate.is_multihost(st):  # on the control plane's machine, whose part has admin.conf
        from testbed.multihost import controller

        return controller.run_cli(st, controller.machine_of(st, st["control_plane"]), ["kubectl", *args])
    kubectl = labstate.VENV_BIN / "kubectl"
    if not kubectl.exists():
        raise labstate.LabError(f"the real kubectl is not installed ({kubectl} missing): run scripts/setup.sh")
    netns, _ = node_target(st, st["control_plane"])
    env = dict(os.environ, KUBECONFIG=str(kubeadm.admin_conf(st)))
    argv = [*nsenter_argv(netns), str(kubectl), *args]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvpe(argv[0], argv, env)


def run_tool(tool: str, args: list[str], lab: str | None) -> int:
    """Run kubectl (:func:`run_kubectl`), or calicoctl in-process inside the lab's
    control-plane node (net and mount namespaces, the lab's ETCD_ENDPOINTS)."""
    if tool == "kubectl":
        return run_kubectl(args, lab)
    from testbed.lab import netns as nsmod
    from testbed.lab import state as labstate
    from testbed.lab.nodeshell import node_target

    st = labstate.resolve(lab)
    if labstate.is_multihost(st):  # on the control plane's machine
        from testbed.multihost import controller

        return controller.run_tool(st, tool, args)
    fn = _tool_main(tool)
    cp = st["control_plane"]
    if cp not in st["hosts"]:  # one machine's part of a lab without the control plane
        cp = next((n for n, h in st["hosts"].items() if h.get("kind") == "node"), cp)
    netns, mnt = node_target(st, cp)
    env = labstate.node_env(st, cp)
    for key in ("NODE_NAME", "NODENAME", "ETCD_ENDPOINTS", "CALICOLAB_LAB", "DATASTORE_TYPE"):
        os.environ[key] = env[key]
    if env["DATASTORE_TYPE"] == "kubernetes":  # calicoctl reads the API server, as in a node shell
        os.environ.setdefault("KUBECONFIG", "/etc/kubernetes/admin.conf")
    cwd = os.getcwd()
    nsmod.enter(netns)  # first: the node's mount ns hides /run/netns/<lab>-*
    if mnt is not None:
        try:
            nsmod.setns(f"/proc/{mnt}/ns/mnt", nsmod.CLONE_NEWNS)
            os.chdir(cwd)
        except OSError:
            pass  # net only (e.g. threads already running): etcd is still reachable
    sys.argv = [tool, *args]
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        params = {}
    rc = fn(list(args)) if params else fn()
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
