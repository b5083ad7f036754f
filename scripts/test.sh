#!/usr/bin/env bash
# Runs calicolab's whole test suite (unit, netns, lab, interop and kernel
# tiers) after making sure everything it needs is installed.
# Extra arguments go to pytest, e.g. `scripts/test.sh -m unit -x`.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
bash scripts/setup.sh --quiet
.venv/bin/ruff check .
exec .venv/bin/python -m pytest "$@"
