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
