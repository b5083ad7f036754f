"""Running a CNI chain as a container runtime does (libcni semantics).

* The network config is the first file, in lexical order, of ``*.conf``, ``*.conflist``
  and ``*.json`` in the config directory that parses; a single-plugin ``.conf`` is
  wrapped into a list.
* ADD runs each plugin in order, giving each the previous plugin's result as
  ``prevResult``; the last result is the chain's result, cached for DEL.
* DEL runs the plugins in reverse order with the cached result as ``prevResult``;
  it is best effort per spec (a missing netns is fine).
* Environment: CNI_COMMAND, CNI_CONTAINERID, CNI_NETNS, CNI_IFNAME, CNI_ARGS,
  CNI_PATH, on top of the runtime's own environment.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass, field
from typing import Any

CONF_EXTENSIONS = (".conf", ".conflist", ".json")


class CNIError(Exception):
    """A plugin failed (or the config is unusable); message as the runtime would log it."""

    def __init__(self, message: str, code: int | None = None, plugin: str | None = None):
        self.code, self.plugin = code, plugin
        super().__init__(message)


@dataclass
class NetworkConfig:
    """A loaded network configuration list."""

    name: str
    cni_version: str
    plugins: list[dict]
    path: str
    raw: dict = field(default_factory=dict)


def find_config(conf_dir: str) -> NetworkConfig | None:
    """The network config the runtime would use, or None ("cni config uninitialized")."""
    try:
        names = sorted(os.listdir(conf_dir))
    except FileNotFoundError:
        return None
    for name in names:
        if not name.endswith(CONF_EXTENSIONS):
            continue
        path = os.path.join(conf_dir, name)
        try:
            with open(path, encoding="utf-8") as f:
                return parse_config(json.load(f), path)
        except (OSError, ValueError, CNIError):
            continue  # libcni skips files it cannot load
    return None


class ConfigWatch:
    """:func:`find_config` of one directory, read again only when what it lists changed: the
    names, inodes, sizes and change times of its config files (the kubelet asks several times
    a second; containerd watches the directory with inotify to the same end)."""

    def __init__(self, conf_dir: str):
        self.conf_dir = conf_dir
        self._seen: tuple | None = None
        self._conf: NetworkConfig | None = None

    def _signature(self) -> tuple | None:
        try:
            names = sorted(n for n in os.listdir(self.conf_dir) if n.endswith(CONF_EXTENSIONS))
        except FileNotFoundError:
            return None
        sig = []
        for name in names:
            try:
                st = os.stat(os.path.join(self.conf_dir, name))
            except OSError:
                continue
            sig.append((name, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
        return tuple(sig)

    def current(self) -> NetworkConfig | None:
        """The config :func:`find_config` returns now (from the last read if nothing changed)."""
        sig = self._signature()
        if sig is None or sig != self._seen:
            self._conf = find_config(self.conf_dir) if sig else None
            self._seen = sig
        return self._conf


def parse_config(data: Any, path: str = "") -> NetworkConfig:
    """Validate a conflist (or a single-plugin conf) into a :class:`NetworkConfig`."""
    if not isinstance(data, dict):
        raise CNIError(f"{path}: network config must be a JSON object")
    version = data.get("cniVersion") or "0.2.0"
    name = data.get("name")
    if not name:
        raise CNIError(f"{path}: network config has no name")
    if "plugins" in data:
        plugins = data["plugins"]
        if not isinstance(plugins, list) or not plugins:
            raise CNIError(f"{path}: 'plugins' must be a non-empty list")
    else:
        plugins = [{k: v for k, v in data.items() if k not in ("name", "cniVersion")}]
    for i, p in enumerate(plugins):
        if not isinstance(p, dict) or not p.get("type"):
            raise CNIError(f"{path}: plugins[{i}] has no type")
    return NetworkConfig(name=name, cni_version=version, plugins=plugins, path=path, raw=data)


def plugin_stdin(conf: NetworkConfig, plugin: dict, prev_result: dict | None,
                 runtime_config: dict | None = None) -> dict:
    """The JSON a plugin reads on stdin: its own config plus name, cniVersion, prevResult
    and the runtimeConfig entries for the capabilities it declares."""
    body = dict(plugin)
    body["name"] = conf.name
    body["cniVersion"] = conf.cni_version
    caps = body.pop("capabilities", None) or {}
    rc = {k: v for k, v in (runtime_config or {}).items() if caps.get(k)}
    if rc:
        body["runtimeConfig"] = rc
    if prev_result is not None:
        body["prevResult"] = prev_result
    return body


def cni_args(namespace: str, pod: str, sandbox_id: str) -> str:
    """CNI_ARGS as kubelet/containerd 1.6 pass them."""
    return ";".join(["IgnoreUnknown=1", f"K8S_POD_NAMESPACE={namespace}", f"K8S_POD_NAME={pod}",
                     f"K8S_POD_INFRA_CONTAINER_ID={sandbox_id}"])


@dataclass
class Runner:
    """Executes a chain's plugins found in ``bin_dirs``."""

    bin_dirs: list[str]
    timeout: float = 60.0
    env: dict[str, str] | None = None

    def _find(self, typ: str) -> str:
        for d in self.bin_dirs:
            path = os.path.join(d, typ)
            if os.access(path, os.X_OK):
                return path
        raise CNIError(f'failed to find plugin "{typ}" in path {self.bin_dirs}', plugin=typ)

    def _exec(self, command: str, typ: str, stdin: dict, container_id: str, netns: str,
              ifname: str, args: str) -> dict | None:
        env = dict(os.environ if self.env is None else self.env)
        env.update({
            "CNI_COMMAND": command, "CNI_CONTAINERID": container_id, "CNI_NETNS": netns,
            "CNI_IFNAME": ifname, "CNI_ARGS": args, "CNI_PATH": ":".join(self.bin_dirs),
        })
        exe = self._find(typ)
        try:
            res = subprocess.run([exe], input=json.dumps(stdin).encode(), capture_output=True,
                                 env=env, timeout=self.timeout)
        except subprocess.TimeoutExpired:
            raise CNIError(f'plugin type="{typ}" name="{stdin.get("name")}" failed ({command}): '
                           f"timed out after {self.timeout:.0f}s", plugin=typ) from None
        out = res.stdout.decode(errors="replace").strip()
        if res.returncode != 0:
            msg = out or res.stderr.decode(errors="replace").strip()
            code = None
            try:
                err = json.loads(out)
                code = err.get("code")
                msg = err.get("msg", msg) + (f"; {err['details']}" if err.get("details") else "")
            except (ValueError, AttributeError):
                pass
            raise CNIError(f'plugin type="{typ}" name="{stdin.get("name")}" failed ({command}): {msg}',
                           code=code, plugin=typ)
        if command != "ADD" or not out:
            return None
        try:
            return json.loads(out)
        except ValueError:
            raise CNIError(f'plugin type="{typ}" returned invalid JSON on ADD: {out[:200]!r}', plugin=typ) from None

    def add(self, conf: NetworkConfig, container_id: str, netns: str, args: str,
            ifname: str = "eth0", runtime_config: dict | None = None) -> dict:
        """Run ADD through the chain; returns the final result. On failure runs DEL for
        the chain (as runtimes do) and raises :class:`CNIError`."""
        result: dict | None = None
        try:
            for plugin in conf.plugins:
                stdin = plugin_stdin(conf, plugin, result, runtime_config)
                out = self._exec("ADD", plugin["type"], stdin, container_id, netns, ifname, args)
                if out is not None:
                    result = out
        except CNIError:
            try:
                self.delete(conf, container_id, netns, args, ifname, result, runtime_config)
            except CNIError:
                pass
            raise
        return result or {"cniVersion": conf.cni_version}

    def delete(self, conf: NetworkConfig, container_id: str, netns: str, args: str,
               ifname: str = "eth0", prev_result: dict | None = None,
               runtime_config: dict | None = None) -> None:
        """Run DEL through the chain in reverse order (all plugins, first error raised)."""
        first: CNIError | None = None
        for plugin in reversed(conf.plugins):
            stdin = plugin_stdin(conf, plugin, prev_result, runtime_config)
            try:
                self._exec("DEL", plugin["type"], stdin, container_id, netns, ifname, args)
            except CNIError as exc:
                first = first or exc
        if first:
            raise first


def pod_ips(result: dict) -> list[str]:
    """The addresses (without prefix length) of a CNI result, IPv4 first."""
    ips = []
    for ip in result.get("ips") or []:
        addr = ip.get("address", "").split("/")[0]
        if addr:
            ips.append(addr)
    # CNI < 0.3 results: ip4/ip6
    for key in ("ip4", "ip6"):
        if result.get(key, {}).get("ip"):
            ips.append(result[key]["ip"].split("/")[0])
    return sorted(ips, key=lambda a: ":" in a)
