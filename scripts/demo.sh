#!/usr/bin/env bash
# Runs calicolab's demo after making sure everything it needs is installed.
# Extra arguments go to `calicolab demo` (e.g. --keep to leave the lab running).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
bash scripts/setup.sh --quiet
exec .venv/bin/calicolab demo "$@"
