"""Inside the guest: run pytest several times in ONE Python process (python is 10-20x slower
under TCG, so interpreter start and imports are paid once).

``python -m testbed.kerneltier.guestrun --results DIR --tests PATH RUN [RUN ...]`` where each
RUN is ``name:break:kexpr`` (break and kexpr may be empty).  For each run it sets
``CALICOLAB_KTIER_BREAK=break`` and ``CALICOLAB_RESULTS=DIR`` (or ``DIR/name`` for a broken run,
so records of broken runs never overwrite the real ones), runs pytest with
``--junitxml=DIR/name.xml``, and writes its output to ``DIR/name.log`` and its exit status to
``DIR/name.rc``.  The verdicts are the junit files, read on the host.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def parse_run(spec: str) -> tuple[str, str, str]:
    """``name:break:kexpr`` -> (name, break, kexpr); ValueError naming the bad spec."""
    parts = spec.split(":", 2)
    if len(parts) != 3 or not parts[0] or not parts[0].replace("-", "").isalnum():
        raise ValueError(f"run spec {spec!r} is not name:break:kexpr (name alphanumeric/-)")
    return parts[0], parts[1], parts[2]


def pytest_args(tests: str, junit: Path, kexpr: str) -> list[str]:
    """The pytest argv of one run (cache off, explicit plugins, junit to the share)."""
    args = ["-p", "no:cacheprovider", "-p", "pytest_timeout", "-q", "-rA", tests,
            f"--junitxml={junit}"]  # fmt: skip
    if kexpr:
        args += ["-k", kexpr]
    return args


def run_one(tests: str, results: Path, name: str, brk: str, kexpr: str) -> int:
    """One pytest run with its output redirected (at the fd level) to ``results/name.log``."""
    import pytest

    out = results if not brk else results / name
    out.mkdir(parents=True, exist_ok=True)
    os.environ["CALICOLAB_KTIER_BREAK"] = brk
    os.environ["CALICOLAB_RESULTS"] = str(out)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(results / f"{name}.log", "wb") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            rc = int(pytest.main(pytest_args(tests, results / f"{name}.xml", kexpr)))
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
    (results / f"{name}.rc").write_text(f"{rc}\n")
    return rc


def main(argv: list[str] | None = None) -> int:
    """Run every RUN in order; exit 0 once all ran (the verdicts are in the junit files)."""
    ap = argparse.ArgumentParser(prog="python -m testbed.kerneltier.guestrun", description=__doc__)
    ap.add_argument("--results", required=True, type=Path)
    ap.add_argument("--tests", required=True)
    ap.add_argument("runs", nargs="+", metavar="RUN")
    args = ap.parse_args(argv)
    try:
        runs = [parse_run(r) for r in args.runs]
    except ValueError as exc:
        ap.error(str(exc))
    for name, brk, kexpr in runs:
        rc = run_one(args.tests, args.results, name, brk, kexpr)
        print(f"guestrun: {name} exit {rc}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
