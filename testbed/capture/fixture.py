"""A pytest fixture that captures around a test and keeps the files of a failed one."""

from __future__ import annotations

import os
import re
import shutil
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from testbed.capture.group import CaptureGroup, new_run_name, pcaps_root
from testbed.capture.namespace import DEFAULT_IFACES


def capture_fixture(*, name: str = "captures", ifaces: str = DEFAULT_IFACES,
                    bpf: str | None = None, keep: bool | None = None,
                    root: str | os.PathLike[str] | None = None) -> Any:
    """Make a pytest fixture that captures around a test; assign it at module level::

        captures = capture_fixture()

        def test_flow(captures):
            cap = captures.lab("L", ["k8s-w0", "k8s-w1"])     # started, listening
            ...traffic...
            cap.stop()
            pa.assert_ipip(cap.trace("k8s-w0", "eth0"), ...)

    ``captures.netns({"a": "nsname"})`` captures in namespaces made by the test.
    The files of a failed test are kept (their directory is printed and added to
    the test's report); those of a passing test are deleted, unless ``keep`` or
    ``CALICOLAB_KEEP_PCAPS=1``.
    """
    import pytest

    @pytest.fixture(name=name)
    def _captures(request: Any) -> Iterator[CaptureFactory]:
        factory = CaptureFactory(request.node.name, ifaces=ifaces, bpf=bpf, root=root)
        failed_before = request.session.testsfailed
        yield factory
        factory.stop_all()
        failed = request.session.testsfailed > failed_before
        want_keep = keep if keep is not None else os.environ.get("CALICOLAB_KEEP_PCAPS") == "1"
        kept = factory.finish(keep=failed or want_keep)
        if kept:
            request.node.user_properties.append(("pcaps", [str(p) for p in kept]))
            print(f"\n[captures] pcaps kept in: {', '.join(str(p) for p in kept)}",
                  file=sys.stderr)

    return _captures


class CaptureFactory:
    """What the :func:`capture_fixture` fixture yields: starts capture groups for a test."""

    def __init__(self, test_name: str, *, ifaces: str = DEFAULT_IFACES, bpf: str | None = None,
                 root: str | os.PathLike[str] | None = None):
        self.test_name = re.sub(r"[^A-Za-z0-9_.-]+", "_", test_name)[:80]
        self.ifaces, self.bpf = ifaces, bpf
        self.root = Path(root) if root else pcaps_root()
        self.groups: list[CaptureGroup] = []

    def lab(self, lab: str, nodes: Iterable[str], *, ifaces: str | None = None,
            bpf: str | None = None) -> CaptureGroup:
        """Start capturing on ``nodes`` of lab ``lab`` into ``pcaps/<lab>/<test>-<time>/``."""
        g = CaptureGroup.for_lab(lab, nodes, run=new_run_name(self.test_name), root=self.root,
                                 ifaces=ifaces or self.ifaces, bpf=bpf or self.bpf)
        return self._start(g)

    def netns(self, targets: dict[str, str] | Iterable[str], *, ifaces: str | None = None,
              bpf: str | None = None) -> CaptureGroup:
        """Start capturing in plain namespaces (``{label: netns}`` or a list of netns names)."""
        if not isinstance(targets, dict):
            targets = {ns: ns for ns in targets}
        run_dir = self.root / "netns" / new_run_name(self.test_name)
        g = CaptureGroup(dict(targets), run_dir, ifaces=ifaces or self.ifaces,
                         bpf=bpf or self.bpf)
        return self._start(g)

    def _start(self, g: CaptureGroup) -> CaptureGroup:
        g.start()
        self.groups.append(g)
        return g

    def stop_all(self) -> None:
        """Stop every group still running."""
        for g in self.groups:
            if g.result is None:
                g.stop()

    def finish(self, keep: bool) -> list[Path]:
        """Keep (return) or delete the run directories."""
        dirs = [g.run_dir for g in self.groups]
        if keep:
            return dirs
        for d in dirs:
            shutil.rmtree(d, ignore_errors=True)
            try:
                d.parent.rmdir()  # pcaps/<lab>/ when now empty
            except OSError:
                pass
        return []
