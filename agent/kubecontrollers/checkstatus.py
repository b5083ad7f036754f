"""``check-status``: calico/kube-controllers' probe command (``check-status -r`` readiness,
``-l`` liveness; ``-f`` the status file). Prints ``Ready`` and exits 0 when every key of the
status file is ready, else prints the not-ready reasons and exits 1, as Calico's does
(``kube-controllers/cmd/check-status``)."""

from __future__ import annotations

import argparse
import sys

from agent.kubecontrollers.status import DEFAULT_STATUS_FILE, check, read_status


def main(argv: list[str] | None = None) -> int:
    """Run check-status; returns the exit code."""
    p = argparse.ArgumentParser(prog="check-status", add_help=True)
    p.add_argument("-v", "--version", action="store_true", help="Display version")
    p.add_argument("-f", "--file", default=DEFAULT_STATUS_FILE, help="File to read with status information")
    p.add_argument("-r", "--ready", action="store_true", help="Check readiness")
    p.add_argument("-l", "--live", action="store_true", help="Check liveness")
    try:
        args = p.parse_args(argv)
    except SystemExit:
        print("Failed to parse flags")
        return 1
    if args.version:
        from datastore.version import CALICO_VERSION

        print(CALICO_VERSION)
        return 0
    if not (args.ready or args.live):
        print("No command specified to check-status")
        return 1
    try:
        keys = read_status(args.file)
    except (OSError, ValueError) as exc:
        print(f"Failed to read status file {args.file}: {exc}")
        return 1
    ok, text = check(keys)
    print(text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
