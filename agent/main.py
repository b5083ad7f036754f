"""``calico-node``: install-cni, start-up, then Felix + the BGP service until SIGTERM.

Environment (as calico-node's): NODENAME/NODE_NAME, ETCD_ENDPOINTS, IP
(autodetect|none|<ip>[/len]), IP_AUTODETECTION_METHOD, CALICO_IPV4POOL_CIDR,
CALICO_IPV4POOL_BLOCK_SIZE, CALICO_IPV4POOL_IPIP, CALICO_IPV4POOL_NAT_OUTGOING,
CALICO_NETWORKING_BACKEND (bird|none), FELIX_HEALTHPORT (9099), FELIX_* settings,
CNI_NET_DIR, CNI_BIN_DIR, FELIX_TYPHAADDR / FELIX_TYPHAK8SSERVICENAME (+ FELIX_TYPHAK8SNAMESPACE:
watches through Typha); calicolab additions: CALICO_VAR_LIB_DIR
(/var/lib/calico), CALICO_VAR_RUN_DIR (/var/run/calico), CALICO_TUNNEL_MODE
(auto|kernel|bpf|userspace), CALICO_TUNNEL_BPFFS (/sys/fs/bpf), CALICO_INSTALL_CNI (true).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any

from agent.installcni import CNI_LAUNCHERS

log = logging.getLogger("calico-node")


def _truthy(value: str | None, default: bool) -> bool:
    if value is None or value == "":
        return default
    return value.strip().lower() in ("1", "true", "yes")


def _bgp_service(client: Any, nodename: str, var_run: str) -> Any:
    """Start the BGP service if agent.bgp.service is importable; None otherwise."""
    try:
        from agent.bgp.service import BGPService
    except ImportError as exc:
        log.warning("BGP service not available (%s); running without BGP", exc)
        return None
    svc = BGPService(client, nodename, ctl_path=os.path.join(var_run, "bird.ctl"))
    svc.start()
    return svc


SUPERVISE_INTERVAL = 1.0  # seconds between checks that confd's watcher is alive
ETCD_TIMEOUT = 10.0  # seconds per etcd request: a busy etcd is waited for, not asked again


class ConfdSupervisor:
    """Starts confd's watcher again when its thread has died (as runit restarts a dead
    confd in calico-node); the speaker keeps running. Restarts back off (1 s doubling
    to 30 s; back to 1 s once a watcher synced), so a struggling etcd is not hit by a
    full list from every node every second.

    Seen in 50-node labs: etcd, busy with every node starting at once, answered the
    watcher's first list after the client's timeout; the watcher logged "confd watcher
    stopped" and the node never got a BGP configuration (no routes)."""

    def __init__(self, client: Any, nodename: str, first_delay: float = 1.0, max_delay: float = 30.0):
        self.client, self.nodename = client, nodename
        self.first_delay, self.max_delay = first_delay, max_delay
        self.delay = first_delay
        self.due: float | None = None
        self.restarts = 0

    def check(self, svc: Any, now: float | None = None) -> bool:
        """Restart ``svc``'s watcher if it died and its back-off has passed; True if restarted."""
        now = time.monotonic() if now is None else now
        watcher = getattr(svc, "watcher", None) if svc is not None else None
        thread = getattr(watcher, "_thread", None)
        if watcher is None or thread is None or thread.is_alive() or not thread.ident:
            if watcher is not None and watcher.synced.is_set():
                self.delay = self.first_delay
            return False
        if self.due is None:
            self.due = now + self.delay
            log.warning("confd watcher is not running (%s); starting it again in %.0fs",
                        getattr(watcher, "last_error", "") or "no error recorded", self.delay)
            return False
        if now < self.due:
            return False
        from agent.confd.watcher import ConfdWatcher

        fresh = ConfdWatcher(self.client, self.nodename, svc._apply, timers=svc.timers)
        fresh.last = watcher.last  # the speaker has that configuration already
        svc.watcher = fresh
        fresh.start()
        self.restarts += 1
        self.due = None
        self.delay = min(self.delay * 2, self.max_delay)
        return True


#: where calico-node serves its CNI requests (cni.server)
CNI_SOCKET = "/var/run/calico/cni.sock"
#: a pod's ServiceAccount token (the kubelet mounts it): calico-node runs in a pod
SA_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"


#: seconds calico-node waits for its CNI server to listen before it writes the CNI config
CNI_SERVER_WAIT = 2.0


