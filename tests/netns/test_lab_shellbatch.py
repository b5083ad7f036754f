"""A node shell (Mininet's pty) runs a command chain longer than a tty line (testbed.lab.shellbatch).

Before the split, a 100-node lab hung building its segment bridge: one 8 KiB line never
reached bash (issue 18)."""

from __future__ import annotations

import pytest

from testbed.lab import shellbatch
from tests.support import require_root, unique

pytestmark = pytest.mark.netns


def test_a_chain_of_8_kib_runs_in_a_mininet_shell():
    require_root()
    from mininet.node import Host

    host = Host(unique("shb"), inNamespace=True)
    try:
        cmds = [f"echo step{i} >/dev/null" for i in range(400)] + ["ip link add sb0 type bridge", "ip -o link show sb0"]
        assert len(" && ".join(cmds)) > 8000
        out = shellbatch.run(host.cmd, cmds, "CHAINED", "bridge")
        assert "sb0" in out and out.count("CHAINED") == len(shellbatch.chunks(cmds, "CHAINED")) > 1
    finally:
        host.terminate()
