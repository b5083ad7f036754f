"""The CNI specification layer: environment, versions, errors, results.

Pure logic, stdlib only: nothing here touches the kernel or the datastore, so the
thin plugin executable can import it cheaply and the unit tests need no root.

Versions are Calico v3.28.1's (``PluginSupports("0.1.0" .. "1.0.0")``) plus 1.1.0, kept
deliberately for the STATUS and GC verbs (docs/cni.md). Results are printed as
containernetworking/cni v1.2.0 prints them: in the netconf's ``cniVersion``, indented
four spaces.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

#: v3.28.1's list, then 1.1.0 (a deliberate addition: STATUS and GC)
SUPPORTED_VERSIONS: tuple[str, ...] = ("0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
LATEST = "1.1.0"
#: what Calico's netconf parsing assumes when ``cniVersion`` is absent (calico.md section 1)
DEFAULT_VERSION = "0.2.0"
#: the indentation of printed results and errors (types.PrintResult / Error.Print)
INDENT = 4

VERBS = ("ADD", "DEL", "CHECK", "VERSION", "STATUS", "GC")

# Error codes of the spec (section "Error").
E_INCOMPATIBLE_VERSION = 1
E_UNSUPPORTED_FIELD = 2
E_CONTAINER_UNKNOWN = 3
E_INVALID_ENV = 4
E_IO = 5
E_DECODE = 6
E_INVALID_CONFIG = 7
E_TRY_AGAIN = 11
E_PLUGIN_NOT_AVAILABLE = 50
E_LIMITED_CONNECTIVITY = 51
# Plugin specific (>= 100).
E_DATASTORE = 100
E_IPAM_EXHAUSTED = 101
E_DATAPLANE = 102
E_CHECK_FAILED = 103
E_INTERNAL = 999

# Which environment variables each verb needs (as libcni's skel enforces).
_REQUIRED_ENV: dict[str, tuple[str, ...]] = {
    "ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
    "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
    "DEL": ("CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"),
    "STATUS": (),
    "GC": (),
    "VERSION": (),
}


class CNIError(Exception):
    """An error reported to the runtime as the spec's error JSON."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details

    def to_dict(self, cni_version: str = LATEST) -> dict[str, Any]:
        """The error object as printed on stdout."""
        out: dict[str, Any] = {"cniVersion": cni_version, "code": self.code, "msg": self.msg}
        if self.details:
            out["details"] = self.details
        return out


@dataclass
class Environment:
    """The ``CNI_*`` variables of one invocation."""

    command: str
    container_id: str = ""
    netns: str = ""
    ifname: str = ""
    args: dict[str, str] = field(default_factory=dict)
    path: list[str] = field(default_factory=list)


def parse_cni_args(raw: str) -> dict[str, str]:
    """Parse ``CNI_ARGS`` (``K=V;K2=V2``) into a dict; a pair without ``=`` is an error."""
    out: dict[str, str] = {}
    if not raw:
        return out
    for pair in raw.split(";"):
        if not pair:
            continue
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CNIError(E_INVALID_ENV, f"CNI_ARGS: invalid pair {pair!r} (want KEY=VALUE)")
        out[key] = value
    return out


def parse_env(env: dict[str, str]) -> Environment:
    """Read and validate the ``CNI_*`` environment; error 4 names what is missing or wrong."""
    command = env.get("CNI_COMMAND", "")
    if not command:
        raise CNIError(E_INVALID_ENV, "CNI_COMMAND is not set (want one of " + ", ".join(VERBS) + ")")
    if command not in VERBS:
        raise CNIError(E_INVALID_ENV, f"CNI_COMMAND {command!r} is not a CNI verb (want one of {', '.join(VERBS)})")
    missing = [name for name in _REQUIRED_ENV[command] if not env.get(name)]
    if missing:
        raise CNIError(E_INVALID_ENV, f"{command} needs environment variable(s) {', '.join(missing)}, which are not set")
    ifname = env.get("CNI_IFNAME", "")
    if ifname and (len(ifname) > 15 or "/" in ifname or ifname in (".", "..") or any(c.isspace() for c in ifname)):
        raise CNIError(E_INVALID_ENV, f"CNI_IFNAME {ifname!r} is not a valid interface name")
    return Environment(
        command=command,
        container_id=env.get("CNI_CONTAINERID", ""),
        netns=env.get("CNI_NETNS", ""),
        ifname=ifname,
        args=parse_cni_args(env.get("CNI_ARGS", "")),
        path=[p for p in env.get("CNI_PATH", "").split(":") if p],
    )


