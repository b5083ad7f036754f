"""Felix's policy-sync API (FelixConfiguration ``policySyncPathPrefix`` /
``FELIX_POLICYSYNCPATHPREFIX``): a gRPC ``felix.PolicySync/Sync`` stream per workload, on a
unix socket inside the pod's csi.tigera.io volume, as Felix's policysync server and
pod2daemon's binder serve it to Dikastes.

With the prefix set (Calico's value is ``/var/run/nodeagent``), the binder watches
``<prefix>/creds/*.json`` (written by the CSI driver, :mod:`agent.csi.node`): for each file
``<uid>.json`` it listens on ``<prefix>/mount/<uid>/socket`` (mode 0777) and binds that
socket to the workload the file names (``<Namespace>/<Workload>``); a file that goes away
closes the socket. A client's ``Sync(SyncRequest)`` then receives a stream of ``ToDataplane``
messages for that workload's endpoint (WorkloadEndpointID ``{orchestrator_id: "k8s",
workload_id: "<ns>/<pod>", endpoint_id: "eth0"}``):

* ``workload_endpoint_update`` (11) with the endpoint as this Felix calculated it (state
  ``active``, interface name, MAC, profile IDs, IPv4 nets, tier ``default`` with the ingress
  and egress policy IDs that apply) when the client joins and whenever it changes;
* ``in_sync`` (1) once, after the first state;
* ``workload_endpoint_remove`` (12) when the endpoint goes away.

Not sent (calicolab does not build them; docs/csi.md): ``active_policy_update/remove`` and
``active_profile_update/remove`` (the rules themselves), ``ipset_update``/``delta``/``remove``,
``service_account_update/remove``, ``namespace_update/remove``, ``route_update`` and
``vxlan_tunnel_endpoint_update``. A client that needs the rules gets the policy IDs only.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from agent.protowire import EMPTY, Field, Message

log = logging.getLogger("felix.policysync")

SOCKET = "socket"  # binder.SocketFilename
MOUNT_SUBDIR, CREDS_SUBDIR = "mount", "creds"
ORCHESTRATOR_ID, ENDPOINT_ID = "k8s", "eth0"
SCAN_INTERVAL = 0.5
SERVICE = "felix.PolicySync"

WORKLOAD_ENDPOINT_ID = Message("felix.WorkloadEndpointID", [
    Field("orchestrator_id", 2, "string"), Field("workload_id", 3, "string"), Field("endpoint_id", 4, "string")])
TIER_INFO = Message("felix.TierInfo", [
    Field("name", 1, "string"), Field("ingress_policies", 2, "string", repeated=True),
    Field("egress_policies", 3, "string", repeated=True)])
WORKLOAD_ENDPOINT = Message("felix.WorkloadEndpoint", [
    Field("state", 1, "string"), Field("name", 2, "string"), Field("mac", 3, "string"),
    Field("profile_ids", 4, "string", repeated=True), Field("ipv4_nets", 5, "string", repeated=True),
    Field("ipv6_nets", 6, "string", repeated=True), Field("tiers", 7, "message", repeated=True, message=TIER_INFO),
    Field("allow_spoofed_source_prefixes", 10, "string", repeated=True), Field("annotations", 11, "map")])
WORKLOAD_ENDPOINT_UPDATE = Message("felix.WorkloadEndpointUpdate", [
    Field("id", 1, "message", message=WORKLOAD_ENDPOINT_ID), Field("endpoint", 5, "message", message=WORKLOAD_ENDPOINT)])
WORKLOAD_ENDPOINT_REMOVE = Message("felix.WorkloadEndpointRemove", [
    Field("id", 1, "message", message=WORKLOAD_ENDPOINT_ID)])
TO_DATAPLANE = Message("felix.ToDataplane", [
    Field("sequence_number", 15, "uint64"), Field("in_sync", 1, "message", message=EMPTY),
    Field("workload_endpoint_update", 11, "message", message=WORKLOAD_ENDPOINT_UPDATE),
    Field("workload_endpoint_remove", 12, "message", message=WORKLOAD_ENDPOINT_REMOVE)])
SYNC_REQUEST = EMPTY


def endpoint_id(workload: str) -> dict:
    """The WorkloadEndpointID of a pod ``<ns>/<name>``."""
    return {"orchestrator_id": ORCHESTRATOR_ID, "workload_id": workload, "endpoint_id": ENDPOINT_ID}


def endpoint_update(ep: Any, ingress: Iterable[str], egress: Iterable[str]) -> dict:
    """The WorkloadEndpointUpdate of a Felix endpoint (pure)."""
    ingress, egress = list(ingress), list(egress)
    tiers = [{"name": "default", "ingress_policies": ingress, "egress_policies": egress}] if ingress or egress else []
    v4 = [n for n in ep.ips if ":" not in n]
    v6 = [n for n in ep.ips if ":" in n]
    return {"id": endpoint_id(ep.workload),
            "endpoint": {"state": "active", "name": ep.iface, "mac": ep.mac, "profile_ids": list(ep.profiles),
                         "ipv4_nets": v4, "ipv6_nets": v6, "tiers": tiers,
                         "allow_spoofed_source_prefixes": list(ep.allow_spoofed)}}


def read_creds(path: str) -> dict[str, str]:
    """A creds file's ``{UID, Workload, Namespace, ServiceAccount}`` (keys matched without
    case, as Go's JSON decoder does). Raises ValueError/OSError."""
    with open(path) as f:
        raw = json.load(f)
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: not a JSON object")
    low = {str(k).lower(): v for k, v in raw.items()}
    out = {k: str(low.get(k.lower()) or "") for k in ("UID", "Workload", "Namespace", "ServiceAccount")}
    if not out["Workload"] or not out["Namespace"]:
        raise ValueError(f"{path}: no Workload or Namespace")
    return out


