"""apiserver_longrunning_requests as kube-apiserver exposes it: labels, scope, order, and a
row gone when its last request ends."""

import pytest

from testbed.apiserver.metrics import LongRunning, parse, scope

pytestmark = pytest.mark.unit


def test_gauge_rows_labels_and_round_trip():
    g = LongRunning()
    pods = ("", "v1", "pods", scope(None, None), "", "WATCH")
    ipam = ("crd.projectcalico.org", "v1", "ipamblocks", scope(None, None), "", "WATCH")
    one = ("", "v1", "nodes", scope(None, "w1"), "", "WATCH")
    for k in (pods, pods, ipam, one):
        g.start(k)
    text = g.exposition()
    assert text.splitlines()[:2] == [
        "# HELP apiserver_longrunning_requests [ALPHA] Gauge of all active long-running apiserver requests "
        "broken out by verb, group, version, resource, scope and component. Not all requests are tracked this way.",
        "# TYPE apiserver_longrunning_requests gauge"]
    assert text.splitlines()[2] == ('apiserver_longrunning_requests{component="apiserver",group="",resource="nodes",'
                                    'scope="resource",subresource="",verb="WATCH",version="v1"} 1')
    assert parse(text) == {pods: 2, ipam: 1, one: 1}
    g.end(one)
    g.end(pods)
    assert parse(g.exposition()) == {pods: 1, ipam: 1}
    assert scope("default", None) == "namespace"
