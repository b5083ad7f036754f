"""The machines a lab spans: this one (:class:`LocalHost`) and others over SSH (:class:`SSHHost`).

A :class:`Host` runs commands (captured, streamed line by line, passed through to this
terminal, or interactive with a pty) and moves files. The lab calls one thing on every
host: the ``calicolab`` CLI of that host's checkout, as that host's *part* of the lab
(:meth:`Host.calicolab`: ``CALICOLAB_PART`` names the part, ``CALICOLAB_RUN`` is its
state root), so a part on another machine is made, inspected and removed by the same
code as a lab on this one.

The SSH side is paramiko: key authentication only (no agent, no password), the host's key
checked against ``hostKey`` when the topology gives one, else against ``~/.ssh/known_hosts``
when it has the host, else accepted on the first connection and pinned for the lab's life
(a different key later is refused). A non-root user runs everything through ``sudo -n``.
Every failure is a :class:`HostError` naming the host (name, user, address, port).
"""

from __future__ import annotations

import base64
import hashlib
import os
import select
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from testbed.lab.state import EXIT_FAIL, REPO, LabError
from testbed.lab.topology import LOCAL_HOST, HostSpec

__all__ = ["Machine", "HostError", "Result", "Host", "LocalHost", "SSHHost", "open_host",
           "fingerprint", "CONNECT_TIMEOUT"]

#: seconds to wait for a host to answer (TCP connect, SSH banner, authentication)
CONNECT_TIMEOUT = float(os.environ.get("CALICOLAB_SSH_TIMEOUT", "10"))
DEFAULT_RUN_DIR = "/run/calicolab"


class HostError(LabError):
    """A machine of the lab could not be reached or did not do what was asked."""

    def __init__(self, machine: Machine, problem: str, exit_code: int = EXIT_FAIL):
        super().__init__(f"{machine.describe()}: {problem}", exit_code)
        self.machine = machine
        self.problem = problem


@dataclass(frozen=True)
class Machine:
    """One machine of a lab as its record keeps it."""

    name: str
    address: str = ""
    user: str = "root"
    port: int = 22
    key: str = ""
    host_key: str = ""
    repo: str = ""
    run_dir: str = ""
    pinned: str = ""  # the host key's fingerprint accepted at the first connection

    @property
    def local(self) -> bool:
        """True for this machine."""
        return self.name == LOCAL_HOST

    def describe(self) -> str:
        """``host h1 (root@198.51.100.7:22)`` or ``this machine``."""
        return "this machine" if self.local else \
            f"host {self.name} ({self.user}@{self.address}:{self.port})"

    @classmethod
    def from_spec(cls, spec: HostSpec) -> Machine:
        """From a topology's ``hosts:`` entry."""
        return cls(spec.name, spec.address, spec.user, spec.port, spec.key, spec.host_key,
                   spec.repo or str(REPO), spec.run_dir or DEFAULT_RUN_DIR)

    def record(self) -> dict[str, Any]:
        """As the lab's record stores it."""
        return asdict(self)

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> Machine:
        """From :meth:`record`."""
        return cls(**{k: rec[k] for k in cls.__dataclass_fields__ if k in rec})


@dataclass
class Result:
    """A finished command."""

    rc: int
    stdout: bytes
    stderr: bytes

    @property
    def out(self) -> str:
        return self.stdout.decode(errors="replace")

    @property
    def err(self) -> str:
        return self.stderr.decode(errors="replace")