class PolicySync:
    """The binder and the Sync streams. ``configure(prefix)`` after each Felix apply (starts,
    moves or stops the binder), ``update(endpoints)`` with ``{workload ID: update dict}`` of
    the local endpoints."""

    def __init__(self, serve: Callable[[str, Callable], Any] | None = None) -> None:
        self.prefix = ""
        self.endpoints: dict[str, dict] = {}
        self.version = 0
        self.cond = threading.Condition()
        self.workloads: dict[str, tuple[str, Any]] = {}  # uid -> (workload ID, grpc server)
        self._stop: threading.Event | None = None
        self._thread: threading.Thread | None = None
        self.serve = serve or _serve
        self.streams = 0  # open Sync streams (for status and tests)

    @property
    def active(self) -> bool:
        return bool(self.prefix)

    def configure(self, prefix: str) -> None:
        if prefix == self.prefix:
            return
        self.close()
        self.prefix = prefix
        if prefix:
            log.info("policy sync API on: watching %s", os.path.join(prefix, CREDS_SUBDIR))
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._binder, args=(prefix, self._stop), daemon=True,
                                            name="felix-policysync")
            self._thread.start()

    def update(self, endpoints: dict[str, dict]) -> None:
        with self.cond:
            if endpoints != self.endpoints:
                self.endpoints = endpoints
                self.version += 1
                self.cond.notify_all()

    def close(self) -> None:
        """Stop the binder and close every workload socket."""
        if self._stop is not None:
            self._stop.set()
            if self._thread is not None:
                self._thread.join(timeout=5)
        for uid in list(self.workloads):
            self._remove(uid)
        self._stop = self._thread = None
        self.prefix = ""
        with self.cond:
            self.version += 1
            self.cond.notify_all()

    # --- the binder ------------------------------------------------------------------------
    def _binder(self, prefix: str, stop: threading.Event) -> None:
        creds_dir = os.path.join(prefix, CREDS_SUBDIR)
        while not stop.is_set():
            try:
                names = {f[:-5] for f in os.listdir(creds_dir) if f.endswith(".json")}
            except FileNotFoundError:
                names = set()
            except OSError as exc:
                log.warning("policy sync: cannot list %s: %s", creds_dir, exc)
                names = set()
            for uid in list(self.workloads):
                if uid not in names:
                    self._remove(uid)
            for uid in sorted(names - set(self.workloads)):
                self._add(prefix, uid)
            stop.wait(SCAN_INTERVAL)

    def _add(self, prefix: str, uid: str) -> None:
        path = os.path.join(prefix, CREDS_SUBDIR, uid + ".json")
        try:
            creds = read_creds(path)
        except (OSError, ValueError) as exc:
            log.warning("failed to read credentials at %s %s", path, exc)
            return
        workload = f"{creds['Namespace']}/{creds['Workload']}"
        sock = os.path.join(prefix, MOUNT_SUBDIR, uid, SOCKET)
        try:
            server = self.serve(sock, lambda req, ctx: self.sync(workload, ctx))
            os.chmod(sock, 0o777)  # the pod's user is unknown
        except OSError as exc:
            log.warning("failed to listen at %s %s", sock, exc)
            return
        self.workloads[uid] = (workload, server)
        log.info("policy sync: serving workload %s on %s", workload, sock)

    def _remove(self, uid: str) -> None:
        workload, server = self.workloads.pop(uid)
        server.stop(grace=0)
        log.info("policy sync: closed the socket of workload %s (%s)", workload, uid)

    # --- Sync ------------------------------------------------------------------------------
    def sync(self, workload: str, ctx: Any = None) -> Iterator[dict]:
        """The ToDataplane stream of ``workload`` until the client goes or the API stops."""
        log.info("New policy sync connection identified: workload %s", workload)
        last: dict | None = None
        in_sync = False
        with self.cond:
            self.streams += 1
        try:
            while self.prefix and (ctx is None or ctx.is_active()):
                with self.cond:
                    version = self.version
                    cur = self.endpoints.get(workload)
                if cur != last:
                    if cur is not None:
                        yield {"workload_endpoint_update": cur}
                    else:
                        yield {"workload_endpoint_remove": {"id": endpoint_id(workload)}}
                    last = cur
                if not in_sync:
                    yield {"in_sync": {}}
                    in_sync = True
                with self.cond:
                    self.cond.wait_for(lambda v=version: self.version != v, timeout=1.0)
        finally:
            with self.cond:
                self.streams -= 1
            log.info("Shutting down policy sync connection: workload %s", workload)


