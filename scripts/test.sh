#!/usr/bin/env bash
# Runs calicolab's whole test suite (unit, etcd, netns, lab, interop and kernel
# tiers) after making sure everything it needs is installed.
# Extra arguments go to pytest, e.g. `scripts/test.sh -m unit -x`: then one pytest runs them.
#
# Without arguments the suite runs as two streams at once, to fit the 15-minute budget on
# 2 cores (a lab mostly waits on timers and packets: one stream alone leaves a core idle):
# - the lab tier (but the two modules below; and any tier not named below) in the foreground,
#   its output live;
# - beside it, one after the other: the netns, interop and kernel tiers and two lab modules
#   that mostly wait (on ssh hosts, on Kubernetes' grace periods), then the unit and etcd
#   tiers under `nice` (no root, no lab: they take the CPU the others leave idle).
# Each test isolates itself as it does in one run (its own netns, ports, bpffs, lab name and
# state dir; labs run side by side as users run them), so the streams share nothing. The side
# stream's output is printed after the lab tier's;
# the exit code is non-zero when any run failed. Together the runs are the same tests as one
# `pytest` over `tests/`.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
bash scripts/setup.sh --quiet
.venv/bin/ruff check .
if [ "$#" -gt 0 ]; then
    exec .venv/bin/python -m pytest "$@"
fi

pytest=(.venv/bin/python -m pytest)
side_root=(tests/netns tests/interop tests/kernel tests/lab/test_multihost_lab.py tests/lab/test_node_lifecycle.py)
side_user=(tests/unit tests/etcd)
side() {
    # each run its own cache dir: parallel pytest runs must not overwrite each other's lastfailed
    local rc=0
    echo "=== ${side_root[*]} ==="
    "${pytest[@]}" -o cache_dir=.pytest_cache/side-root "${side_root[@]}" || rc=1
    echo
    echo "=== ${side_user[*]} (nice) ==="
    nice -n 10 "${pytest[@]}" -o cache_dir=.pytest_cache/side-user "${side_user[@]}" || rc=1
    echo "side: exit $rc after $((SECONDS - start)) s"
    return "$rc"
}
side_log="$(mktemp "${TMPDIR:-/tmp}/calicolab-test-side.XXXXXX")"
start=$SECONDS
set -m  # the side stream in its own process group, so an interrupted run ends all of it
side </dev/null >"$side_log" 2>&1 &
side_pid=$!
set +m
trap 'kill -- "-$side_pid" 2>/dev/null || true; rm -f "$side_log"' EXIT
main_rc=0
"${pytest[@]}" "${side_root[@]/#/--ignore=}" "${side_user[@]/#/--ignore=}" || main_rc=$?
main_s=$((SECONDS - start))
side_rc=0
wait "$side_pid" || side_rc=$?
trap 'rm -f "$side_log"' EXIT
echo
echo "=== beside the lab tier: ${side_root[*]}, then ${side_user[*]} ==="
cat "$side_log"
echo
echo "test.sh: lab tier exit $main_rc after ${main_s} s; beside it: exit $side_rc; all done after $((SECONDS - start)) s"
if [ "$main_rc" != 0 ] || [ "$side_rc" != 0 ]; then
    exit 1
fi
