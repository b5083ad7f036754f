"""The CNI specification layer (spec 1.1.0): environment, versions, errors, results.

Pure logic, stdlib only: nothing here touches the kernel or the datastore, so the
thin plugin executable can import it cheaply and the unit tests need no root.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

SUPPORTED_VERSIONS: tuple[str, ...] = ("0.3.1", "0.4.0", "1.0.0", "1.1.0")
LATEST = "1.1.0"

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


def check_version(conf: dict[str, Any], command: str) -> str:
    """Return the netconf's ``cniVersion`` if this plugin supports it for ``command``; else error 1."""
    version = conf.get("cniVersion")
    if version is None or version == "":
        raise CNIError(E_INVALID_CONFIG, "network configuration has no cniVersion")
    if not isinstance(version, str):
        raise CNIError(E_INVALID_CONFIG, f"cniVersion must be a string, got {version!r}")
    if version not in SUPPORTED_VERSIONS:
        raise CNIError(
            E_INCOMPATIBLE_VERSION,
            f"incompatible CNI versions: config is {version!r}, plugin supports {list(SUPPORTED_VERSIONS)}",
        )
    if command == "CHECK" and _vtuple(version) < (0, 4, 0):
        raise CNIError(E_INCOMPATIBLE_VERSION, f"CHECK is not supported for cniVersion {version} (needs >= 0.4.0)")
    if command in ("STATUS", "GC") and _vtuple(version) < (1, 1, 0):
        raise CNIError(E_INCOMPATIBLE_VERSION, f"{command} is not supported for cniVersion {version} (needs 1.1.0)")
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
        """Render for ``cni_version`` (0.3.1/0.4.0 add ``version`` to ips; 1.1.0 adds ``mtu``)."""
        v = _vtuple(cni_version)
        out: dict[str, Any] = {"cniVersion": cni_version}
        if self.interfaces:
            ifs = []
            for itf in self.interfaces:
                d: dict[str, Any] = {"name": itf.name}
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
            d = {"address": ip.address}
            if v < (1, 0, 0):
                d["version"] = "6" if ":" in ip.address else "4"
            if ip.interface is not None:
                d["interface"] = ip.interface
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
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise CNIError(E_INVALID_CONFIG, f"prevResult is malformed: {exc!r}") from None
        return cls(interfaces=interfaces, ips=ips, routes=routes, dns=dict(data.get("dns") or {}))


def error_json(err: CNIError, cni_version: str = LATEST) -> str:
    """The error object serialised as printed on stdout."""
    return json.dumps(err.to_dict(cni_version))
