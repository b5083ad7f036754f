"""One BGP speaker as a process, run from a configuration file as BIRD runs from bird.conf.

    python -m agent.bgp.daemon -c speaker.json [-s ctl.sock] [--netns NAME] [--no-kernel]

SIGHUP re-reads the file and applies it (sessions whose peer did not change stay up; a bad
file is reported and the running configuration kept, as BIRD does); SIGTERM or SIGINT stop
with Cease and remove our kernel routes. The file is JSON in
:func:`agent.bgp.config.to_dict`'s shape.

Start-up is ordered for a node that starts many daemons at once: the BGP port is bound
before the speaker's modules are imported (a peer connecting meanwhile waits in the
kernel's backlog instead of being refused and retrying after the connect-retry time), and
the connect delay counts from the process start, as BIRD's counts from its own start.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time

STARTED = time.monotonic()


def read_config(path: str) -> dict:
    """The file's JSON (ValueError naming the file when it cannot be read)."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: {exc}") from None


def load_config(path: str):
    """Read and validate a speaker configuration file -> SpeakerConfig."""
    from agent.bgp.config import from_dict

    data = read_config(path)
    try:
        return from_dict(data)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


def bind_listener(data: dict) -> socket.socket:
    """The BGP listening socket, bound and listening (backlog queues early peers)."""
    addr = data.get("listen_address", "0.0.0.0")
    port = int(data.get("listen_port", 179))
    # IPPROTO_TCP, not 0: accepted sockets inherit the protocol, and asyncio sets TCP_NODELAY
    # only on sockets whose protocol says TCP. Without it the sessions this end accepted ran
    # with Nagle: an UPDATE sent while a KEEPALIVE was unacknowledged waited for the peer's
    # delayed ACK (a new block took 25-40 ms to reach some of 30 nodes instead of 6-10)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((addr, port))
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot listen on {addr}:{port}: {exc.strerror}") from None
    sock.listen(128)
    sock.setblocking(False)
    return sock


async def serve(path: str, listener: socket.socket, *, ctl_path: str | None = None,
                program_kernel: bool = True) -> None:
    """Run the speaker until SIGTERM/SIGINT; SIGHUP reloads ``path``."""
    import asyncio
    import logging
    import signal

    from agent.bgp.speaker import Speaker

    log = logging.getLogger("agent.bgp.daemon")
    loop = asyncio.get_running_loop()
    speaker = Speaker(load_config(path), program_kernel=program_kernel, started_at=STARTED)
    await speaker.start(listener=listener)
    ctl_server = None
    if ctl_path:
        from agent.bgp import ctl

        ctl_server = await ctl.serve(ctl_path, speaker.status, speaker.show_route)
    done = asyncio.Event()
    busy: set[asyncio.Task] = set()

    async def reload() -> None:
        try:
            await speaker.apply(load_config(path))
            log.info("reconfigured from %s", path)
        except ValueError as exc:
            log.error("reconfiguration failed, keeping the running configuration: %s", exc)

    def on_hup() -> None:
        task = loop.create_task(reload())
        busy.add(task)
        task.add_done_callback(busy.discard)

    loop.add_signal_handler(signal.SIGHUP, on_hup)
    loop.add_signal_handler(signal.SIGTERM, done.set)
    loop.add_signal_handler(signal.SIGINT, done.set)
    await done.wait()
    await speaker.stop()
    if ctl_server is not None:
        ctl_server.close()
        if os.path.exists(ctl_path):
            os.unlink(ctl_path)


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m agent.bgp.daemon",
                                 description="Run one BGP speaker from a configuration file "
                                             "(SIGHUP: reload; SIGTERM: stop)")
    ap.add_argument("-c", "--config", required=True, help="JSON speaker configuration")
    ap.add_argument("-s", "--socket", help="control socket (agent.bgp.ctl protocol)")
    ap.add_argument("--netns", help="enter /run/netns/NAME first")
    ap.add_argument("--no-kernel", action="store_true", help="keep routes out of the kernel")
    args = ap.parse_args(argv)
    try:
        if args.netns:
            from kernel import netns

            netns.enter(args.netns)
        listener = bind_listener(read_config(args.config))
        import asyncio
        import logging

        logging.basicConfig(level=logging.WARNING,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        asyncio.run(serve(args.config, listener, ctl_path=args.socket,
                          program_kernel=not args.no_kernel))
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