def parse_stdin(data: bytes | str) -> dict[str, Any]:
    """Decode the network configuration; error 6 if it is not a JSON object."""
    if isinstance(data, bytes):
        try:
            data = data.decode()
        except UnicodeDecodeError as exc:
            raise CNIError(E_DECODE, f"network configuration on stdin is not UTF-8: {exc}") from None
    if not data.strip():
        raise CNIError(E_DECODE, "no network configuration on stdin (expected a JSON object)")
    try:
        conf = json.loads(data)
    except json.JSONDecodeError as exc:
        raise CNIError(E_DECODE, f"network configuration on stdin is not valid JSON: {exc}") from None
    if not isinstance(conf, dict):
        raise CNIError(E_DECODE, "network configuration on stdin must be a JSON object")
    return conf


def _vtuple(version: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in version.split("."))
    except ValueError:
        return (-1,)


def _go_quoted_list(items: tuple[str, ...]) -> str:
    """Go's ``%q`` of a string slice: ``["0.1.0" "0.2.0"]``."""
    return "[" + " ".join(json.dumps(i) for i in items) + "]"


def check_version(conf: dict[str, Any], command: str) -> str:
    """Return the netconf's ``cniVersion`` (``0.2.0`` when absent) if this plugin supports it
    for ``command``; else error 1 worded as libcni's skel words it."""
    version = conf.get("cniVersion")
    if version is None or version == "":
        version = DEFAULT_VERSION
    if not isinstance(version, str):
        raise CNIError(E_INVALID_CONFIG, f"cniVersion must be a string, got {version!r}")
    if version not in SUPPORTED_VERSIONS:
        raise CNIError(E_INCOMPATIBLE_VERSION, "incompatible CNI versions",
                       f"config is {json.dumps(version)}, plugin supports {_go_quoted_list(SUPPORTED_VERSIONS)}")
    if command == "CHECK" and _vtuple(version) < (0, 4, 0):
        raise CNIError(E_INCOMPATIBLE_VERSION, "config version does not allow CHECK")
    if command in ("STATUS", "GC") and _vtuple(version) < (1, 1, 0):
        raise CNIError(E_INCOMPATIBLE_VERSION, f"config version does not allow {command}")
    return version


def version_result(conf: dict[str, Any] | None) -> dict[str, Any]:
    """The VERSION verb's answer."""
    version = LATEST
    if conf and isinstance(conf.get("cniVersion"), str) and conf["cniVersion"]:
        version = conf["cniVersion"]
    return {"cniVersion": version, "supportedVersions": list(SUPPORTED_VERSIONS)}


@dataclass
class Interface:
    """One interface of a result."""

    name: str
    mac: str = ""
    mtu: int = 0
    sandbox: str = ""


@dataclass
class IPConfig:
    """One address of a result (``address`` in CIDR form)."""

    address: str
    interface: int | None = None
    gateway: str = ""


@dataclass
class Route:
    """One route of a result."""

    dst: str
    gw: str = ""