def fingerprint(key_bytes: bytes) -> str:
    """OpenSSH's ``SHA256:...`` fingerprint of a public key blob."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(key_bytes).digest()).decode().rstrip("=")


class Host:
    """A machine of the lab (see the module's docstring)."""

    def __init__(self, machine: Machine):
        self.machine = machine

    def describe(self) -> str:
        return self.machine.describe()

    # -- what every host does the same way
    def part_env(self) -> dict[str, str]:
        """The environment naming this machine's part of the lab."""
        m = self.machine
        return {"CALICOLAB_PART": m.name, "CALICOLAB_RUN": m.run_dir,
                "CALICOLAB_PCAPS": f"{m.run_dir}/pcaps", "PYTHONDONTWRITEBYTECODE": "1"}

    def calicolab(self, *args: str) -> list[str]:
        """argv running this host's ``calicolab`` CLI as its part of the lab."""
        env = [f"{k}={v}" for k, v in sorted(self.part_env().items())]
        return ["env", *env, f"{self.machine.repo}/.venv/bin/python", "-m", "testbed.cli", *args]

    def check(self, argv: Sequence[str], what: str, timeout: float = 120, **kw: Any) -> Result:
        """:meth:`run` and raise a :class:`HostError` (with its stderr) unless it exits 0."""
        res = self.run(argv, timeout=timeout, **kw)
        if res.rc != 0:
            tail = (res.err.strip() or res.out.strip())[-1500:]
            raise HostError(self.machine, f"{what} failed (exit {res.rc}): {tail}")
        return res

    # -- implemented by each kind
    def run(self, argv: Sequence[str], *, input: bytes | None = None,  # noqa: A002
            timeout: float = 120) -> Result:
        """Run ``argv`` there (in the checkout), capture its output."""
        raise NotImplementedError

    def stream(self, argv: Sequence[str], on_line: Callable[[str], None],
               timeout: float = 600) -> Result:
        """Run ``argv``, handing each stderr line to ``on_line`` as it comes."""
        raise NotImplementedError

    def passthrough(self, argv: Sequence[str]) -> int:
        """Run ``argv`` with this process's stdin, stdout and stderr; its exit status."""
        raise NotImplementedError

    def interactive(self, argv: Sequence[str]) -> int:
        """Run ``argv`` on a terminal (a pty there when this one is a tty); its exit status."""
        raise NotImplementedError

    def read(self, path: str) -> bytes:
        """The content of file ``path`` there."""
        raise NotImplementedError

    def write(self, path: str, data: bytes) -> None:
        """Write file ``path`` there (its directory must exist)."""
        raise NotImplementedError

    def fetch(self, path: str, local: Path) -> None:
        """Copy file ``path`` there to ``local`` here."""
        local.write_bytes(self.read(path))

    def close(self) -> None:
        """Drop the connection (if any)."""


class LocalHost(Host):
    """This machine: subprocesses in the checkout."""

    def _cwd(self) -> str:
        return self.machine.repo or str(REPO)

    def run(self, argv: Sequence[str], *, input: bytes | None = None,  # noqa: A002
            timeout: float = 120) -> Result:
        try:
            res = subprocess.run(list(argv), input=input, capture_output=True, timeout=timeout,
                                 cwd=self._cwd(), check=False)
        except subprocess.TimeoutExpired:
            raise HostError(self.machine, f"`{shlex.join(argv)}` did not finish in {timeout:.0f}s") from None
        return Result(res.returncode, res.stdout, res.stderr)

    def stream(self, argv: Sequence[str], on_line: Callable[[str], None],
               timeout: float = 600) -> Result:
        proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, cwd=self._cwd())
        out = bytearray()

        def drain() -> None:
            assert proc.stdout is not None
            out.extend(proc.stdout.read())

        t = threading.Thread(target=drain, daemon=True)
        t.start()
        err = bytearray()
        assert proc.stderr is not None
        deadline = time.monotonic() + timeout
        for line in proc.stderr:
            err.extend(line)
            on_line(line.decode(errors="replace").rstrip("\n"))
            if time.monotonic() > deadline:
                proc.kill()
        try:
            rc = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise HostError(self.machine, f"`{shlex.join(argv)}` did not finish in {timeout:.0f}s") from None
        t.join(5)
        return Result(rc, bytes(out), bytes(err))

    def passthrough(self, argv: Sequence[str]) -> int:
        return subprocess.run(list(argv), cwd=self._cwd(), check=False).returncode

    def interactive(self, argv: Sequence[str]) -> int:
        return self.passthrough(argv)

    def read(self, path: str) -> bytes:
        try:
            return Path(path).read_bytes()
        except OSError as exc:
            raise HostError(self.machine, f"cannot read {path}: {exc.strerror}") from None

    def write(self, path: str, data: bytes) -> None:
        try:
            Path(path).write_bytes(data)
        except OSError as exc:
            raise HostError(self.machine, f"cannot write {path}: {exc.strerror}") from None


