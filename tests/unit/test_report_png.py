"""The report's pictures really render: rsvg-convert (librsvg, the SVG engine of GNOME
and of many browsers' fallbacks) turns the lab diagram and a flow ladder into PNGs, and
the PNG pixels show drawn content, in the colours the diagram uses.

Needs the ``rsvg-convert`` command (Debian package librsvg2-bin).
"""

from __future__ import annotations

import struct
import subprocess
import zlib
from pathlib import Path

import pytest

from testbed.report.diagram import LadderRow, render_lab_svg, render_ladder_svg
from tests.support import require_tool
from tests.unit.test_report_render import walkthrough_model

pytestmark = pytest.mark.unit


def read_png(path: Path) -> tuple[int, int, int, list[bytes]]:
    """Width, height, bytes per pixel and the unfiltered rows of an 8-bit RGB/RGBA PNG."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, width = 8, b"", 0
    height = depth = ctype = 0
    while pos < len(data):
        length, kind = struct.unpack_from(">I4s", data, pos)
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, ctype = struct.unpack_from(">IIBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    assert depth == 8 and ctype in (2, 6), f"expected 8-bit RGB(A), got {depth}/{ctype}"
    raw = zlib.decompress(idat)
    bpp = 3 if ctype == 2 else 4
    stride = width * bpp
    rows: list[bytes] = []
    prev = bytearray(stride)
    for y in range(height):
        ftype, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            if ftype == 1:
                line[i] = (line[i] + a) & 0xFF
            elif ftype == 2:
                line[i] = (line[i] + b) & 0xFF
            elif ftype == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif ftype == 4:
                p = a + b - c
                pa_, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa_ <= pb and pa_ <= pc else (b if pb <= pc else c)
                line[i] = (line[i] + pred) & 0xFF
        rows.append(bytes(line))
        prev = line
    return width, height, bpp, rows


def colours(bpp: int, rows: list[bytes]) -> dict[tuple[int, int, int], int]:
    out: dict[tuple[int, int, int], int] = {}
    for row in rows[::2]:
        for i in range(0, len(row), bpp):
            rgb = (row[i], row[i + 1], row[i + 2])
            out[rgb] = out.get(rgb, 0) + 1
    return out


def render(svg: str, tmp_path: Path, name: str) -> Path:
    tool = require_tool("rsvg-convert")
    src, png = tmp_path / f"{name}.svg", tmp_path / f"{name}.png"
    src.write_text(svg)
    res = subprocess.run([tool, "-o", str(png), str(src)], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0 and not res.stderr.strip(), res.stderr
    return png


def test_lab_diagram_renders_with_boxes_arcs_and_text(tmp_path):
    svg = render_lab_svg(walkthrough_model())
    width, height, bpp, rows = read_png(render(svg, tmp_path, "lab"))
    assert (width, height) == tuple(int(float(v)) for v in svg.split("viewBox='")[1]
                                    .split("'")[0].split()[2:])
    seen = colours(bpp, rows)
    white = seen.get((255, 255, 255), 0)
    assert white < sum(seen.values()) * 0.9, "the picture is (almost) blank"
    # the diagram's own colours are on the canvas: node fill, pod fill, BGP blue, tunnel orange
    for name, rgb in (("node fill", (0xF5, 0xF7, 0xFB)), ("pod fill", (0xE8, 0xF5, 0xE9)),
                      ("BGP arcs", (0x15, 0x65, 0xC0)), ("IPIP tunnels", (0xEF, 0x6C, 0x00))):
        assert seen.get(rgb, 0) > 0, f"no {name} pixels {rgb} in the rendered lab"


def test_flow_ladder_renders(tmp_path):
    rows = [LadderRow(i * 0.001, col, f"packet {i}", "k")
            for i, col in enumerate(["k8s-w0/cali1", "k8s-w0/tunl0", "k8s-w0/eth0", "k8s-w1/eth0"])]
    width, height, bpp, px = read_png(render(render_ladder_svg(rows, title="cross"), tmp_path,
                                             "ladder"))
    assert width > 600 and height > 100
    seen = colours(bpp, px)
    assert seen.get((0xEF, 0x6C, 0x00), 0) > 0 and seen.get((0x2E, 0x7D, 0x32), 0) > 0
