"""Unit tests of calicoctl's input parsing (YAML/JSON documents, Lists, errors with positions)."""

from __future__ import annotations

import io

import pytest

from testbed.calicoctl.resources import InputError, dump_yaml, read_documents

pytestmark = pytest.mark.unit


def _docs(tmp_path, text: str):
    f = tmp_path / "in.yaml"
    f.write_text(text)
    return read_documents(str(f))


def test_multi_document_yaml_with_positions(tmp_path):
    docs = _docs(tmp_path, "kind: IPPool\nmetadata: {name: a}\n---\n---\nkind: Node\nmetadata: {name: b}\n")
    assert [d["kind"] for _, d in docs] == ["IPPool", "Node"]
    assert docs[1][0].endswith("in.yaml: document 2: ")


def test_json_object_array_concatenation_and_list_expansion(tmp_path):
    text = ('{"kind": "IPPool", "metadata": {"name": "a"}}\n'
            '[{"kind": "Node", "metadata": {"name": "b"}}]\n'
            '{"kind": "NodeList", "items": [{"kind": "Node", "metadata": {"name": "c"}}]}\n')
    assert [d["metadata"]["name"] for _, d in _docs(tmp_path, text)] == ["a", "b", "c"]


def test_stdin(monkeypatch):
    docs = read_documents("-", stdin=io.StringIO("kind: Node\nmetadata: {name: x}\n"))
    assert docs[0][0] == "stdin: " and docs[0][1]["metadata"]["name"] == "x"


@pytest.mark.parametrize("text,msg", [
    ("kind: IPPool\n  bad: [\n", "invalid YAML at line"),
    ('{"kind": "IPPool",,}', "invalid JSON at line 1 column 19"),
])
def test_syntax_errors_name_the_position(tmp_path, text, msg):
    with pytest.raises(InputError, match=msg):
        _docs(tmp_path, text)


def test_missing_file():
    with pytest.raises(InputError, match="cannot read /nonexistent.yaml: No such file"):
        read_documents("/nonexistent.yaml")


def test_yaml_output_is_sorted_and_double_quoted():
    out = dump_yaml({"spec": {"cidr": "10.0.0.0/8", "b": True}, "metadata": {"resourceVersion": "12",
                                                                              "name": "p"}})
    assert out == ('metadata:\n  name: p\n  resourceVersion: "12"\n'
                   "spec:\n  b: true\n  cidr: 10.0.0.0/8\n")
