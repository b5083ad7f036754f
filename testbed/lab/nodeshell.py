"""Walk into a lab node: an interactive shell or one command in its namespaces.

A node is entered through its netns on the machine (``/run/netns/<lab>-<node>``)
and the mount namespace of its Mininet shell, so ``ip netns list`` shows only
that node's pods and ``/etc/cni/net.d`` is the node's own. The environment is
the one every process of the node gets (NODE_NAME, ETCD_ENDPOINTS, PATH with
kubectl and calicoctl first); the shell also gets its own UTS namespace with
the node's name as hostname, so the prompt reads ``root@k8s-w0``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from testbed.lab import state as labstate
from testbed.lab.netns import nsenter_argv

__all__ = ["node_target", "exec_argv", "run_in_node", "shell"]

_KEEP_ENV = ("TERM", "HOME", "LANG", "LC_ALL", "USER", "LOGNAME", "COLORTERM", "SHELL")


def node_target(state: dict, host: str) -> tuple[str, int | None]:
    """``(netns name, pid holding its mount ns)`` of ``host`` in the lab; LabError if unknown."""
    hosts = state.get("hosts") or {}
    rec = hosts.get(host)
    if rec is None or rec.get("kind") == "segment":
        names = [n for n, h in hosts.items() if h.get("kind") != "segment"]
        raise labstate.LabError(f"lab {state['lab']!r} has no node {host!r} "
                               f"(nodes: {', '.join(names)})", exit_code=labstate.EXIT_INPUT)
    pid = rec.get("pid")
    mnt = pid if labstate.pid_alive(pid, rec.get("start")) else None
    return rec["netns"], mnt


def _env(state: dict, host: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if k in _KEEP_ENV}
    env = labstate.node_env(state, host, base=base)
    env.setdefault("TERM", "xterm")
    env["KUBECONFIG"] = "/etc/kubernetes/admin.conf"  # the lab's API server (testbed.lab.kubeadm)
    return env


def exec_argv(state: dict, host: str, cmd: list[str]) -> list[str]:
    """The argv that runs ``cmd`` inside ``host`` (net + mount namespaces)."""
    netns, mnt = node_target(state, host)
    if mnt is None:
        print(f"calicolab: warning: the mount namespace of {host} is gone (its Mininet shell "
              "died): running with the machine's files (/run/netns, /etc/cni/net.d ...)",
              file=sys.stderr)
    return nsenter_argv(netns, mnt) + cmd


def _join(state: dict):
    cg = state.get("cgroup")
    return (lambda: labstate.join_cgroup(cg)) if cg else None


def run_in_node(state: dict, host: str, cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    """Run ``cmd`` in ``host`` with the node's environment; like subprocess.run."""
    if not cmd:
        raise labstate.LabError("no command given (usage: exec NODE -- CMD ...)", exit_code=labstate.EXIT_INPUT)
    return subprocess.run(exec_argv(state, host, cmd), env=_env(state, host),
                          preexec_fn=_join(state), **kwargs)


def _rcfile(state: dict, host: str) -> Path:
    path = labstate.state_dir(state["lab"]) / "nodes" / host / "bashrc"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "# calicolab node shell\n"
        "[ -f /etc/bash.bashrc ] && . /etc/bash.bashrc\n"
        f"export PATH='{labstate.node_env(state, host, base={})['PATH']}'\n"
        f"PS1='\\[\\e[1;32m\\]root@{host}\\[\\e[0m\\]:\\[\\e[1;34m\\]\\w\\[\\e[0m\\]# '\n"
        "alias ls='ls --color=auto'\n"
        f"echo \"calicolab: node {host} of lab {state['lab']} (exit to leave)\"\n"
    )
    return path


def shell(state: dict, host: str) -> int:
    """An interactive bash inside ``host``; returns its exit status.

    The rc file lives in the lab's state directory, which a node does not see
    (testbed.lab.privatedirs.plan, its hide): bash reads it from a descriptor opened here."""
    rc = _rcfile(state, host)
    with open(rc) as f:
        fd = f.fileno()
        inner = ["unshare", "--uts", "--", "sh", "-c",
                 f'hostname "{host}" 2>/dev/null; exec bash --rcfile /dev/fd/{fd} -i']
        proc = subprocess.run(exec_argv(state, host, inner), env=_env(state, host),
                              preexec_fn=_join(state), pass_fds=(fd,))
    return proc.returncode
