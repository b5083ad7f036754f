"""The built-in kinds' schema graph cached on disk (testbed.apiserver.schema.preload):
the same Nodes as a build from the client's models, loaded without importing them."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from testbed.apiserver import schema
from testbed.apiserver.registry import Registry

pytestmark = pytest.mark.unit

ROOTS = sorted({rt.model for rt in Registry().all() if rt.model} | {"V1ObjectMeta"})


def same(a: schema.Node | None, b: schema.Node | None, seen: set | None = None) -> str:
    """'' when the graphs under ``a`` and ``b`` are equal (cycles allowed), else where they differ."""
    seen = set() if seen is None else seen
    if (a is None) != (b is None):
        return "item presence"
    if a is None or (id(a), id(b)) in seen:
        return ""
    seen.add((id(a), id(b)))
    for f in ("type", "required", "model", "description", "patch_strategy", "merge_key", "format",
              "preserve_unknown", "embedded"):
        if getattr(a, f) != getattr(b, f):
            return f"{a.model or a.type}.{f}: {getattr(a, f)!r} != {getattr(b, f)!r}"
    if list(a.fields) != list(b.fields):
        return f"{a.model or a.type}: fields {list(a.fields)} != {list(b.fields)}"
    for k in a.fields:
        d = same(a.fields[k], b.fields[k], seen)
        if d:
            return f"{a.model or a.type}.{k} > {d}"
    return same(a.item, b.item, seen)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CALICOLAB_SCHEMA_CACHE", str(tmp_path))
    saved = dict(schema._preloaded)
    schema._preloaded.clear()
    yield tmp_path
    schema._preloaded.clear()
    schema._preloaded.update(saved)


def test_cached_graph_equals_a_build_from_the_client_models(cache):
    schema.preload(ROOTS)
    files = os.listdir(cache)
    assert len(files) == 1 and files[0].startswith("models-"), files
    schema._preloaded.clear()
    schema.preload(ROOTS)  # now from the file
    for m in ROOTS:
        loaded = schema.model_node(m)
        assert loaded is schema._preloaded[m]
        diff = same(loaded, schema._build(m, {}))
        assert diff == "", f"{m}: {diff}"
    pod = schema.model_node("V1Pod")
    # a field's copy of a model node (its own description) shares the model's fields
    assert pod.fields["metadata"] is not schema.model_node("V1ObjectMeta")
    assert pod.fields["metadata"].fields is schema.model_node("V1ObjectMeta").fields
    containers = pod.fields["spec"].fields["containers"]
    assert (containers.patch_strategy, containers.merge_key) == ("merge", "name")
    # a recursive model stays recursive
    props = schema.model_node("V1CustomResourceDefinition").fields["spec"].fields["versions"].item \
        .fields["schema"].fields["openAPIV3Schema"]
    assert props.fields["properties"].item.fields is props.fields


def test_a_start_with_the_cache_does_not_import_the_client_models(cache):
    schema.preload(ROOTS)
    code = ("import sys, json; from testbed.apiserver import schema; schema.preload(json.loads(sys.argv[1])); "
            "schema.check({'spec': {'containers': [{'name': 'a'}]}}, schema.model_node('V1Pod'), '', []); "
            "print(sorted(m for m in sys.modules if m.startswith('kubernetes')))")
    out = subprocess.run([sys.executable, "-c", code, json.dumps(ROOTS)], capture_output=True, text=True,
                         env=dict(os.environ, CALICOLAB_SCHEMA_CACHE=str(cache)), check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_an_unreadable_cache_is_built_again(cache):
    schema.preload(["V1ConfigMap"])
    (path,) = cache.iterdir()
    path.write_text("{not json")
    schema._preloaded.clear()
    schema.preload(["V1ConfigMap"])
    assert list(schema.model_node("V1ConfigMap").fields)[:2] == ["apiVersion", "binaryData"]
    assert json.loads(path.read_text())["roots"] == {"V1ConfigMap": 0}
