"""calico-node's single-dash flags, as Calico's manifests call them (``node/cmd/calico-node``).

Calico's calico.yaml runs the calico/node image with these commands:

* ``calico-node -init -best-effort``: the ``mount-bpffs`` init container. Calico mounts the
  BPF filesystem at /sys/fs/bpf (when it is not mounted) and the root cgroup2 at
  /run/calico/cgroup (for BPF connect-time load balancing), both propagated to the host
  (``mountPropagation: Bidirectional``). calicolab checks the BPF filesystem and mounts
  nothing: a lab node shares the machine's /sys/fs, and a mount there would be the machine's,
  outliving the lab. A missing bpffs is an error (a warning with ``-best-effort``, as Calico's). The cgroup2 mount is not made: calicolab's BPF datapath
  attaches no connect-time load balancer (said in the log).
* ``calico-node -felix-live -bird-live`` / ``-felix-ready -bird-ready``: the liveness and
  readiness probes' commands (a user can run them too, ``kubectl exec``). They ask the running
  calico-node's health endpoint (``FELIX_HEALTHHOST``:``FELIX_HEALTHPORT``, 9099):
  ``/liveness``, ``/readiness``, and for BIRD its ``/status`` (the BGP speaker runs; ready when
  every BGP peer is Established). Exit 0 or 1 with the reason, as Calico's.
* ``calico-node -shutdown``: the preStop hook. Calico's tells BIRD to stop gracefully; calicolab's
  calico-node does that itself on SIGTERM, so this prints so and exits 0.
* ``calico-node -v``: the version.

Any other single-dash flag is refused by name (exit 2).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping

log = logging.getLogger("calico-node")

KNOWN = ("-init", "-best-effort", "-felix-live", "-felix-ready", "-bird-live", "-bird-ready", "-shutdown", "-v")
#: Calico's calico-node flags calicolab does not provide (a clear refusal, not "unknown")
NOT_PROVIDED = ("-felix", "-confd", "-startup", "-monitor-addresses", "-allocate-tunnel-addrs",
                "-monitor-token", "-complete-startup", "-hostpath-init", "-bird6-live", "-bird6-ready",
                "-status-reporter", "-show-status", "-threshold-time", "-confd-run-once", "-confd-keep-stage-file",
                "-confd-confdir", "-upgrade-ipam")


def is_calico_flags(argv: list[str]) -> bool:
    """True when ``argv`` uses calico-node's single-dash flags (``-init``, ``-felix-ready``)."""
    return any(a.startswith("-") and not a.startswith("--") and a != "-h" for a in argv)


def mounts(path: str = "/proc/self/mountinfo") -> dict[str, str]:
    """mount point -> filesystem type, from a mountinfo file."""
    out: dict[str, str] = {}
    try:
        with open(path) as f:
            for line in f:
                left, _, right = line.partition(" - ")
                fields = left.split()
                if len(fields) > 4 and right:
                    out[fields[4]] = right.split()[0]
    except OSError:
        pass
    return out


def node_init(best_effort: bool, mount_table: Mapping[str, str] | None = None) -> int:
    """The ``-init`` step (see the module docstring); returns the exit code."""
    table = mounts() if mount_table is None else mount_table
    bpffs = os.environ.get("CALICO_TUNNEL_BPFFS", "/sys/fs/bpf")
    ok = True
    if table.get(bpffs) == "bpf":
        log.info("BPF filesystem is mounted at %s", bpffs)
    else:
        ok = False
        msg = (f"BPF filesystem is not mounted at {bpffs} and calicolab does not mount it: a lab node shares the "
               "machine's /sys/fs, and the mount would be the machine's")
        (log.warning if best_effort else log.error)(msg)
    log.info("calicolab: the cgroup2 mount at /run/calico/cgroup is not made: calicolab's BPF datapath attaches "
             "no connect-time load balancer (no-op)")
    if ok or best_effort:
        log.info("calico-node -init done%s", " (best effort)" if best_effort and not ok else "")
        return 0
    return 1


def _health(env: Mapping[str, str], path: str) -> tuple[int, bytes]:
    host = env.get("FELIX_HEALTHHOST") or "localhost"
    port = int(env.get("FELIX_HEALTHPORT") or 9099)
    try:
        with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=5) as resp:  # noqa: S310
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def probe(flags: list[str], env: Mapping[str, str]) -> tuple[bool, str]:
    """The liveness/readiness checks named by ``flags``; (ok, reason when not ok)."""
    try:
        for flag, path in (("-felix-live", "/liveness"), ("-felix-ready", "/readiness")):
            if flag in flags:
                code, _ = _health(env, path)
                if code != 200:
                    what = "live" if flag.endswith("live") else "ready"
                    return False, f"calico/node is not {what}: Felix is not {what}: {path} answered {code}"
        if "-bird-live" in flags or "-bird-ready" in flags:
            code, body = _health(env, "/status")
            bgp = (json.loads(body or b"{}") if code == 200 else {}).get("bgp")
            if not isinstance(bgp, dict) or bgp.get("error") or not bgp.get("running"):
                return False, "calico/node is not ready: BIRD is not ready: the BGP speaker is not running"
            if "-bird-ready" in flags:
                # the speaker's /status gives each peer's BGP FSM state as bgp_state (its
                # "state" is BIRD's protocol state: up, start)
                down = [p.get("name") or p.get("peer") or "?" for p in bgp.get("peers") or []
                        if str(p.get("bgp_state", "")).lower() != "established"]
                if down:
                    return False, f"calico/node is not ready: BIRD is not ready: BGP not established with {', '.join(map(str, down))}"
    except (OSError, ValueError) as exc:
        return False, f"calico/node is not ready: health endpoint not reachable: {exc}"
    return True, ""


def main(argv: list[str], env: Mapping[str, str] | None = None) -> int:
    """Run calico-node with Calico's single-dash flags; returns the exit code."""
    env = os.environ if env is None else env
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for a in argv:
        if a in KNOWN:
            continue
        if a in NOT_PROVIDED:
            print(f"calico-node: flag {a} is Calico's but not provided by calicolab's calico-node "
                  f"(provided: {' '.join(KNOWN)})", file=sys.stderr)
        else:
            print(f"calico-node: flag provided but not defined: {a}", file=sys.stderr)
        return 2
    if "-v" in argv:
        from datastore.version import CALICO_VERSION

        print(CALICO_VERSION)
        return 0
    if "-init" in argv:
        return node_init("-best-effort" in argv)
    if "-shutdown" in argv:
        print("calico-node -shutdown: calicolab's calico-node stops BGP gracefully on SIGTERM; nothing to do")
        return 0
    checks = [a for a in argv if a in ("-felix-live", "-felix-ready", "-bird-live", "-bird-ready")]
    if checks:
        ok, reason = probe(checks, env)
        if not ok:
            print(reason, file=sys.stderr)
            return 1
        return 0
    print("calico-node: -best-effort is only meaningful with -init", file=sys.stderr)
    return 2
