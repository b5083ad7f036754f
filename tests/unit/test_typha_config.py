"""Typha's configuration (agent.typha.config): Calico's TYPHA_<PARAM> names, parsed and
range-checked; a parameter calicolab does not implement is refused by name."""

from __future__ import annotations

import pytest

from agent.typha.config import NOT_IMPLEMENTED, ConfigError, load

pytestmark = pytest.mark.unit


def test_defaults_are_typhas():
    cfg = load({})
    assert cfg.port == 5473 and cfg["ServerPingIntervalSecs"] == 10.0 and cfg["ServerPongTimeoutSecs"] == 60.0
    assert cfg["PrometheusMetricsEnabled"] is False and cfg["PrometheusMetricsPort"] == 9093
    assert cfg["HealthEnabled"] is False and cfg["HealthPort"] == 9098 and cfg["HealthHost"] == "localhost"
    assert cfg["DatastoreType"] is None and cfg["ServerMaxMessageSize"] == 100


def test_settings_as_calico_names_them():
    cfg = load({"TYPHA_DATASTORETYPE": "Kubernetes", "TYPHA_SERVERPORT": "5474",
                "TYPHA_PROMETHEUSMETRICSENABLED": "true", "TYPHA_PROMETHEUSMETRICSPORT": "9191",
                "TYPHA_HEALTHENABLED": "true", "TYPHA_SERVERPINGINTERVALSECS": "2.5",
                "TYPHA_LOGSEVERITYSCREEN": "debug", "TYPHA_NOSUCHTHING": "1", "TYPHA_SERVERHOST": ""})
    assert cfg.port == 5474 and cfg["DatastoreType"] == "kubernetes" and cfg["LogSeverityScreen"] == "DEBUG"
    assert cfg["PrometheusMetricsEnabled"] is True and cfg["PrometheusMetricsPort"] == 9191
    assert cfg["HealthEnabled"] is True and cfg["ServerPingIntervalSecs"] == 2.5
    assert cfg.unknown == ["TYPHA_NOSUCHTHING"]  # Typha too only logs an unknown parameter
    # libcalico-go's apiconfig variable when TYPHA_DATASTORETYPE is unset
    assert load({"DATASTORE_TYPE": "etcdv3", "ETCD_ENDPOINTS": "http://e:2379"})["DatastoreType"] == "etcdv3"


@pytest.mark.parametrize("env, message", [
    ({"TYPHA_SERVERPORT": "70000"}, "TYPHA_SERVERPORT='70000': out of range 0..65535"),
    ({"TYPHA_PROMETHEUSMETRICSENABLED": "maybe"}, "TYPHA_PROMETHEUSMETRICSENABLED='maybe': not a boolean"),
    ({"TYPHA_DATASTORETYPE": "consul"}, "TYPHA_DATASTORETYPE='consul': not one of kubernetes, etcdv3"),
    ({"TYPHA_CONNECTIONREBALANCINGMODE": "kubernetes"},
     "not implemented in calicolab's Typha: TYPHA_CONNECTIONREBALANCINGMODE='kubernetes'"),
    ({"TYPHA_SERVERKEYFILE": "/etc/typha/key.pem"}, "TYPHA_SERVERKEYFILE='/etc/typha/key.pem' (calicolab's Typha serves plain TCP"),
    ({"TYPHA_MAXCONNECTIONSUPPERLIMIT": "20"}, "TYPHA_MAXCONNECTIONSUPPERLIMIT='20'"),
])
def test_refused_by_name(env, message):
    with pytest.raises(ConfigError) as exc:
        load(env)
    assert message in str(exc.value)


def test_unimplemented_at_their_default_or_none_are_accepted():
    """calico-typha.yaml sets TYPHA_LOGFILEPATH=none and TYPHA_LOGSEVERITYSYS=none (file and
    syslog logging off, which is all calicolab does); a parameter set to its default changes nothing."""
    load({"TYPHA_LOGFILEPATH": "none", "TYPHA_LOGSEVERITYSYS": "none", "TYPHA_K8SNAMESPACE": "kube-system",
          "TYPHA_CONNECTIONREBALANCINGMODE": "none"})
    assert {"ConnectionRebalancingMode", "ServerKeyFile", "MaxConnectionsUpperLimit"} <= set(NOT_IMPLEMENTED)


def test_calico_typha_exits_naming_the_setting(monkeypatch, capsys):
    from agent.typha.server import main

    monkeypatch.setenv("TYPHA_CONNECTIONREBALANCINGMODE", "kubernetes")
    assert main([]) == 1
    err = capsys.readouterr().err
    assert err.startswith("calico-typha: not implemented in calicolab's Typha: TYPHA_CONNECTIONREBALANCINGMODE"), err


def test_endpoint_address_picks_the_named_port_of_a_ready_address():
    from datastore.typha import DEFAULT_PORT, endpoint_address

    doc = {"subsets": [{"addresses": [{"ip": "10.0.0.7"}],
                        "ports": [{"name": "metrics", "port": 9093}, {"name": "calico-typha", "port": 5473}]}]}
    assert endpoint_address(doc) == "10.0.0.7:5473"
    assert endpoint_address({"subsets": [{"addresses": [{"ip": "10.0.0.7"}], "ports": [{"port": 7}]}]}) == "10.0.0.7:7"
    assert endpoint_address({"subsets": [{"addresses": [{"ip": "10.0.0.7"}]}]}) == f"10.0.0.7:{DEFAULT_PORT}"
    # not ready (only notReadyAddresses), no subsets, no object: none
    assert endpoint_address({"subsets": [{"notReadyAddresses": [{"ip": "10.0.0.7"}]}]}) is None
    assert endpoint_address({}) is None and endpoint_address(None) is None
