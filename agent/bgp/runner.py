"""Run a Speaker in its own thread with its own asyncio loop (optionally inside a named
network namespace, which lets tests and benchmarks run many speakers in one process)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
from collections.abc import Callable
from typing import Any

from agent.bgp.config import SpeakerConfig
from agent.bgp.speaker import Speaker
from agent.clock import Clock
from kernel import netns
from kernel.base import Kernel


class SpeakerThread:
    """Owns one thread, one loop, one Speaker and (optionally) its control socket."""

    def __init__(self, config: SpeakerConfig | None = None, *, netns: str | None = None,
                 ctl_path: str | None = None, program_kernel: bool = True,
                 name: str = "bgp", kernel: Kernel | None = None, clock: Clock | None = None):
        self.config = config
        self.kernel = kernel  # default: the speaker opens a handle on its thread's netns
        self.clock = clock
        self.netns = netns
        self.ctl_path = ctl_path
        self.program_kernel = program_kernel
        self.loop: asyncio.AbstractEventLoop | None = None
        self.speaker: Speaker | None = None
        self._ctl = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self, timeout: float = 10.0) -> None:
        """Start the thread and (if a config is given) the speaker; wait until listening."""
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError("BGP speaker thread did not start")
        if self._error is not None:
            raise self._error
        if self.config is not None:
            self.call(self._start_speaker, self.config)

    def _run(self) -> None:
        try:
            if self.netns:
                netns.enter(self.netns)
            self.loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self.loop)
        except BaseException as exc:  # noqa: BLE001 - reported to start()
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        self.loop.run_forever()
        self.loop.close()

    def call(self, fn: Callable[..., Any], *args: Any, timeout: float = 15.0) -> Any:
        """Run ``fn(*args)`` (plain or async) on the speaker's loop and return its result."""
        assert self.loop is not None

        async def wrap() -> Any:
            res = fn(*args)
            if asyncio.iscoroutine(res):
                res = await res
            return res

        fut = asyncio.run_coroutine_threadsafe(wrap(), self.loop)
        try:
            return fut.result(timeout)
        except concurrent.futures.TimeoutError as exc:
            fut.cancel()
            raise TimeoutError(f"BGP speaker call {getattr(fn, '__name__', fn)} timed out") from exc

    async def _start_speaker(self, config: SpeakerConfig) -> None:
        self.speaker = Speaker(config, program_kernel=self.program_kernel, kernel=self.kernel, clock=self.clock)
        await self.speaker.start()
        if self.ctl_path:
            from agent.bgp import ctl

            self._ctl = await ctl.serve(self.ctl_path, self.speaker.status,
                                        self.speaker.show_route, self._bird_cfg)

    def _bird_cfg(self) -> str:
        from agent.confd.compute import render_bird_cfg

        assert self.speaker is not None
        return render_bird_cfg(self.speaker.config)

    def apply(self, config: SpeakerConfig, timeout: float = 60.0) -> None:
        """Start the speaker with ``config`` or move the running one to it."""
        self.config = config
        if self.speaker is None:
            self.call(self._start_speaker, config, timeout=timeout)
        else:
            self.call(self.speaker.apply, config, timeout=timeout)

    def status(self) -> dict:
        """Speaker.status(), or a stub saying it has no configuration yet."""
        if self.speaker is None:
            return {"peers": [], "established": 0, "routes": 0, "running": False}
        return self.call(self.speaker.status)

    def stop(self, graceful: bool = False, timeout: float = 10.0) -> None:
        """Stop the speaker (see Speaker.stop) and the thread; a second call does nothing."""
        if self.loop is None or not self._thread.is_alive():
            return
        if self.speaker is not None:
            try:
                self.call(self.speaker.stop, graceful, timeout=timeout)
            except TimeoutError:
                pass
        if self._ctl is not None:
            self._ctl.close()
            if self.ctl_path and os.path.exists(self.ctl_path):
                os.unlink(self.ctl_path)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout)


# ---------------------------------------------------------------- a speaker as a process


def load_config(path: str) -> SpeakerConfig:
    """Read a speaker configuration file (JSON, :func:`agent.bgp.config.to_dict`'s shape)."""
    import json

    from agent.bgp.config import from_dict

    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: {exc}") from None
    try:
        return from_dict(data)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


async def serve_forever(path: str, *, ctl_path: str | None = None,
                        program_kernel: bool = True) -> None:
    """Run one speaker from the file at ``path`` in this process's loop, as BIRD runs from
    bird.conf: SIGHUP re-reads the file and applies it (sessions that did not change stay
    up), SIGTERM/SIGINT stop with Cease and remove our kernel routes."""
    import logging
    import signal

    log = logging.getLogger(__name__)
    loop = asyncio.get_running_loop()
    speaker = Speaker(load_config(path), program_kernel=program_kernel)
    await speaker.start()
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
        except ValueError as exc:  # keep running with the old configuration, as BIRD does
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
    """``python -m agent.bgp.runner -c speaker.json [-s ctl.sock] [--netns NAME]``."""
    import argparse
    import logging
    import sys

    ap = argparse.ArgumentParser(prog="python -m agent.bgp.runner",
                                 description="Run one BGP speaker from a configuration file "
                                             "(SIGHUP: reload; SIGTERM: stop)")
    ap.add_argument("-c", "--config", required=True, help="JSON speaker configuration")
    ap.add_argument("-s", "--socket", help="control socket (agent.bgp.ctl protocol)")
    ap.add_argument("--netns", help="enter /run/netns/NAME first")
    ap.add_argument("--no-kernel", action="store_true", help="keep routes out of the kernel")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    try:
        if args.netns:
            enter_netns(args.netns)
        asyncio.run(serve_forever(args.config, ctl_path=args.socket,
                                  program_kernel=not args.no_kernel))
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
