"""Views: BIRD-like ``show protocols`` text and ``calicoctl node status`` exactly as Calico
prints it (calico.md section 4)."""

from __future__ import annotations

import time

PEER_TYPES = {"Mesh_": "node-to-node mesh", "Global_": "global", "Node_": "node specific"}


def bird_since(ts: float, now: float | None = None) -> str:
    """BIRD 1.6's 'since' column: HH:MM:SS for today, else YYYY-MM-DD."""
    now = time.time() if now is None else now
    t, n = time.localtime(ts), time.localtime(now)
    if (t.tm_year, t.tm_yday) == (n.tm_year, n.tm_yday):
        return time.strftime("%H:%M:%S", t)
    return time.strftime("%Y-%m-%d", t)


def render_protocols(peers: list[dict], now: float | None = None) -> str:
    """``show protocols`` body from Speaker.status()['peers'] (BIRD 1.6 column layout)."""
    rows = [("name", "proto", "table", "state", "since", "info")]
    rows += [(p["name"], "BGP", "master", p["state"], bird_since(p["since"], now), p["info"])
             for p in peers]
    w = [max(len(r[i]) for r in rows) for i in range(5)]
    return "\n".join(" ".join(r[i].ljust(w[i]) for i in range(5)) + " " + r[5] for r in rows)


def parse_protocols(text: str) -> list[dict]:
    """Parse ``show protocols`` output (ours or BIRD's) into rows of
    {name, proto, table, state, since, info}; the header line is skipped."""
    out = []
    for line in text.splitlines():
        f = line.split()
        if len(f) < 5 or f[0].lower() == "name":
            continue
        out.append({"name": f[0], "proto": f[1], "table": f[2], "state": f[3], "since": f[4],
                    "info": " ".join(f[5:])})
    return out


def peer_address(name: str) -> str:
    """Mesh_172_30_0_11 -> 172.30.0.11. As calicoctl does, every '_' after the type
    becomes '.', so Global_10_0_0_1_port_1790 shows as 10.0.0.1.port.1790."""
    return name.split("_", 1)[1].replace("_", ".")


MAX_CELL = 30  # tablewriter's default column width before wrapping
WRAP_PENALTY = 100000


def wrap_cell(text: str, limit: int = MAX_CELL) -> list[str]:
    """Wrap a cell the way calicoctl's table library does: words (collapsed spaces) split
    into lines minimising the raggedness sum((limit - len)^2) of all lines but the last."""
    words = text.split()
    if not words:
        return [""]
    n = len(words)
    best = [0.0] * (n + 1)
    brk = [n] * (n + 1)
    for i in range(n - 1, -1, -1):
        best[i] = float("inf")
        length = -1
        for j in range(i + 1, n + 1):
            length += len(words[j - 1]) + 1
            if j == n:
                cost = 0.0 if length <= limit else float(WRAP_PENALTY)
            elif length <= limit:
                cost = float((limit - length) ** 2) + best[j]
            else:
                cost = float(WRAP_PENALTY) + best[j] if j == i + 1 else float("inf")
            if cost < best[i]:
                best[i], brk[i] = cost, j
    lines, i = [], 0
    while i < n:
        lines.append(" ".join(words[i:brk[i]]))
        i = brk[i]
    return lines


def _pad_center(s: str, width: int) -> str:
    gap = width - len(s)
    left = gap // 2
    return " " * left + s + " " * (gap - left)


def _table(header: list[str], rows: list[list[str]]) -> str:
    wrapped = [[wrap_cell(c) for c in r] for r in rows]
    widths = [len(h) for h in header]
    for r in wrapped:
        for k, cell in enumerate(r):
            widths[k] = max(widths[k], *(len(x) for x in cell))
    sep = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
    lines = [sep, "| " + " | ".join(_pad_center(h, w) for h, w in zip(header, widths,
                                                                       strict=True)) + " |", sep]
    for r in wrapped:
        for k in range(max(len(c) for c in r)):
            cells = [c[k] if k < len(c) else "" for c in r]
            lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True))
                         + " |")
    lines.append(sep)
    return "\n".join(lines)


def render_node_status(protocols: list[dict] | str, running: bool = True) -> str:
    """``calicoctl node status`` output. ``protocols`` is the text of ``show protocols``
    (from :func:`agent.bgp.ctl.query`) or its parsed rows."""
    if not running:
        return "Calico process is not running.\n"
    rows_in = parse_protocols(protocols) if isinstance(protocols, str) else protocols
    rows = []
    for p in rows_in:
        if p.get("proto", "BGP") != "BGP":
            continue
        kind = next((t for pre, t in PEER_TYPES.items() if p["name"].startswith(pre)), None)
        if kind is None:
            continue
        since = p["since"] if isinstance(p["since"], str) else bird_since(p["since"])
        rows.append([peer_address(p["name"]), kind, p["state"], since, " ".join(p["info"].split())])
    out = "Calico process is running.\n\nIPv4 BGP status\n"
    if rows:
        out += _table(["PEER ADDRESS", "PEER TYPE", "STATE", "SINCE", "INFO"], rows) + "\n\n"
    else:
        out += "No IPv4 peers found.\n\n"
    out += "IPv6 BGP status\nNo IPv6 peers found.\n\n"
    return out