@dataclass
class Result:
    """A version-neutral CNI result; :meth:`to_dict` renders it for one spec version."""

    interfaces: list[Interface] = field(default_factory=list)
    ips: list[IPConfig] = field(default_factory=list)
    routes: list[Route] = field(default_factory=list)
    dns: dict[str, Any] = field(default_factory=dict)

    def to_dict(self, cni_version: str) -> dict[str, Any]:
        """Render for ``cni_version`` with the key order of containernetworking/cni's types:
        0.1.0/0.2.0 ``ip4``/``ip6`` objects (types020); 0.3.x/0.4.0 ``version`` first in each
        IP (types040); 1.0.0 without it (types100); 1.1.0 adds the interface ``mtu``."""
        v = _vtuple(cni_version)
        out: dict[str, Any] = {"cniVersion": cni_version}
        if v < (0, 3, 0):
            for key, v6 in (("ip4", False), ("ip6", True)):
                ip = next((i for i in self.ips if (":" in i.address) == v6), None)
                if ip is None:
                    continue
                d: dict[str, Any] = {"ip": ip.address}
                if ip.gateway:
                    d["gateway"] = ip.gateway
                routes = [r for r in self.routes if (":" in r.dst) == v6]
                if routes:
                    d["routes"] = [{"dst": r.dst, **({"gw": r.gw} if r.gw else {})} for r in routes]
                out[key] = d
            out["dns"] = dict(self.dns)
            return out
        if self.interfaces:
            ifs = []
            for itf in self.interfaces:
                d = {"name": itf.name}
                if itf.mac:
                    d["mac"] = itf.mac
                if itf.mtu and v >= (1, 1, 0):
                    d["mtu"] = itf.mtu
                if itf.sandbox:
                    d["sandbox"] = itf.sandbox
                ifs.append(d)
            out["interfaces"] = ifs
        ips = []
        for ip in self.ips:
            d = {}
            if v < (1, 0, 0):
                d["version"] = "6" if ":" in ip.address else "4"
            if ip.interface is not None:
                d["interface"] = ip.interface
            d["address"] = ip.address
            if ip.gateway:
                d["gateway"] = ip.gateway
            ips.append(d)
        out["ips"] = ips
        if self.routes:
            out["routes"] = [{"dst": r.dst, **({"gw": r.gw} if r.gw else {})} for r in self.routes]
        out["dns"] = dict(self.dns)
        return out

    @classmethod
    def from_dict(cls, data: Any) -> Result:
        """Parse a result of any supported version (e.g. a ``prevResult``); error 7 if malformed."""
        if not isinstance(data, dict):
            raise CNIError(E_INVALID_CONFIG, "prevResult must be a JSON object")
        try:
            interfaces = [
                Interface(name=i["name"], mac=i.get("mac", ""), mtu=int(i.get("mtu", 0) or 0), sandbox=i.get("sandbox", ""))
                for i in data.get("interfaces") or []
            ]
            ips = [
                IPConfig(address=i["address"], interface=i.get("interface"), gateway=i.get("gateway", ""))
                for i in data.get("ips") or []
            ]
            routes = [Route(dst=r["dst"], gw=r.get("gw", "")) for r in data.get("routes") or []]
            for key in ("ip4", "ip6"):  # a 0.1.0/0.2.0 result
                if isinstance(data.get(key), dict):
                    old = data[key]
                    ips.append(IPConfig(address=old["ip"], gateway=old.get("gateway", "")))
                    routes += [Route(dst=r["dst"], gw=r.get("gw", "")) for r in old.get("routes") or []]
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise CNIError(E_INVALID_CONFIG, f"prevResult is malformed: {exc!r}") from None
        return cls(interfaces=interfaces, ips=ips, routes=routes, dns=dict(data.get("dns") or {}))


def print_json(doc: dict[str, Any]) -> str:
    """A result or error as printed on stdout (indented four spaces, as the Go types print)."""
    return json.dumps(doc, indent=INDENT)


def error_json(err: CNIError, cni_version: str = LATEST) -> str:
    """The error object serialised as printed on stdout."""
    return print_json(err.to_dict(cni_version))
