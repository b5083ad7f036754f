"""Pure logic of the API server and kubeclient: selectors, patches, schema checks, PKI, tokens."""

from __future__ import annotations

import pytest

from kubeclient.selectors import (
    SelectorError,
    match_label_selector,
    matches,
    parse_fields,
    parse_labels,
)
from testbed.apiserver import patch, schema, tables

pytestmark = pytest.mark.unit


def test_label_selector_syntax():
    reqs = parse_labels("app=web,tier in (a, b),!canary,env!=prod,gen")
    labels = {"app": "web", "tier": "b", "gen": "1"}
    assert matches(reqs, labels)
    assert not matches(reqs, dict(labels, canary="1"))
    assert not matches(reqs, dict(labels, tier="c"))
    assert not matches(reqs, {k: v for k, v in labels.items() if k != "gen"})
    assert matches(parse_labels("x notin (1)"), {})
    with pytest.raises(SelectorError):
        parse_labels("a in (b")
    assert parse_fields("spec.nodeName=n1,status.phase!=Running") == [("spec.nodeName", "=", "n1"),
                                                                       ("status.phase", "!=", "Running")]
    sel = {"matchLabels": {"a": "1"}, "matchExpressions": [{"key": "b", "operator": "In", "values": ["x"]}]}
    assert match_label_selector(sel, {"a": "1", "b": "x"}) and not match_label_selector(sel, {"a": "1"})


