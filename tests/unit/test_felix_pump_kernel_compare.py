"""The kernel-tier capture signature with TTL and DF: what the userspace tunl0 is held to."""

import pytest

from testbed.capture.pcapassert import Frame, IpHeader
from testbed.kerneltier.flow import signature

pytestmark = pytest.mark.unit


def frame(*ips: IpHeader, icmp: int | None = 8) -> Frame:
    return Frame(index=1, time=0.0, source="x", size=100, ips=ips, icmp_type=icmp, icmp_code=0)


INNER = IpHeader("192.168.1.1", "192.168.2.1", 1, 63, 84, df=True)
KERNEL_OUTER = IpHeader("172.30.0.11", "172.30.0.12", 4, 63, 104, df=True)  # ttl inherit, DF copied
OLD_PUMP_OUTER = IpHeader("172.30.0.11", "172.30.0.12", 4, 64, 104, df=True)  # what the pump used to send


def test_ttl_and_df_are_compared_when_asked():
    k = signature([frame(KERNEL_OUTER, INNER)], ttl_df=True)
    assert k == {((("172.30.0.11", "172.30.0.12", 4, 104, 63, True),
                   ("192.168.1.1", "192.168.2.1", 1, 84, 63, True)), 8, 0): 1}
    assert set(signature([frame(OLD_PUMP_OUTER, INNER)], ttl_df=True)) != set(k)
    no_df = IpHeader("172.30.0.11", "172.30.0.12", 4, 63, 104, df=False)
    assert set(signature([frame(no_df, INNER)], ttl_df=True)) != set(k)


def test_without_ttl_df_the_old_contract_holds():
    assert signature([frame(OLD_PUMP_OUTER, INNER)]) == signature([frame(KERNEL_OUTER, INNER)])
