"""Read the verdicts the guest's pytest wrote to junit.xml (pure logic, no side effects)."""

from __future__ import annotations

import ast
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Verdict:
    """One test case's outcome with its message and details (traceback or skip reason)."""

    name: str
    classname: str
    outcome: str
    message: str = ""
    details: str = ""
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        """True only for a pass (a skip is not a pass)."""
        return self.outcome == "passed"


class JunitError(ValueError):
    """The junit file is missing or is not junit XML."""


def parse_junit(text: str) -> dict[str, Verdict]:
    """{test name: Verdict} from junit XML text (pytest's ``--junitxml`` format).

    A test with both a failure and a teardown error keeps the failure; names keep pytest's
    parameter suffix (``test_x[a]``).
    """
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise JunitError(f"not junit XML: {exc}") from exc
    out: dict[str, Verdict] = {}
    for case in root.iter("testcase"):
        name = case.get("name", "")
        outcome, message, details = "passed", "", ""
        for tag in ("failure", "error", "skipped"):
            el = case.find(tag)
            if el is not None:
                outcome = "failed" if tag == "failure" else tag
                message = el.get("message", "")
                details = (el.text or "").strip()
                break
        prev = out.get(name)
        if prev is not None and prev.outcome == "failed":
            continue
        out[name] = Verdict(
            name, case.get("classname", ""), outcome, message, details,
            float(case.get("time", "0") or 0),
        )  # fmt: skip
    return out


def read_junit(path: Path) -> dict[str, Verdict]:
    """:func:`parse_junit` of a file; JunitError naming the file if it is missing or bad."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise JunitError(f"no junit file at {path}: {exc.strerror}") from exc
    try:
        return parse_junit(text)
    except JunitError as exc:
        raise JunitError(f"{path}: {exc}") from exc


def guest_test_names(source: str) -> list[str]:
    """Names of the module-level ``test_*`` functions in Python ``source`` (in file order).

    Lets the host know which guest tests to expect without booting the guest to collect them.
    """
    tree = ast.parse(source)
    return [
        node.name
        for node in tree.body
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith("test_")
    ]


def verdict_for(verdicts: dict[str, Verdict], name: str) -> Verdict | None:
    """The verdict of test ``name``: exact, else the worst of its parametrized cases."""
    if name in verdicts:
        return verdicts[name]
    cases = [v for k, v in verdicts.items() if k.startswith(name + "[")]
    if not cases:
        return None
    rank = {"error": 0, "failed": 1, "skipped": 2, "passed": 3}
    return min(cases, key=lambda v: rank.get(v.outcome, 0))
