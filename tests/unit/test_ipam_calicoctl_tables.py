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