class SSHHost(Host):
    """Another machine, over one paramiko SSH connection."""

    def __init__(self, machine: Machine, client: Any):
        super().__init__(machine)
        self.client = client
        self._sftp: Any = None

    def _command(self, argv: Sequence[str]) -> str:
        sudo = "" if self.machine.user == "root" else "sudo -n "
        return f"cd {shlex.quote(self.machine.repo or '/')} && {sudo}{shlex.join(argv)}"

    def _channel(self, argv: Sequence[str], pty: bool = False) -> Any:
        import paramiko

        try:
            transport = self.client.get_transport()
            if transport is None or not transport.is_active():
                raise HostError(self.machine, "the SSH connection is closed")
            chan = transport.open_session(timeout=CONNECT_TIMEOUT)
            if pty:
                cols, rows = _terminal_size()
                chan.get_pty(term=os.environ.get("TERM", "xterm"), width=cols, height=rows)
            chan.exec_command(self._command(argv))
            return chan
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise HostError(self.machine, f"lost the SSH connection starting `{shlex.join(argv)}`: "
                            f"{exc or type(exc).__name__}") from None

    def _finish(self, chan: Any, argv: Sequence[str]) -> int:
        transport = self.client.get_transport()
        if not chan.exit_status_ready() and (transport is None or not transport.is_active()):
            raise HostError(self.machine, f"the connection was lost while running `{shlex.join(argv)}`")
        rc = chan.recv_exit_status()
        if rc == -1:
            raise HostError(self.machine, f"the connection was lost while running `{shlex.join(argv)}`")
        return rc

    def _pump(self, chan: Any, argv: Sequence[str], timeout: float,
              on_out: Callable[[bytes], None], on_err: Callable[[bytes], None]) -> int:
        deadline = time.monotonic() + timeout
        transport = self.client.get_transport()
        while True:
            if chan.recv_ready():
                on_out(chan.recv(65536))
                continue
            if chan.recv_stderr_ready():
                on_err(chan.recv_stderr(65536))
                continue
            if chan.exit_status_ready() and not chan.recv_ready() and not chan.recv_stderr_ready():
                break
            if chan.closed or transport is None or not transport.is_active():
                break
            if time.monotonic() > deadline:
                chan.close()
                raise HostError(self.machine, f"`{shlex.join(argv)}` did not finish in {timeout:.0f}s")
            select.select([chan], [], [], 0.2)
        return self._finish(chan, argv)

    def run(self, argv: Sequence[str], *, input: bytes | None = None,  # noqa: A002
            timeout: float = 120) -> Result:
        chan = self._channel(argv)
        try:
            if input:
                chan.sendall(input)
            chan.shutdown_write()
            out, err = bytearray(), bytearray()
            rc = self._pump(chan, argv, timeout, out.extend, err.extend)
            return Result(rc, bytes(out), bytes(err))
        except OSError as exc:
            raise HostError(self.machine, f"lost the connection running `{shlex.join(argv)}`: {exc}") from None
        finally:
            chan.close()

    def stream(self, argv: Sequence[str], on_line: Callable[[str], None],
               timeout: float = 600) -> Result:
        chan = self._channel(argv)
        out, err = bytearray(), bytearray()
        pending = bytearray()

        def on_err(data: bytes) -> None:
            err.extend(data)
            pending.extend(data)
            while b"\n" in pending:
                line, _, rest = bytes(pending).partition(b"\n")
                pending[:] = rest
                on_line(line.decode(errors="replace"))

        try:
            chan.shutdown_write()
            rc = self._pump(chan, argv, timeout, out.extend, on_err)
            if pending:
                on_line(bytes(pending).decode(errors="replace"))
            return Result(rc, bytes(out), bytes(err))
        finally:
            chan.close()

    def passthrough(self, argv: Sequence[str]) -> int:
        chan = self._channel(argv)

        def feed() -> None:
            try:
                while True:
                    data = os.read(sys.stdin.fileno(), 65536)
                    if not data:
                        break
                    chan.sendall(data)
                chan.shutdown_write()
            except (OSError, ValueError, EOFError):
                pass

        threading.Thread(target=feed, daemon=True).start()
        try:
            return self._pump(chan, argv, 24 * 3600, _writer(sys.stdout), _writer(sys.stderr))
        finally:
            chan.close()

    def interactive(self, argv: Sequence[str]) -> int:
        if not sys.stdin.isatty():
            return self.passthrough(argv)
        import termios
        import tty

        chan = self._channel(argv, pty=True)
        fd = sys.stdin.fileno()
        saved = termios.tcgetattr(fd)

        def resize(*_: Any) -> None:
            cols, rows = _terminal_size()
            try:
                chan.resize_pty(width=cols, height=rows)
            except Exception:  # noqa: BLE001 - best effort
                pass

        old = signal.signal(signal.SIGWINCH, resize)
        try:
            tty.setraw(fd, termios.TCSADRAIN)  # as ssh: what was typed ahead is kept
            while True:
                r, _, _ = select.select([chan, fd], [], [], 0.5)
                if chan in r:
                    data = chan.recv(65536)
                    if not data:
                        break
                    os.write(sys.stdout.fileno(), data)
                if fd in r:
                    data = os.read(fd, 4096)
                    if not data:
                        break
                    chan.sendall(data)
                if chan.exit_status_ready() and not chan.recv_ready():
                    break
            return self._finish(chan, argv)
        finally:
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)
            signal.signal(signal.SIGWINCH, old)
            chan.close()

    def sftp(self) -> Any:
        """The SFTP session (root only: files of a lab belong to root)."""
        import paramiko

        if self._sftp is None:
            try:
                self._sftp = self.client.open_sftp()
            except (paramiko.SSHException, OSError, EOFError) as exc:
                raise HostError(self.machine, f"cannot open SFTP: {exc}") from None
        return self._sftp

    def read(self, path: str) -> bytes:
        if self.machine.user != "root":
            return self.check(["cat", path], f"reading {path}").stdout
        import io

        buf = io.BytesIO()
        try:
            self.sftp().getfo(path, buf)
        except OSError as exc:
            raise HostError(self.machine, f"cannot read {path}: {exc}") from None
        return buf.getvalue()

    def write(self, path: str, data: bytes) -> None:
        if self.machine.user != "root":
            self.check(["tee", path], f"writing {path}", input=data)
            return
        import io

        try:
            self.sftp().putfo(io.BytesIO(data), path)
        except OSError as exc:
            raise HostError(self.machine, f"cannot write {path}: {exc}") from None

    def fetch(self, path: str, local: Path) -> None:
        if self.machine.user != "root":
            super().fetch(path, local)
            return
        try:
            self.sftp().get(path, str(local))
        except OSError as exc:
            raise HostError(self.machine, f"cannot copy {path} back: {exc}") from None

    def close(self) -> None:
        try:
            if self._sftp is not None:
                self._sftp.close()
            self.client.close()
        except Exception:  # noqa: BLE001 - closing a dead connection
            pass


