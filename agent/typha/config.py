"""Typha's configuration from its environment (``TYPHA_<PARAM>``), as Typha reads it
(``typha/pkg/config/config_params.go``: the parameter name upper-cased behind ``TYPHA_``).

Every parameter Calico's Typha knows is listed here with what calicolab does with it. A
parameter calicolab implements is parsed and range-checked; one it does not implement is
refused by name when it is set to anything but its default (or ``none`` where that turns
the feature off, as Calico allows), so a setting is never silently ignored. A ``TYPHA_*``
variable that is no Typha parameter at all is only logged, as Typha does ("Ignoring
unknown config param"). Pure: the environment is passed in.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from datastore.typha import DEFAULT_PORT

PREFIX = "TYPHA_"

#: Typha's parameters calicolab implements: name -> (kind, default, (min, max) or choices)
IMPLEMENTED: dict[str, tuple[str, str, tuple]] = {
    # unset: libcalico-go's apiconfig decides (DATASTORE_TYPE, or etcdv3 when ETCD_ENDPOINTS is set)
    "DatastoreType": ("oneof", "", ("kubernetes", "etcdv3")),
    "EtcdEndpoints": ("string", "", ()),
    "LogSeverityScreen": ("oneof", "INFO", ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")),
    "HealthEnabled": ("bool", "false", ()),
    "HealthHost": ("string", "localhost", ()),
    "HealthPort": ("int", "9098", (0, 65535)),
    "PrometheusMetricsEnabled": ("bool", "false", ()),
    "PrometheusMetricsHost": ("string", "", ()),
    "PrometheusMetricsPort": ("int", "9093", (0, 65535)),
    "ServerMaxMessageSize": ("int", "100", (1, None)),
    "ServerPingIntervalSecs": ("seconds", "10", ()),
    "ServerPongTimeoutSecs": ("seconds", "60", ()),
    "ServerHandshakeTimeoutSecs": ("seconds", "10", ()),
    "ServerPort": ("int", "0", (0, 65535)),
    "ServerHost": ("string", "", ()),
}

_NO_TLS = "calicolab's Typha serves plain TCP (no TLS between Felix and Typha)"
_NO_ETCD_TLS = "calicolab reaches etcd over plain http at the etcd endpoints"
_ONE_TYPHA = "calicolab runs one Typha per lab and does not re-balance connections between Typhas"
_LOG = "calicolab's Typha logs to stderr only (set 'none' to turn the file/syslog log off)"

#: Typha's parameters calicolab does not implement: name -> (default, why). Set to the
#: default (or 'none' where the default turns the feature on) they are accepted.
NOT_IMPLEMENTED: dict[str, tuple[str, str]] = {
    "EtcdAddr": ("127.0.0.1:2379", "use TYPHA_ETCDENDPOINTS or ETCD_ENDPOINTS"),
    "EtcdScheme": ("http", "use TYPHA_ETCDENDPOINTS or ETCD_ENDPOINTS"),
    "EtcdKeyFile": ("", _NO_ETCD_TLS),
    "EtcdCertFile": ("", _NO_ETCD_TLS),
    "EtcdCaFile": ("", _NO_ETCD_TLS),
    "LogFilePath": ("/var/log/calico/typha.log", _LOG),
    "LogSeverityFile": ("INFO", _LOG),
    "LogSeveritySys": ("INFO", _LOG),
    "PrometheusGoMetricsEnabled": ("true", "calicolab's Typha is not a Go program: no go_* metrics"),
    "PrometheusProcessMetricsEnabled": ("true", "calicolab's Typha exports no process_* metrics"),
    "PrometheusMetricsCAFile": ("", "the metrics endpoint is plain http"),
    "PrometheusMetricsCertFile": ("", "the metrics endpoint is plain http"),
    "PrometheusMetricsKeyFile": ("", "the metrics endpoint is plain http"),
    "PrometheusMetricsClientAuth": ("RequireAndVerifyClientCert", "the metrics endpoint is plain http"),
    "SnapshotCacheMaxBatchSize": ("100", "calicolab's Typha keeps one cache, not Calico's breadcrumbs"),
    "ServerMaxFallBehindSecs": ("300", "calicolab's Typha does not drop a client for falling behind"),
    "ServerNewClientFallBehindGracePeriod": ("300", "calicolab's Typha does not drop a client for "
                                             "falling behind"),
    "ServerMinBatchingAgeThresholdSecs": ("0.01", "calicolab's Typha batches whatever is queued"),
    "ServerKeyFile": ("", _NO_TLS),
    "ServerCertFile": ("", _NO_TLS),
    "CAFile": ("", _NO_TLS),
    "ClientCN": ("", _NO_TLS),
    "ClientURISAN": ("", _NO_TLS),
    "DebugMemoryProfilePath": ("", "no memory profiling"),
    "DebugDisableLogDropping": ("false", "no log dropping to disable"),
    "DebugHost": ("localhost", "no pprof debug server"),
    "DebugPort": ("", "no pprof debug server"),
    "ConnectionRebalancingMode": ("none", _ONE_TYPHA),
    "ConnectionDropIntervalSecs": ("1", _ONE_TYPHA),
    "ShutdownTimeoutSecs": ("300", "calicolab's Typha closes every connection at once on SIGTERM"),
    "ShutdownConnectionDropIntervalMaxSecs": ("1", "calicolab's Typha closes every connection at "
                                              "once on SIGTERM"),
    "MaxConnectionsUpperLimit": ("10000", _ONE_TYPHA),
    "MaxConnectionsLowerLimit": ("400", _ONE_TYPHA),
    "K8sServicePollIntervalSecs": ("30", _ONE_TYPHA),
    "K8sNamespace": ("kube-system", _ONE_TYPHA),
    "K8sServiceName": ("calico-typha", _ONE_TYPHA),
    "K8sPortName": ("calico-typha", _ONE_TYPHA),
}

#: parameters whose feature 'none' turns off (calicolab never has it on)
_NONE_OFF = {"LogFilePath", "LogSeverityFile", "LogSeveritySys"}

_BY_ENV = {PREFIX + n.upper(): n for n in [*IMPLEMENTED, *NOT_IMPLEMENTED]}


class ConfigError(ValueError):
    """A Typha parameter calicolab refuses (not implemented, or a bad value); names it."""


@dataclass
class TyphaConfig:
    """Typha's parameters after parsing; ``unknown`` lists TYPHA_* names Typha does not know."""

    values: dict[str, object] = field(default_factory=dict)
    unknown: list[str] = field(default_factory=list)

    def __getitem__(self, name: str) -> object:
        return self.values[name]

    @property
    def port(self) -> int:
        """The sync port: ServerPort, 0 meaning Typha's default 5473."""
        return int(self.values["ServerPort"]) or DEFAULT_PORT  # type: ignore[arg-type]


