"""Per-invocation logging for the CNI plugins (stdlib, no ``logging`` import cost).

Lines go to the netconf's ``log_file_path`` (Calico's ``/var/log/calico/cni/cni.log``)
when set, else they are collected and written to the plugin's stderr. Stdout is
reserved for the spec's JSON.
"""

from __future__ import annotations

import os
import time

_LEVELS = {"debug": 10, "info": 20, "warning": 30, "warn": 30, "error": 40, "fatal": 50, "panic": 50, "none": 100}


class Log:
    """A logger for one CNI invocation."""

    def __init__(self, prefix: str = "") -> None:
        self.path = ""
        self.level = 20
        self.prefix = prefix
        self.buffer: list[str] = []

    def configure(self, path: str, level: str) -> None:
        """Apply the netconf's ``log_file_path`` and ``log_level``."""
        self.level = _LEVELS.get(level or "info", 20)
        if path:
            try:
                os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
                self.path = path
            except OSError as exc:
                self.buffer.append(f"cannot use log file {path}: {exc}")

    def _emit(self, level: int, name: str, msg: str) -> None:
        if level < self.level:
            return
        now = time.time()
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}"
        line = f"{stamp} [{name}][{os.getpid()}] {self.prefix}{msg}\n"
        if self.path:
            try:
                with open(self.path, "a") as f:
                    f.write(line)
                return
            except OSError:
                pass
        self.buffer.append(line.rstrip("\n"))

    def debug(self, msg: str) -> None:
        """Log at debug level."""
        self._emit(10, "DEBUG", msg)

    def info(self, msg: str) -> None:
        """Log at info level."""
        self._emit(20, "INFO", msg)

    def warning(self, msg: str) -> None:
        """Log at warning level."""
        self._emit(30, "WARNING", msg)

    def error(self, msg: str) -> None:
        """Log at error level."""
        self._emit(40, "ERROR", msg)

    def stderr_text(self) -> str:
        """What was not written to a file, for the plugin's stderr."""
        return "".join(line + "\n" for line in self.buffer)
