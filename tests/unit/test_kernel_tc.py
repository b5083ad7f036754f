"""The clsact qdisc and cls_bpf filter requests: the bytes iproute2 6.1's tc sends.

Recorded with ``strace -e trace=sendmsg -xx`` around ``tc qdisc add dev v0 clsact``,
``tc filter replace dev v0 ingress prio 3233 handle 1 bpf da object-pinned <pin>`` (tc names
the program "<name>:[*fsobj]" and passes its fd, 4 here), ``tc filter del dev v0 ingress prio
3233 handle 1 bpf`` and ``tc qdisc del dev v0 clsact``, with v0 at ifindex 5.
"""

from __future__ import annotations

import pytest

from kernel import tc

pytestmark = pytest.mark.unit

TC_QDISC = "00000000050000000000fffff1ffffff000000000b000100636c736163740000"
TC_FILTER = ("000000000500000001000000f2ffffff0003a10c0800010062706600"
             "30000200" "0800060004000000" "1b00070063616c695f697069705f6465633a5b2a66736f626a5d00" "00"
             "0800080001000000")
TC_FILTER_DEL = "000000000500000001000000f2ffffff0000a10c0800010062706600"


def test_requests_are_tcs_bytes():
    assert tc.clsact_body(5).hex() == TC_QDISC  # add and del send the same body
    assert tc.bpf_filter_body(5, "ingress", 3233, 1, 4, "cali_ipip_dec:[*fsobj]").hex() == TC_FILTER
    assert tc.filter_del_body(5, "ingress", 3233, 1).hex() == TC_FILTER_DEL


def test_hooks_and_priorities():
    assert tc.hook_parent("ingress") == 0xFFFFFFF2 and tc.hook_parent("egress") == 0xFFFFFFF3
    with pytest.raises(ValueError, match="not ingress or egress"):
        tc.hook_parent("root")
    with pytest.raises(ValueError, match="out of range"):
        tc.filter_info(0)
    assert tc.filter_info(1) == 0x00010300


def test_a_dumped_filter_parses():
    """A filter message as the kernel answers a dump: the request's layout plus TCA_BPF_ID and TAG."""
    body = bytes.fromhex(TC_FILTER)
    opts_extra = tc.rtnl.attr_u32(tc.TCA_BPF_ID, 135) + tc.rtnl.attr(tc.TCA_BPF_TAG, bytes.fromhex("778f590e6bc27ae0"))
    head, opts = body[:28], tc.rtnl.attrs(body, 28)[tc.TCA_OPTIONS]
    msg = head + tc.rtnl.attr(tc.TCA_OPTIONS, opts + opts_extra)
    f = tc.parse_filter(msg, 0, len(msg))
    assert f == tc.BpfFilter(5, "ingress", 3233, 1, 135, "cali_ipip_dec:[*fsobj]",
                             bytes.fromhex("778f590e6bc27ae0"), True)
    other = tc.TCMSG.pack(0, 5, 1, 0xFFFFFFF2, 0) + tc.rtnl.attr_str(tc.TCA_KIND, "u32")
    assert tc.parse_filter(other, 0, len(other)) is None
