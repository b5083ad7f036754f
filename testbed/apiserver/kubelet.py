"""The API server's side of pods/log, pods/exec, pods/attach and pods/portforward: it
finds the pod's node and proxies the request to that node's kubelet endpoint
(see docs/apiserver.md, "kubelet endpoint contract")."""

from __future__ import annotations

from typing import Any

from testbed.apiserver import status


class KubeletProxy:
    """Reaches a node's kubelet for log/exec/attach/portforward."""

    def __init__(self, h: Any):
        self.h = h

    async def handle(self, r: Any) -> Any:
        raise status.APIError(503, "ServiceUnavailable", f"pods/{r.sub} is not served yet")
