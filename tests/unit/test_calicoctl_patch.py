"""calicoctl patch: Kubernetes strategic merge for types without merge keys (pure)."""

import pytest

from testbed.calicoctl.patch import PatchError, parse_patch, strategic_merge

pytestmark = pytest.mark.unit

ORIG = {"metadata": {"name": "x", "labels": {"a": "1"}, "finalizers": ["f1"]},
        "spec": {"list": [1, 2], "map": {"k": "v", "n": {"deep": 1}}, "s": "t"}}


def test_maps_merge_lists_replace_null_deletes():
    out = strategic_merge(ORIG, {"metadata": {"labels": {"b": "2"}}, "spec": {"list": [3], "s": None,
                                                                              "map": {"n": {"x": 2}}}})
    assert out == {"metadata": {"name": "x", "labels": {"a": "1", "b": "2"}, "finalizers": ["f1"]},
                   "spec": {"list": [3], "map": {"k": "v", "n": {"deep": 1, "x": 2}}}}
    assert ORIG["spec"]["list"] == [1, 2]  # the original is not modified


def test_directives_and_finalizers():
    out = strategic_merge(ORIG, {"spec": {"map": {"$patch": "replace", "only": 1}}})
    assert out["spec"]["map"] == {"only": 1}
    out = strategic_merge(ORIG, {"spec": {"map": {"$patch": "delete"}}})
    assert "map" not in out["spec"]
    out = strategic_merge(ORIG, {"metadata": {"finalizers": ["f2", "f1"]}})
    assert out["metadata"]["finalizers"] == ["f1", "f2"]
    with pytest.raises(PatchError, match="unknown \\$patch"):
        strategic_merge(ORIG, {"spec": {"$patch": "merge"}})
    with pytest.raises(PatchError, match="not supported"):
        strategic_merge(ORIG, {"spec": {"$retainKeys": ["s"]}})


def test_patch_must_be_a_json_object():
    assert parse_patch('{"spec": {}}') == {"spec": {}}
    with pytest.raises(PatchError, match="invalid JSON"):
        parse_patch("spec: {}")
    with pytest.raises(PatchError, match="JSON object"):
        parse_patch("[1]")


def test_patching_an_ippool_mode_and_both_modes_refused_with_calicos_message():
    from datastore.errors import ValidationError
    from datastore.resources import IPPool, Metadata
    from testbed.calicoctl.patch import patched

    pool = IPPool(metadata=Metadata(name="default-ipv4-ippool"), spec=IPPool.Spec(cidr="192.168.0.0/16",
                                                                                   ipip_mode="Always"))
    pool.apply_defaults()
    vx = patched(pool, parse_patch('{"spec":{"ipipMode":"Never","vxlanMode":"Always"}}'))
    vx.validate()
    assert (vx.spec.ipip_mode, vx.spec.vxlan_mode, vx.spec.cidr) == ("Never", "Always", "192.168.0.0/16")
    both = patched(pool, parse_patch('{"spec":{"vxlanMode":"CrossSubnet"}}'))
    with pytest.raises(ValidationError, match="Cannot enable both VXLAN and IPIP on the same IPPool"):
        both.validate()
