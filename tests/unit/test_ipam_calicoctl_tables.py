"""Unit tests of calicoctl's table rendering (tabwriter, tablewriter boxes, %.5g)."""

from __future__ import annotations

import pytest

from testbed.calicoctl.tables import box_table, gfmt, tab_table, usage_cell

pytestmark = pytest.mark.unit


def test_go_g_format_and_usage_cells():
    assert gfmt(512) == "512"
    assert gfmt(65536) == "65536"
    assert gfmt(16777216) == "1.6777e+07"  # a /8 pool, as calicoctl prints it
    assert usage_cell(81, 512) == "81 (16%)"
    assert usage_cell(431, 512) == "431 (84%)"
    assert usage_cell(3, 65536) == "3 (0%)"
    assert usage_cell(0, 0) == "0 (0%)"


def test_box_table_matches_calicoctl_ipam_show():
    # the row shape of projectcalico/calico#6968
    text = box_table(["GROUPING", "CIDR", "IPS TOTAL", "IPS IN USE", "IPS FREE"],
                     [["IP Pool", "10.254.82.0/23", gfmt(512), usage_cell(81, 512), usage_cell(431, 512)]])
    assert text.splitlines() == [
        "+----------+----------------+-----------+------------+-----------+",
        "| GROUPING |      CIDR      | IPS TOTAL | IPS IN USE | IPS FREE  |",
        "+----------+----------------+-----------+------------+-----------+",
        "| IP Pool  | 10.254.82.0/23 |       512 | 81 (16%)   | 431 (84%) |",
        "+----------+----------------+-----------+------------+-----------+",
    ]


def test_tabwriter_spacing():
    text = tab_table(["NAME", "CIDR", "SELECTOR"], [["default-ipv4-ippool", "192.168.0.0/16", "all()"]])
    assert text == ("NAME                  CIDR             SELECTOR\n"
                    "default-ipv4-ippool   192.168.0.0/16   all()\n")
    # minimum cell width 5 (including padding)
    assert tab_table(["A", "B"], [["x", "y"]]) == "A    B\nx    y\n"


def test_ipam_show_rows_in_calicos_list_order():
    """v3.28.1's GetUtilization: pools in list order (by name), each followed by its blocks
    in list order (by object name: 192-168-133-0-24 before 192-168-9-0-24), then blocks
    outside every pool without a pool row."""
    import io
    from ipaddress import IPv4Network
    from types import SimpleNamespace

    from testbed.calicoctl.ipam_cmds import show

    def block(cidr: str, used: int) -> SimpleNamespace:
        net = IPv4Network(cidr)
        return SimpleNamespace(cidr=net, size=net.num_addresses, num_allocated=lambda: used)

    ipam = SimpleNamespace(
        pools=lambda: [SimpleNamespace(name="z-pool", cidr=IPv4Network("10.0.0.0/16")),
                       SimpleNamespace(name="default-ipv4-ippool", cidr=IPv4Network("192.168.0.0/16"))],
        blocks=lambda: [block("192.168.9.0/24", 1), block("10.0.1.0/24", 2),
                        block("192.168.133.0/24", 4), block("172.16.0.0/26", 1)])
    out = io.StringIO()
    assert show(ipam, True, out) == 0
    rows = [[c.strip() for c in ln.split("|")[1:3]] for ln in out.getvalue().splitlines()[3:-1]]
    assert rows == [["IP Pool", "192.168.0.0/16"], ["Block", "192.168.133.0/24"], ["Block", "192.168.9.0/24"],
                    ["IP Pool", "10.0.0.0/16"], ["Block", "10.0.1.0/24"], ["Block", "172.16.0.0/26"]]
    out = io.StringIO()
    show(ipam, False, out)
    assert [ln.split("|")[2].strip() for ln in out.getvalue().splitlines()[3:-1]] == ["192.168.0.0/16", "10.0.0.0/16"]