def _writer(stream: Any) -> Callable[[bytes], None]:
    def write(data: bytes) -> None:
        stream.flush()
        os.write(stream.fileno(), data)
    return write


def _terminal_size() -> tuple[int, int]:
    try:
        size = os.get_terminal_size(sys.stdout.fileno())
        return size.columns, size.lines
    except OSError:
        return 80, 24


# --------------------------------------------------------------------------- connecting


def _load_key(machine: Machine) -> Any:
    import paramiko

    path = Path(machine.key)
    if not machine.key:
        raise HostError(machine, "no key given (hosts[].key)")
    try:
        path.read_bytes()
    except OSError as exc:
        raise HostError(machine, f"cannot read its key {path}: {exc.strerror}") from None
    try:
        return paramiko.PKey.from_path(path)
    except (paramiko.SSHException, ValueError, TypeError) as exc:
        raise HostError(machine, f"its key {path} is not a private key paramiko can use "
                        f"(unencrypted ed25519, ecdsa or rsa): {exc}") from None


def _expected_key(machine: Machine) -> tuple[str, bytes] | None:
    """The (type, blob) of ``hostKey``: a literal public key, or a file holding one."""
    text = machine.host_key.strip()
    if not text:
        return None
    if not text.startswith(("ssh-", "ecdsa-")):
        try:
            text = Path(text).read_text().strip()
        except OSError as exc:
            raise HostError(machine, f"cannot read its hostKey {machine.host_key}: {exc.strerror}") from None
    parts = text.split()
    if parts and not parts[0].startswith(("ssh-", "ecdsa-")) and len(parts) >= 3:
        parts = parts[1:]  # a known_hosts line: "<host> <type> <base64>"
    try:
        return parts[0], base64.b64decode(parts[1])
    except (IndexError, ValueError):
        raise HostError(machine, f"its hostKey {machine.host_key!r} is not an SSH public key") from None


