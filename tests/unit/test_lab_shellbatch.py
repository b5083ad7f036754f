"""testbed.lab.shellbatch: command chains split under the tty's line limit (a fake shell)."""

from __future__ import annotations

import pytest

from testbed.lab import shellbatch

pytestmark = pytest.mark.unit


def test_a_short_chain_is_one_line_as_before():
    assert shellbatch.chunks(["ip link set lo up", "true"], "DONE") == ["ip link set lo up && true && echo DONE"]


def test_a_long_chain_is_split_in_order_and_every_line_fits():
    cmds = [f"ip link set dev k8s-w{i} master lan0 up" for i in range(300)]
    lines = shellbatch.chunks(cmds, "BRIDGED")
    assert len(lines) > 1
    assert all(len(line.encode()) + 1 <= shellbatch.LINE_LIMIT for line in lines)
    assert all(line.endswith(" && echo BRIDGED") for line in lines)
    assert [c for line in lines for c in line.removesuffix(" && echo BRIDGED").split(" && ")] == cmds


def test_one_command_too_long_for_a_line_is_an_error_naming_it():
    with pytest.raises(ValueError, match="longer than a tty line"):
        shellbatch.chunks(["x" * 5000], "M")


def test_run_stops_at_the_first_line_that_fails_and_names_it():
    sent = []

    def cmd(line: str) -> str:
        sent.append(line)
        return "RTNETLINK answers: File exists\r\n" if len(sent) == 2 else "M\r\n"

    with pytest.raises(RuntimeError, match="segment lan0: RTNETLINK answers: File exists"):
        shellbatch.run(cmd, ["true"] * 2000, "M", "segment lan0", limit=1000)
    assert len(sent) == 2


def test_run_of_nothing_still_talks_to_the_shell_once():
    assert shellbatch.run(lambda line: line.replace("echo ", "") + "\n", [], "OK", "x") == "OK\n"