def _cni_server(env: dict[str, str], var_run: str) -> subprocess.Popen | None:
    """The warm CNI server the thin ``calico`` plugin hands its work to (docs/cni.md),
    started as calico-node's child process ``python -m cni.server`` (it ends with us).
    Returns once its socket listens (at most :data:`CNI_SERVER_WAIT` s): the CNI config is
    written next and the kubelet's first ADDs find it, not the in-process path. Its output
    (``listening``, ``ready``, ``served=N refused=M``) goes to our log.

    The plugin looks for it at the fixed path /var/run/calico/cni.sock, so it runs
    only where that directory is this node's own (a lab node's private dir):
    not when the run dir is overridden (tests), or with CALICO_CNI_SERVER=false.
    Without it the plugin does the work in-process, only slower.
    """
    wanted = env.get("CALICO_CNI_SERVER")
    if not _truthy(wanted, os.path.abspath(var_run) == os.path.dirname(CNI_SOCKET)):
        return None
    argv = [sys.executable, "-m", "cni.server", "--socket", CNI_SOCKET, "--parent", str(os.getpid())]
    rfd, wfd = os.pipe2(os.O_CLOEXEC)
    how = ", a fork of the lab's zygote"
    try:
        proc = _zygote_cni_server(argv, stdout=wfd)
        if proc is None:
            how = ""
            try:
                proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=wfd)
            except OSError:
                log.exception("CNI server failed to start; the CNI plugins will work in-process")
                os.close(rfd)
                return None
    finally:
        os.close(wfd)
    listening = threading.Event()
    threading.Thread(target=_relay_cni_server, args=(rfd, listening), name="cni-server-output", daemon=True).start()
    t0 = time.monotonic()
    if listening.wait(CNI_SERVER_WAIT):
        log.info("CNI server on %s (pid %d%s), listening after %.0f ms", CNI_SOCKET, proc.pid, how,
                 (time.monotonic() - t0) * 1000)
    else:
        log.warning("CNI server on %s (pid %d%s) not listening after %.0fs; going on (the CNI plugins "
                    "work in-process until it does)", CNI_SOCKET, proc.pid, how, CNI_SERVER_WAIT)
    return proc


def _relay_cni_server(fd: int, listening: threading.Event) -> None:
    """Log the CNI server's output lines; set ``listening`` when it says so (or ends)."""
    try:
        with os.fdopen(fd, "r", errors="replace") as out:
            for line in out:
                word = line.strip()
                if word == "listening":
                    listening.set()
                elif word:
                    log.info("CNI server: %s", word)
    finally:
        listening.set()


def _zygote_cni_server(argv: list[str], stdout: int | None = None) -> Any:
    """The CNI server as a fork of the lab's zygote ($CALICOLAB_ZYGOTE: kernel.zygote) in this
    process' mount and network namespaces, environment and priority (stdout to ``stdout``,
    /dev/null without, stderr ours, as by exec); None without a zygote or when it failed
    (logged: the caller execs)."""
    from kernel import zygote

    path = zygote.socket_path()
    if path is None:
        return None
    fds: list[int] = []
    try:
        fds = [os.open(f"/proc/thread-self/ns/{ns}", os.O_RDONLY | os.O_CLOEXEC) for ns in ("mnt", "net")]
        return zygote.spawn(path, argv, env=dict(os.environ), cwd=os.getcwd(), stdin=None, stdout=stdout,
                            stderr=2, mnt=fds[0], net=fds[1], priority=os.getpriority(os.PRIO_PROCESS, 0))
    except (OSError, zygote.ZygoteError, ValueError) as exc:
        log.warning("the zygote %s did not start the CNI server (%s): starting it by exec", path, exc)
        return None
    finally:
        for fd in fds:
            os.close(fd)