def _serve(sock: str, handler: Callable) -> Any:
    """A gRPC server for one workload's socket."""
    from agent import rpc

    return rpc.serve_unix(sock, [rpc.service(SERVICE, {"Sync": (SYNC_REQUEST, TO_DATAPLANE, handler, True)})],
                          workers=2)


def main(argv: list[str] | None = None) -> int:
    """``python -m agent.felix.policysync --dial <socket> [--count N]``: a policy-sync client
    (what Dikastes does first): calls Sync and prints each ToDataplane message as a JSON line."""
    import argparse
    import sys

    from agent import rpc

    p = argparse.ArgumentParser(prog="python -m agent.felix.policysync", description=main.__doc__.split("\n")[0])
    p.add_argument("--dial", required=True, help="the policy-sync socket (e.g. /var/run/felix/nodeagent/socket)")
    p.add_argument("--count", type=int, default=0, help="stop after N messages (0: until the stream ends)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the stream (0: no limit)")
    args = p.parse_args(argv)
    if not os.path.exists(args.dial):
        print(f"policysync: {args.dial}: no such socket", file=sys.stderr)
        return 1
    ch = rpc.channel(args.dial)
    n = 0
    try:
        stream = rpc.stream(ch, f"/{SERVICE}/Sync", SYNC_REQUEST, TO_DATAPLANE, timeout=args.timeout or None)
        for msg in stream:
            print(json.dumps(msg, sort_keys=True), flush=True)
            n += 1
            if args.count and n >= args.count:
                stream.cancel()
                break
    except Exception as exc:  # noqa: BLE001 - grpc.RpcError: reported, exit 1
        code = exc.code().name if hasattr(exc, "code") else type(exc).__name__
        details = exc.details() if hasattr(exc, "details") else str(exc)
        print(f"policysync: Sync on {args.dial}: {code}: {details}", file=sys.stderr)
        return 1
    finally:
        ch.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