def _known_hosts(machine: Machine, address: str) -> list[tuple[str, bytes]]:
    import paramiko

    path = Path.home() / ".ssh" / "known_hosts"
    if not path.exists():
        return []
    try:
        hk = paramiko.HostKeys(str(path))
    except (OSError, paramiko.SSHException):
        return []
    names = [address, machine.address] if machine.port == 22 else \
        [f"[{address}]:{machine.port}", f"[{machine.address}]:{machine.port}"]
    out = []
    for name in names:
        for ktype, key in (hk.lookup(name) or {}).items():
            out.append((ktype, key.asbytes()))
    return out


def open_host(machine: Machine, pin: Callable[[str], None] | None = None,
              timeout: float = CONNECT_TIMEOUT) -> Host:
    """A connected :class:`Host` for ``machine``; :class:`HostError` naming it if it cannot be.

    ``pin`` receives the host key's fingerprint when it was accepted on first use (the
    caller records it: :attr:`Machine.pinned`).
    """
    if machine.local:
        return LocalHost(machine)
    import paramiko

    pkey = _load_key(machine)
    expected = _expected_key(machine)
    try:
        infos = socket.getaddrinfo(machine.address, machine.port, socket.AF_INET, socket.SOCK_STREAM)
        address = infos[0][4][0]
    except (socket.gaierror, IndexError) as exc:
        raise HostError(machine, f"cannot resolve {machine.address}: {exc}") from None
    try:
        sock = socket.create_connection((address, machine.port), timeout=timeout)
    except TimeoutError:
        raise HostError(machine, f"is unreachable: no answer on {address}:{machine.port} within "
                        f"{timeout:.0f}s") from None
    except OSError as exc:
        raise HostError(machine, f"is unreachable: {exc.strerror or exc}") from None
    transport = paramiko.Transport(sock)
    try:
        transport.banner_timeout = timeout
        transport.auth_timeout = timeout
        transport.start_client(timeout=timeout)
        server = transport.get_remote_server_key()
        got = (server.get_name(), server.asbytes())
        fp = fingerprint(got[1])
        if expected is not None:
            if got != expected:
                raise HostError(machine, f"its host key {got[0]} {fp} is not the one given in "
                                f"hostKey ({expected[0]} {fingerprint(expected[1])}): refusing "
                                "to connect")
        elif machine.pinned:
            if fp != machine.pinned:
                raise HostError(machine, f"its host key changed since the lab was made ({fp}, "
                                f"was {machine.pinned}): refusing to connect")
        else:
            known = _known_hosts(machine, address)
            if known and got not in known:
                raise HostError(machine, f"its host key {got[0]} {fp} does not match "
                                "~/.ssh/known_hosts: refusing to connect")
            if not known and pin is not None:
                pin(fp)
        try:
            transport.auth_publickey(machine.user, pkey)
        except paramiko.AuthenticationException:
            raise HostError(machine, f"authentication as {machine.user} with key {machine.key} "
                            "failed (the key is not authorized there)") from None
        client = paramiko.SSHClient()
        client._transport = transport  # noqa: SLF001 - a client around our checked transport
        transport.set_keepalive(5)
        return SSHHost(machine, client)
    except HostError:
        transport.close()
        raise
    except (paramiko.SSHException, OSError, EOFError) as exc:
        transport.close()
        raise HostError(machine, f"SSH failed: {exc or type(exc).__name__}") from None
