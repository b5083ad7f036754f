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


def test_launcher_forwards_importing_only_the_thin_client(tmp_path):
    """The launcher as a runtime execs it (through a link, as installed) forwards to a server
    and prints its answer; beyond what ``python3 -I -S`` loads before any code it imports
    only cni, cni.main, cni.wire and _socket (not os: ~1 ms per exec; not __future__)."""
    import socket
    import threading

    sock_path = str(tmp_path / "cni.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(sock_path)
    srv.listen(1)
    got: list[list[bytes]] = []

    def serve() -> None:
        conn, _ = srv.accept()
        with conn:
            data = b""
            while chunk := conn.recv(65536):
                data += chunk
            got.append(wire.decode(data))
            conn.sendall(wire.encode([b"ok", b"0", b'{"cniVersion": "1.0.0"}', b""]))

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    link = tmp_path / "bin" / "calico"
    link.parent.mkdir()
    link.symlink_to(REPO / "cni" / "bin" / "calico")
    proc = subprocess.run(["/usr/bin/python3", "-I", "-S", "-X", "importtime", str(link)], input=b'{"x": 1}',
                          env={"CNI_COMMAND": "ADD", "CALICO_CNI_SOCKET": sock_path}, capture_output=True,
                          timeout=30)
    t.join(10)
    srv.close()
    assert proc.returncode == 0 and proc.stdout == b'{"cniVersion": "1.0.0"}\n', proc
    assert got and got[0][0] == b"calico" and got[0][3] == b'{"x": 1}' and b"CNI_COMMAND=ADD" in got[0][4:]
    imported = {line.split("|")[-1].strip() for line in proc.stderr.decode().splitlines()
                if line.startswith("import time:") and not line.endswith("imported package")}
    baseline = subprocess.run(["/usr/bin/python3", "-I", "-S", "-X", "importtime", "-c", "pass"],
                              capture_output=True, text=True, check=True).stderr
    before = {line.split("|")[-1].strip() for line in baseline.splitlines() if line.startswith("import time:")}
    assert imported - before - {"imported package"} == {"cni", "cni.main", "cni.wire", "_socket"}, imported - before