def _cni_socket_served(path: str = CNI_SOCKET) -> bool:
    """True if something accepts connections on the CNI server's socket."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(0.5)
    try:
        sock.connect(path)
        return True
    except OSError:
        return False
    finally:
        sock.close()


def _stop_cni_server(proc: subprocess.Popen) -> None:
    """SIGTERM the CNI server and reap it (SIGKILL if it does not end within 5 s)."""
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def report_unimplemented(reporter: Any, felix: Any, bgp: Any) -> None:
    """Feed the reporter the resources in effect once Felix's (and confd's) watches are in
    sync; it logs what changed (agent.unimplemented)."""
    objects = felix.config_objects()
    if objects is None:
        return
    labels: dict[str, str] = {}
    watcher = getattr(bgp, "watcher", None) if bgp is not None else None
    if watcher is not None:
        if not watcher.synced.is_set():
            return
        st = watcher.state
        try:
            nodes = dict(st.nodes)
            objects += [*dict(st.bgp_configs).values(), *dict(st.bgp_peers).values()]
        except RuntimeError:  # changed while copied: next round
            return
        me = nodes.get(reporter.nodename)
        if me is not None:
            objects.append(me)
            labels = dict(me.metadata.labels or {})
    try:
        reporter.update(objects, labels)
    except Exception:  # noqa: BLE001 - a report must never stop calico-node
        log.exception("reporting unimplemented settings failed")


def main(argv: list[str] | None = None) -> int:
    """Run calico-node in the current network namespace (Calico's single-dash flags such as
    ``-init`` or ``-felix-ready``: :mod:`agent.nodeflags`)."""
    from agent import nodeflags

    args_in = sys.argv[1:] if argv is None else argv
    if nodeflags.is_calico_flags(args_in):
        return nodeflags.main(args_in)
    from kernel.preload import before_threads

    before_threads()  # before any thread imports lazily (kernel.preload)
    ap = argparse.ArgumentParser(prog="calico-node", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--startup-only", action="store_true", help="run start-up (and install-cni) and exit")
    ap.add_argument("--no-bgp", action="store_true", help="do not start the BGP service")
    ap.add_argument("--no-install-cni", action="store_true", help="skip the install-cni step")
    levels = ["debug", "info", "warning", "error"]
    ap.add_argument("--log-level", default=os.environ.get("CALICO_LOG_LEVEL", "info").lower(), choices=levels,
                    help="log level (default: $CALICO_LOG_LEVEL, else info; now %(default)s)")
    args = ap.parse_args(argv)
    if args.log_level not in levels:  # argparse does not check a default
        ap.error(f"CALICO_LOG_LEVEL={args.log_level!r} is not one of {', '.join(levels)}")
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    env = dict(os.environ)

    from agent.felix.convert import ConfigError
    from agent.startup import StartupError

    try:
        return _run(args, env)
    except (StartupError, ConfigError, ValueError) as exc:
        log.error("calico-node cannot start: %s", exc)
        print(f"calico-node: {exc}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace, env: dict[str, str]) -> int:
    from agent.felix.daemon import Felix
    from agent.health import HealthServer
    from agent.installcni import install_cni
    from agent.startup import determine_nodename, run_startup
    from agent.unimplemented import Reporter
    from datastore import Client, errors

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    var_lib = env.get("CALICO_VAR_LIB_DIR", "/var/lib/calico")
    var_run = env.get("CALICO_VAR_RUN_DIR", "/var/run/calico")
    port = int(env.get("FELIX_HEALTHPORT", "9099") or 9099)
    nodename = determine_nodename(env)
    state: dict[str, Any] = {"felix": None, "bgp": None, "phase": "startup"}

    def ready() -> bool:
        return state["felix"] is not None and state["felix"].ready

    def live() -> bool:
        return state["felix"] is None or state["felix"].live()

    def status() -> dict:
        felix = state["felix"]
        out = felix.status() if felix is not None else {"ready": False, "live": True, "datapath": None,
                                                        "tunnel_address": None}
        out["node"] = nodename
        out["phase"] = state["phase"]
        tunnels = state.get("tunnels")
        out["tunnels"] = tunnels.status() if tunnels is not None else None
        reporter = state.get("reporter")
        out["unimplemented"] = reporter.lines if reporter is not None else []
        bgp = state["bgp"]
        try:
            out["bgp"] = bgp.status() if bgp is not None else None
        except Exception as exc:  # noqa: BLE001
            out["bgp"] = {"error": str(exc)}
        return out

    def tunnels_status() -> dict:
        felix, tunnels = state["felix"], state.get("tunnels")
        out = felix.tunnel_addresses() if felix is not None else {"tunnel_address": None, "vxlan": None}
        out["tunnels"] = tunnels.status() if tunnels is not None else {"done": False}
        return out

    health = None
    if not args.startup_only:
        health = HealthServer(live, ready, status, port=port, tunnels=tunnels_status)
        health.start()
        log.info("health on 127.0.0.1:%d", health.port)

    # the CNI server starts first and listens before the CNI config is written, so the kubelet's
    # first CNI ADDs find it (in-process they paid ~0.4 s of imports each); its imports
    # (~0.5 s under a lab's start-up load) overlap start-up
    cni_server = None if args.startup_only else _cni_server(env, var_run)
    # then install-cni, before start-up, as Calico's install-cni init container runs before
    # calico-node: the node turns Ready while calico-node starts; a pod's CNI ADD meanwhile
    # waits in the CNI server (or fails with Calico's error in-process and the kubelet retries)
    # until start-up has written /var/lib/calico/nodename (cni.plugin.calico_node_started)
    from agent.startup import check_nodename

    check_nodename(nodename)
    conflist = os.path.join(env.get("CNI_NET_DIR", "/etc/cni/net.d"), "10-calico.conflist")
    in_pod = bool(env.get("KUBERNETES_SERVICE_HOST")) and os.path.exists(SA_TOKEN)
    if in_pod and not env.get("CNI_NETWORK_CONFIG") and os.path.exists(conflist):
        # in a pod, as Calico's calico-node, which never writes it: the install-cni init container did
        log.info("install-cni: %s exists (the install-cni container wrote it); left as it is", conflist)
    elif not args.no_install_cni and _truthy(env.get("CALICO_INSTALL_CNI"), True):
        endpoints = [e.strip() for e in env.get("ETCD_ENDPOINTS", "http://127.0.0.1:2379").split(",") if e.strip()]
        install_cni(nodename, endpoints, env, bin_source=CNI_LAUNCHERS)
        log.info("install-cni: wrote %s", conflist)
    client = Client.from_env(env, timeout=ETCD_TIMEOUT)
    from agent.startup import kube_client
    from datastore.typha import typha_from_env

    # FELIX_TYPHAADDR / FELIX_TYPHAK8SSERVICENAME (the Service found through the Kubernetes API)
    client.typha = typha_from_env(env, kube_client(client, env), hostname=nodename)
    if client.typha is not None:
        log.info("Felix and confd take their watches from Typha (%s)", client.typha.where)
    delay = 0.2
    while True:
        try:
            # the tunnel addresses come after, from allocate-tunnel-addrs beside Felix and BGP
            # (as in Calico), except with --startup-only, where nothing runs after start-up
            result = run_startup(client, env, var_lib=var_lib, tunnels=args.startup_only)
            break
        except errors.DatastoreUnavailable as exc:
            log.warning("datastore not reachable (%s); retrying", exc)
            if stop.wait(delay):
                if cni_server is not None:
                    _stop_cni_server(cni_server)
                return 0
            delay = min(delay * 2, 5.0)
    tunnel_note = f" tunnel {result.tunnel_address}" if args.startup_only else ""
    log.info("start-up done: node %s address %s%s%s (ms: %s)", result.nodename, result.ipv4_address,
             tunnel_note, " (created the default pool)" if result.pool_created else "",
             " ".join(f"{k}={v:g}" for k, v in result.steps.items()))
    if args.startup_only:
        return 0

    from agent.startup import ensure_tunnel_addresses
    from agent.tunneladdrs import TunnelAllocator

    # Calico's allocate-tunnel-addrs: the tunnel IPs now, and (re)allocated or released
    # whenever the pools change (Felix's pool-change hook asks for a pass)
    tunnels = TunnelAllocator(lambda: ensure_tunnel_addresses(client, result.nodename), stop)
    state["tunnels"] = tunnels
    tunnels.start()

    def pools_changed() -> None:
        tunnels.request()

    reporter = Reporter(result.nodename, env)
    state["reporter"] = reporter
    reporter.update([])  # the environment's, at once; the resources' once the watches are in sync
    felix = Felix(client, result.nodename, env=env, tunnel_mode=env.get("CALICO_TUNNEL_MODE", "auto"),
                  var_lib=var_lib, on_pools_changed=pools_changed)
    felix.start()
    state["felix"] = felix
    state["phase"] = "running"
    backend = env.get("CALICO_NETWORKING_BACKEND", "bird").strip().lower()
    if backend == "bird" and not args.no_bgp:
        try:
            state["bgp"] = _bgp_service(client, result.nodename, var_run)
        except Exception:  # noqa: BLE001 - Felix keeps running; BGP state shows in /status
            log.exception("BGP service failed to start")
    confd = ConfdSupervisor(client, result.nodename)
    cni_adopted = False  # the server on the socket is not our child (see below)
    while not stop.wait(SUPERVISE_INTERVAL):
        confd.check(state["bgp"])
        if cni_server is not None and cni_server.poll() is not None:  # runit restarts it too
            if _cni_socket_served():
                # a zygote start that answered after its timeout, while the exec'd fallback
                # found it listening and ended (restarting that one looped ~once a second)
                log.warning("CNI server exited with %s, but another one serves %s: leaving that one",
                            cni_server.returncode, CNI_SOCKET)
                cni_server, cni_adopted = None, True
            else:
                log.warning("CNI server exited with %s; starting it again", cni_server.returncode)
                cni_server = _cni_server(env, var_run)
        elif cni_adopted and not _cni_socket_served():
            log.warning("the CNI server serving %s is gone; starting one", CNI_SOCKET)
            cni_server, cni_adopted = _cni_server(env, var_run), False
        report_unimplemented(reporter, felix, state["bgp"])
    state["phase"] = "stopping"
    t0 = time.monotonic()
    if state["bgp"] is not None:
        try:
            state["bgp"].stop(graceful=True)
        except Exception:  # noqa: BLE001
            log.exception("BGP service stop failed")
    felix.stop()
    tunnels.stop()
    if cni_server is not None:
        _stop_cni_server(cni_server)
    if health is not None:
        health.stop()
    log.info("calico-node stopped in %.2fs", time.monotonic() - t0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
