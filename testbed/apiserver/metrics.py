"""The API server's ``/metrics``: what kube-apiserver exposes about its long-running requests.

Only ``apiserver_longrunning_requests`` (a gauge of the watches being served, with
kube-apiserver's labels: component, group, resource, scope, subresource, verb, version) is
built; it is what tells how many watchers each resource has (issue 15: one per Typha, or one
per node's Felix without it). ``kubectl get --raw /metrics`` reads it. Pure: no I/O.
"""

from __future__ import annotations

from collections import Counter

#: (group, version, resource, scope, subresource, verb); scope as kube-apiserver names it:
#: ``cluster`` (all namespaces), ``namespace`` (one namespace), ``resource`` (one object)
Key = tuple[str, str, str, str, str, str]

HELP = ("Gauge of all active long-running apiserver requests broken out by verb, group, version, "
        "resource, scope and component. Not all requests are tracked this way.")


def scope(namespace: str | None, name: str | None) -> str:
    """kube-apiserver's ``scope`` label for a request."""
    if name:
        return "resource"
    return "namespace" if namespace else "cluster"


class LongRunning:
    """Counts the long-running requests in flight."""

    def __init__(self) -> None:
        self.active: Counter[Key] = Counter()

    def start(self, key: Key) -> None:
        """A request began."""
        self.active[key] += 1

    def end(self, key: Key) -> None:
        """A request ended."""
        self.active[key] -= 1
        if self.active[key] <= 0:
            del self.active[key]

    def exposition(self) -> str:
        """The Prometheus text format (0.0.4) of the gauge, rows sorted by their labels."""
        lines = [f"# HELP apiserver_longrunning_requests [ALPHA] {HELP}",
                 "# TYPE apiserver_longrunning_requests gauge"]
        for (group, version, resource, sc, sub, verb), n in sorted(self.active.items()):
            labels = (f'component="apiserver",group="{group}",resource="{resource}",scope="{sc}",'
                      f'subresource="{sub}",verb="{verb}",version="{version}"')
            lines.append(f"apiserver_longrunning_requests{{{labels}}} {n}")
        return "\n".join(lines) + "\n"


def parse(text: str) -> dict[Key, int]:
    """The gauge's rows from an exposition (for benchmarks and tests reading ``/metrics``)."""
    out: dict[Key, int] = {}
    for line in text.splitlines():
        if not line.startswith("apiserver_longrunning_requests{"):
            continue
        body, value = line[len("apiserver_longrunning_requests{"):].rsplit("} ", 1)
        labels = dict(part.split("=", 1) for part in body.split(","))
        labels = {k: v.strip('"') for k, v in labels.items()}
        out[(labels["group"], labels["version"], labels["resource"], labels["scope"], labels["subresource"],
             labels["verb"])] = int(float(value))
    return out
