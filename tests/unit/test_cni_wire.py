"""Unit tests of the thin CNI executable's framing (cni.wire) and its import budget."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cni import wire

pytestmark = pytest.mark.unit
REPO = Path(__file__).resolve().parents[2]


def test_encode_is_netstrings():
    assert wire.encode([b"calico", b"", b"a:b,c"]) == b"6:calico,0:,5:a:b,c,"


@pytest.mark.parametrize("fields", [[], [b""], [b"x" * 70000, b"\x00\xff", b"K=V=W"]])
def test_round_trip(fields):
    assert wire.decode(wire.encode(fields)) == fields


@pytest.mark.parametrize("data, where", [(b"x:abc,", "length at byte 0"), (b"3:ab", "truncated"),
                                         (b"2:abc,", "not terminated"), (b"1:a,9", "length at byte 4"),
                                         (b"1:a,99999999999999:", "length at byte 4")])
def test_malformed_input_is_rejected_naming_where(data, where):
    with pytest.raises(ValueError, match=where):
        wire.decode(data)


def test_thin_client_imports_no_json_or_socket_module():
    """The executable's per-call cost: json/re/enum/socket/selectors stay out of its imports."""
    code = ("import sys; sys.path.insert(0, sys.argv[1]); before = set(sys.modules); import cni.main; "
            "print(' '.join(sorted(set(sys.modules) - before)))")
    out = subprocess.run([sys.executable, "-I", "-S", "-c", code, str(REPO)], capture_output=True, text=True,
                         check=True).stdout.split()
    assert not {"json", "re", "enum", "socket", "selectors"} & set(out), out
