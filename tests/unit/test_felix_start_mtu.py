"""Felix writes /var/lib/calico/mtu at start, before its first sync, from the
FelixConfigurations and the IP pools it reads once (as Felix's start-up lists the pools for the
encapsulation and its dataplane driver then writes the file); every apply writes it again from
the synced state. A stand-in datastore client, a fake kernel, no root."""

from __future__ import annotations

import pytest

from agent.clock import FakeClock
from agent.felix.daemon import Felix
from datastore.errors import DatastoreUnavailable
from datastore.resources import FelixConfiguration, IPPool, Metadata
from kernel.fake import FakeKernel

pytestmark = pytest.mark.unit


class Client:
    """``list`` as the datastore client answers it; ``fail``: the datastore is down."""

    def __init__(self, objs: dict[str, list], fail: bool = False):
        self.objs, self.fail, self.listed = objs, fail, []

    def list(self, kind: str, namespace: str | None = None) -> list:
        self.listed.append(kind)
        if self.fail:
            raise DatastoreUnavailable("connection refused")
        return self.objs.get(kind, [])


def pool(name: str, cidr: str, ipip: str = "Never", vxlan: str = "Never", disabled: bool = False) -> IPPool:
    return IPPool(metadata=Metadata(name=name), spec=IPPool.Spec(cidr=cidr, ipip_mode=ipip, vxlan_mode=vxlan,
                                                                 disabled=disabled))


def felix(client: Client, tmp_path, env: dict | None = None) -> Felix:
    k = FakeKernel("node")
    k.add_link("eth0", cidr="172.31.9.1/24")  # the host MTU: 1500
    return Felix(client, "w0", env=env or {}, var_lib=str(tmp_path), kernel=k, clock=FakeClock())


@pytest.mark.parametrize("pools, configs, env, want", [
    ([pool("p", "192.168.0.0/16", vxlan="CrossSubnet")], [], {}, 1450),
    ([pool("p", "192.168.0.0/16", ipip="Always")], [], {}, 1480),
    ([pool("p", "192.168.0.0/16", ipip="Always"), pool("q", "10.9.0.0/16", vxlan="Always")], [], {}, 1450),
    ([pool("p", "192.168.0.0/16", ipip="Always", disabled=True)], [], {}, 1500),  # a disabled pool: none
    ([], [], {}, 1500),
    ([pool("p", "192.168.0.0/16", ipip="Always")],
     [FelixConfiguration(metadata=Metadata(name="default"), spec=FelixConfiguration.Spec(ipip_mtu=1400))], {}, 1400),
    ([pool("p", "192.168.0.0/16", ipip="Always")], [], {"FELIX_IPINIPMTU": "1300"}, 1300),
])
def test_the_mtu_file_is_written_at_start_from_the_pools_and_config(tmp_path, pools, configs, env, want):
    f = felix(Client({"IPPool": pools, "FelixConfiguration": configs}), tmp_path, env)
    assert f.write_start_mtu() == want
    assert (tmp_path / "mtu").read_text() == f"{want}\n"


def test_without_the_datastore_at_start_the_first_apply_writes_it(tmp_path):
    c = Client({}, fail=True)
    f = felix(c, tmp_path)
    assert f.write_start_mtu() is None
    assert c.listed == ["FelixConfiguration"] and not (tmp_path / "mtu").exists()