def test_strategic_merge_uses_merge_keys():
    node = schema.model_node("V1Deployment")
    live = {"spec": {"template": {"spec": {"containers": [
        {"name": "a", "image": "a:1", "ports": [{"containerPort": 80}], "env": [{"name": "X", "value": "1"}]},
        {"name": "b", "image": "b:1"}]}}}}
    p = {"spec": {"template": {"spec": {
        "$setElementOrder/containers": [{"name": "b"}, {"name": "a"}],
        "containers": [{"name": "a", "env": [{"name": "Y", "value": "2"}], "ports": [{"containerPort": 81}]},
                       {"name": "b", "$patch": "delete"}]}}}}
    out = patch.strategic_merge(live, p, node)
    cs = out["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in cs] == ["a"]
    assert cs[0]["env"] == [{"name": "X", "value": "1"}, {"name": "Y", "value": "2"}]
    assert cs[0]["ports"] == [{"containerPort": 80}, {"containerPort": 81}]


def test_json_patch_and_merge_patch():
    doc = {"a": {"b": [1, 2]}, "c": 1}
    assert patch.json_patch(doc, [{"op": "add", "path": "/a/b/-", "value": 3},
                                  {"op": "remove", "path": "/c"}]) == {"a": {"b": [1, 2, 3]}}
    with pytest.raises(patch.PatchError):
        patch.json_patch(doc, [{"op": "test", "path": "/c", "value": 2}])
    assert patch.merge_patch(doc, {"a": None, "d": {"e": 1}}) == {"c": 1, "d": {"e": 1}}


def test_schema_check_prunes_unknown_and_types():
    node = schema.model_node("V1ConfigMap")
    unknown: list[str] = []
    out = schema.check({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x", "bogus": 1},
                        "data": {"a": "b"}, "extra": True}, node, "", unknown)
    assert unknown == ["metadata.bogus", "extra"] and "extra" not in out
    with pytest.raises(schema.TypeMismatch):
        schema.check({"data": {"a": 1}}, node, "", [])
    pod = schema.model_node("V1Pod")
    schema.check({"spec": {"containers": [{"name": "c", "image": "i", "resources": {"limits": {"cpu": 1}}}]}},
                 pod, "", [])  # quantities may be numbers


def test_ssa_prunes_fields_the_manager_stops_applying():
    node = schema.model_node("V1ConfigMap")
    first = {"metadata": {"labels": {"a": "1", "b": "2"}}, "data": {"x": "1", "y": "2"}}
    live = patch.apply_patch({}, first, node, None)
    live["data"]["z"] = "other manager"
    second = {"metadata": {"labels": {"a": "1"}}, "data": {"x": "1"}}
    out = patch.apply_patch(live, second, node, patch.field_set(first, node))
    assert out["metadata"]["labels"] == {"a": "1"} and out["data"] == {"x": "1", "z": "other manager"}


def test_pod_table_status_column():
    pod = {"metadata": {"name": "p", "creationTimestamp": "2020-01-01T00:00:00Z"},
           "spec": {"containers": [{"name": "c"}]},
           "status": {"phase": "Running", "containerStatuses": [
               {"name": "c", "ready": False, "restartCount": 2,
                "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}}
    t = tables.table("Pod", [pod])
    assert [c["name"] for c in t["columnDefinitions"]][:5] == ["Name", "Ready", "Status", "Restarts", "Age"]
    assert t["rows"][0]["cells"][:4] == ["p", "0/1", "CrashLoopBackOff", "2"]
    assert tables.human_duration(3700) == "61m" and tables.human_duration(90000) == "25h"


def test_pki_and_service_account_tokens(tmp_path):
    from cryptography import x509

    from testbed.apiserver import auth, pki

    p = pki.write_pki(str(tmp_path / "pki"), "cp-node", ["192.0.2.10"])
    cert = x509.load_pem_x509_certificate(open(p.serving_crt, "rb").read())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) >= {
        "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local",
        "cp-node"}
    assert {str(i) for i in san.get_values_for_type(x509.IPAddress)} >= {"10.96.0.1", "127.0.0.1", "192.0.2.10"}
    admin = x509.load_pem_x509_certificate(open(p.admin_crt, "rb").read())
    assert "O=system:masters" in admin.subject.rfc4514_string()
    tok = auth.sign_token(open(p.sa_key, "rb").read(), "kube-system", "calico-node", "uid-1")
    claims = auth.TokenVerifier(open(p.sa_pub, "rb").read()).verify(tok)
    assert auth.user_from_claims(claims).name == "system:serviceaccount:kube-system:calico-node"
    with pytest.raises(auth.TokenError):
        auth.TokenVerifier(open(p.sa_pub, "rb").read()).verify(tok[:-4] + "AAAA")
    other = pki.write_pki(str(tmp_path / "other"))
    with pytest.raises(auth.TokenError):
        auth.TokenVerifier(open(other.sa_pub, "rb").read()).verify(tok)


def _field(num: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field (test encoder)."""
    return bytes([num << 3 | 2, len(payload)]) + payload


def test_protobuf_decodes_a_configmap_envelope():
    from testbed.apiserver import protobuf

    meta = _field(1, b"cm1") + _field(3, b"ns1") + _field(11, _field(1, b"app") + _field(2, b"web"))
    entry = _field(1, b"k") + _field(2, b"v")
    raw = _field(1, meta) + _field(2, entry)
    envelope = protobuf.MAGIC + _field(1, _field(1, b"v1") + _field(2, b"ConfigMap")) + _field(2, raw)
    assert protobuf.decode(envelope) == {"apiVersion": "v1", "kind": "ConfigMap",
                                         "metadata": {"name": "cm1", "namespace": "ns1", "labels": {"app": "web"}},
                                         "data": {"k": "v"}}
    with pytest.raises(protobuf.ProtobufError):  # a field number the tables do not know, with a value
        protobuf.decode(protobuf.MAGIC + _field(1, _field(1, b"v1") + _field(2, b"ConfigMap"))
                        + _field(2, _field(31, b"x")))
    with pytest.raises(protobuf.ProtobufError):
        protobuf.decode(b"{}")


def test_the_cni_kubeconfig_server_calico_writes_is_understood():
    """install-cni writes ``server: https://[<KUBERNETES_SERVICE_HOST>]:<port>`` (brackets
    whatever the family, as Calico's install.go): the client reaches 10.96.0.1:443."""
    from kubeclient import Client, ConfigError
    from kubeclient.config import Config

    c = Client(Config(server="https://[10.96.0.1]:443"))
    assert (c.scheme, c.host, c.port) == ("https", "10.96.0.1", 443)
    assert Client(Config(server="https://[fd00:96::1]:443")).host == "fd00:96::1"
    with pytest.raises(ConfigError, match="invalid server URL"):
        Client(Config(server="https://[10.96.0.1:443"))


def test_kubeconfig_ca_is_the_only_trust_anchor(tmp_path):
    """A kubeconfig naming a CA (data or file) trusts that CA alone, as client-go does: the
    machine's trust store is not loaded (it cost ~80 ms of CPU in every lab process)."""
    import ssl

    from kubeclient.config import Config
    from testbed.apiserver import pki

    p = pki.write_pki(str(tmp_path / "pki"), "cp-node", ["192.0.2.10"])
    ca_pem = open(p.ca_crt, "rb").read()
    for cfg in (Config(server="https://192.0.2.10:6443", ca_data=ca_pem),
                Config(server="https://192.0.2.10:6443", ca_file=p.ca_crt)):
        ctx = cfg.ssl_context()
        anchors = ctx.get_ca_certs()
        assert [dict(x[0] for x in a["subject"]).get("commonName") for a in anchors] == ["kubernetes"]
        assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    ctx = Config(server="https://192.0.2.10:6443", insecure=True).ssl_context()
    assert ctx.verify_mode == ssl.CERT_NONE and not ctx.check_hostname


def test_token_signing_loads_the_key_once(tmp_path):
    """Every TokenRequest signs with the lab's sa.key: it is loaded (and RSA-checked) once,
    and the tokens still verify and name the key's ID."""
    import json

    from testbed.apiserver import auth, pki

    p = pki.write_pki(str(tmp_path / "pki"), "cp-node", ["192.0.2.10"])
    key_pem, pub_pem = open(p.sa_key, "rb").read(), open(p.sa_pub, "rb").read()
    auth.signing_key.cache_clear()
    toks = [auth.sign_token(key_pem, "kube-system", f"sa{i}", f"uid-{i}") for i in range(3)]
    assert auth.signing_key.cache_info().misses == 1 and auth.signing_key.cache_info().hits == 2
    verifier = auth.TokenVerifier(pub_pem)
    assert [verifier.verify(t)["sub"] for t in toks] == [f"system:serviceaccount:kube-system:sa{i}" for i in range(3)]
    header = json.loads(auth._unb64url(toks[0].split(".")[0]))
    assert header == {"alg": "RS256", "kid": auth._kid(pub_pem)}


def test_a_verified_token_is_not_rsa_checked_again_but_its_time_bounds_are(tmp_path):
    """The verifier remembers tokens whose signature verified (clients send the same token
    with every request); expiry, issuer and audience are still checked every time, and a
    token that failed is checked again."""
    from testbed.apiserver import auth, pki

    p = pki.write_pki(str(tmp_path / "pki"), "cp-node", ["192.0.2.10"])
    key_pem, pub_pem = open(p.sa_key, "rb").read(), open(p.sa_pub, "rb").read()
    verifier = auth.TokenVerifier(pub_pem)
    checks: list[bytes] = []
    real = verifier.pub.verify
    verifier.pub = type("Counting", (), {"verify": lambda self, sig, *a: (checks.append(sig), real(sig, *a))})()
    tok = auth.sign_token(key_pem, "kube-system", "calico-node", "uid-1", expiration=600, now=1000.0)
    for _ in range(3):
        claims = verifier.verify(tok, now=1100.0)
        assert claims["sub"] == "system:serviceaccount:kube-system:calico-node"
        claims["sub"] = "changed by a caller"  # a copy: the remembered claims stay
    assert len(checks) == 1
    with pytest.raises(auth.TokenError, match="expired"):
        verifier.verify(tok, now=1700.0)
    bad = tok[:-4] + "AAAA"
    for _ in range(2):
        with pytest.raises(auth.TokenError, match="invalid signature"):
            verifier.verify(bad, now=1100.0)
    assert len(checks) == 3
    verifier.CACHED = 1
    other = auth.sign_token(key_pem, "kube-system", "other", "uid-2", now=1000.0)
    verifier.verify(other, now=1100.0)
    verifier.verify(tok, now=1100.0)  # pushed out by the other one: checked again
    assert len(checks) == 5