def _parse(name: str, raw: str) -> object:
    kind, _default, extra = IMPLEMENTED[name]
    env = PREFIX + name.upper()
    text = raw.strip()
    if kind == "bool":
        low = text.lower()
        if low in ("true", "1", "yes", "y", "t"):
            return True
        if low in ("false", "0", "no", "n", "f", "none"):
            return False
        raise ConfigError(f"{env}={raw!r}: not a boolean")
    if kind == "int":
        try:
            value = int(text)
        except ValueError:
            raise ConfigError(f"{env}={raw!r}: not an integer") from None
        lo, hi = extra
        if value < lo or (hi is not None and value > hi):
            raise ConfigError(f"{env}={raw!r}: out of range {lo}..{'' if hi is None else hi}")
        return value
    if kind == "seconds":
        try:
            value = float(text)
        except ValueError:
            raise ConfigError(f"{env}={raw!r}: not a number of seconds") from None
        if value < 0:
            raise ConfigError(f"{env}={raw!r}: negative")
        return value
    if kind == "oneof":
        by_low = {c.lower(): c for c in extra}
        if text.lower() not in by_low:
            raise ConfigError(f"{env}={raw!r}: not one of {', '.join(extra)}")
        return by_low[text.lower()]
    return text


def load(env: Mapping[str, str]) -> TyphaConfig:
    """Typha's configuration from ``env``. Raises :class:`ConfigError` naming the first
    parameter calicolab does not implement (set to a non-default value) or cannot parse.
    ``DATASTORE_TYPE`` stands in for TYPHA_DATASTORETYPE and ``ETCD_ENDPOINTS`` for
    TYPHA_ETCDENDPOINTS when those are unset (libcalico-go's apiconfig variables)."""
    cfg = TyphaConfig()
    for name, (_kind, default, _extra) in IMPLEMENTED.items():
        cfg.values[name] = _parse(name, default) if default != "" or _kind == "string" else None
    given: dict[str, str] = {}
    for key, raw in env.items():
        if not key.startswith(PREFIX) or raw == "":  # Typha ignores an empty value
            continue
        name = _BY_ENV.get(key.upper())
        if name is None:
            cfg.unknown.append(key)
            continue
        given[name] = raw
    refused = []
    for name, raw in sorted(given.items()):
        if name in NOT_IMPLEMENTED:
            default, why = NOT_IMPLEMENTED[name]
            ok = raw.strip().lower() == default.lower() or (
                name in _NONE_OFF and raw.strip().lower() == "none")
            if not ok:
                refused.append(f"{PREFIX}{name.upper()}={raw!r} ({why})")
            continue
        cfg.values[name] = _parse(name, raw)
    if refused:
        raise ConfigError("not implemented in calicolab's Typha: " + "; ".join(refused))
    if "DatastoreType" not in given and env.get("DATASTORE_TYPE"):
        cfg.values["DatastoreType"] = _parse("DatastoreType", env["DATASTORE_TYPE"])
    if "EtcdEndpoints" not in given and env.get("ETCD_ENDPOINTS"):
        cfg.values["EtcdEndpoints"] = env["ETCD_ENDPOINTS"]
    return cfg
