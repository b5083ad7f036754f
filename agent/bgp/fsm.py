"""The RFC 4271 (section 8) session state machine, pure and event-driven.

One :class:`FSM` describes one TCP connection's life with a peer. Events go in through
:meth:`FSM.handle`; it returns a list of actions (send this, start that timer, drop the
connection, session up/down) for the transport to perform. Timers are owned by the
transport: when one fires it feeds the matching event back in. Nothing here reads a clock
or a socket, so every transition is unit-testable.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from ipaddress import IPv4Address

from agent.bgp import errors as E
from agent.bgp import messages as M


class State(enum.Enum):
    """RFC 4271 session states."""

    IDLE = "Idle"
    CONNECT = "Connect"
    ACTIVE = "Active"
    OPENSENT = "OpenSent"
    OPENCONFIRM = "OpenConfirm"
    ESTABLISHED = "Established"


# ---- events
@dataclass(frozen=True)
class ManualStart:
    """Start the session (passive: only accept)."""


@dataclass(frozen=True)
class ManualStop:
    """Administrative stop: Cease."""

    subcode: int = E.ADMINISTRATIVE_SHUTDOWN


@dataclass(frozen=True)
class TimerExpired:
    """One of the timers 'connect_retry', 'hold', 'keepalive', 'idle_hold' fired."""

    name: str


@dataclass(frozen=True)
class TcpConnected:
    """TCP is up (outgoing succeeded or incoming accepted)."""


@dataclass(frozen=True)
class TcpFailed:
    """TCP connect failed or the connection closed."""

    reason: str = "connection closed"


@dataclass(frozen=True)
class MessageReceived:
    """A decoded message from the peer."""

    msg: object


@dataclass(frozen=True)
class DecodeError:
    """Received bytes failed to decode: the error to send in a NOTIFICATION."""

    error: E.BGPError


# ---- actions
@dataclass(frozen=True)
class Connect:
    """Open an outgoing TCP connection. The FSM never asks for one while another attempt or
    connection of this session is open (it sends Drop first)."""


@dataclass(frozen=True)
class Send:
    """Send a message on the connection."""

    msg: object


@dataclass(frozen=True)
class Drop:
    """Close the TCP connection, or abandon the connect attempt in flight. The session
    object lives on (a new Connect may follow); Down says when it has ended."""


@dataclass(frozen=True)
class StartTimer:
    """(Re)start a timer."""

    name: str
    seconds: float


@dataclass(frozen=True)
class StopTimer:
    """Stop a timer."""

    name: str


@dataclass(frozen=True)
class Up:
    """The session reached Established, with the peer's OPEN."""

    peer_open: M.Open


@dataclass(frozen=True)
class OpenAccepted:
    """The peer's OPEN was accepted (now OpenConfirm): time for collision detection."""

    peer_open: M.Open


@dataclass(frozen=True)
class Down:
    """The session left Established (or failed to get there).

    ``error``: it ended on a protocol error, where BIRD delays the session's next start by
    its error wait (``bgp_update_startup_delay``): a NOTIFICATION other than Cease sent
    (hold timer expired, a malformed or unexpected message, a refused OPEN) or received. A
    connection that was closed or lost is not one: BIRD connects again after its connect
    delay (``bgp_sock_err`` -> ``bgp_active``), e.g. when the peer closed it because it does
    not know us yet ("Unexpected connect from unknown address")."""

    reason: str
    was_established: bool
    error: bool = False


@dataclass(frozen=True)
class Deliver:
    """An UPDATE or ROUTE-REFRESH for the RIB."""

    msg: object


@dataclass
class Timers:
    """Session timers in seconds. Defaults are Calico's BIRD template / BIRD's defaults."""

    hold: float = 240
    keepalive: float | None = None  # None: hold / 3
    connect_delay: float = 2
    connect_retry: float = 5
    error_wait_min: float = 5
    error_wait_max: float = 30
    graceful_restart: float = 120

    @classmethod
    def parse(cls, text: str) -> Timers:
        """'hold=9,connect_delay=0.5' -> Timers (unnamed fields keep their defaults).
        Labs pass short timers this way (env CALICOLAB_BGP_TIMERS)."""
        known = set(cls.__dataclass_fields__)
        values: dict[str, float] = {}
        for item in filter(None, (x.strip() for x in text.split(","))):
            name, sep, value = item.partition("=")
            name = name.strip()
            if not sep or name not in known:
                raise ValueError(f"BGP timers: bad item {item!r} (names: {', '.join(sorted(known))})")
            try:
                values[name] = float(value)
            except ValueError:
                raise ValueError(f"BGP timers: {name} must be a number, got {value!r}") from None
        t = cls(**values)
        t.validate()
        return t

    def validate(self) -> None:
        """Reject impossible values with a clear message."""
        if self.hold != 0 and self.hold < 3:
            raise ValueError(f"hold time must be 0 or at least 3 seconds, got {self.hold}")
        for name in ("connect_delay", "connect_retry", "error_wait_min", "error_wait_max",
                     "graceful_restart"):
            if getattr(self, name) < 0:
                raise ValueError(f"timer {name} must not be negative")
        if self.keepalive is not None and self.keepalive <= 0:
            raise ValueError("keepalive must be positive")


@dataclass
class FSMConfig:
    """What the state machine needs to know about both ends."""

    local_as: int
    router_id: IPv4Address
    peer_as: int
    passive: bool = False
    timers: Timers = field(default_factory=Timers)
    capabilities: list = field(default_factory=list)


def negotiated_hold(local: float, remote: int) -> float:
    """Hold time is the smaller of both offers (0 disables keepalives)."""
    if local == 0 or remote == 0:
        return 0
    return min(local, remote)


class FSM:
    """State machine of one connection. ``handle(event) -> list[action]``."""

    def __init__(self, config: FSMConfig, *, incoming: bool = False):
        self.config = config
        self.incoming = incoming
        self.state = State.IDLE
        self.peer_open: M.Open | None = None
        self.hold_time: float = config.timers.hold
        self.keepalive_time: float = 0
        self.last_error: str = ""
        # a TCP connect of ours is in flight (Connect sent, neither TcpConnected nor
        # TcpFailed back yet): a connect-retry expiry must drop it before starting another
        self.connecting = False

    # -- helpers
    def _open(self) -> M.Open:
        t = self.config.timers
        return M.Open(asn=self.config.local_as, hold_time=int(t.hold),
                      router_id=self.config.router_id, capabilities=list(self.config.capabilities))

    def _fail(self, reason: str, notify: E.BGPError | None = None, error: bool | None = None) -> list:
        """Close the session: NOTIFICATION ``notify`` if connected, then Down. ``error``
        (:class:`Down`): default, whether ``notify`` is an error other than Cease."""
        was = self.state == State.ESTABLISHED
        if error is None:
            error = notify is not None and notify.code != E.CEASE
        acts: list = []
        if notify is not None and self.state not in (State.IDLE, State.CONNECT, State.ACTIVE):
            acts.append(Send(M.Notification(notify.code, notify.subcode, notify.data)))
        acts += [Drop(), StopTimer("connect_retry"), StopTimer("hold"), StopTimer("keepalive")]
        self.state = State.IDLE
        self.connecting = False
        self.last_error = reason
        acts.append(Down(reason, was, error))
        return acts

    def _hold_timer(self) -> list:
        return [StartTimer("hold", self.hold_time)] if self.hold_time else [StopTimer("hold")]

    # -- the machine
    def handle(self, ev: object) -> list:
        """Feed one event; return the actions to perform, in order."""
        st = self.state
        t = self.config.timers
        if isinstance(ev, ManualStop):
            if st == State.IDLE:
                return []
            return self._fail("administratively stopped", E.Cease(ev.subcode, "stop"))

        if st == State.IDLE:
            if isinstance(ev, ManualStart):
                if self.incoming:
                    self.state = State.ACTIVE
                    return []
                if self.config.passive:
                    self.state = State.ACTIVE
                    return []
                self.state = State.CONNECT
                return [StartTimer("connect_retry", t.connect_delay)]
            return []

        if st in (State.CONNECT, State.ACTIVE):
            if isinstance(ev, TimerExpired) and ev.name == "connect_retry":
                if self.config.passive or self.incoming:
                    return []
                # RFC 4271 8.2.2 (Connect, ConnectRetryTimer_Expires): drop the attempt in
                # flight, then start a new one; never two transports on one session
                acts = [Drop()] if self.connecting else []
                self.state = State.CONNECT
                self.connecting = True
                return acts + [Connect(), StartTimer("connect_retry", t.connect_retry)]
            if isinstance(ev, TcpConnected):
                self.connecting = False
                self.state = State.OPENSENT
                # large hold timer while waiting for OPEN (RFC 4271 suggests 4 minutes)
                return [StopTimer("connect_retry"), Send(self._open()),
                        StartTimer("hold", max(t.hold, 4) if t.hold else 240)]
            if isinstance(ev, TcpFailed):
                self.connecting = False
                if self.config.passive or self.incoming:
                    return self._fail(ev.reason)
                self.state = State.ACTIVE
                self.last_error = ev.reason
                return [StartTimer("connect_retry", t.connect_retry)]
            if isinstance(ev, MessageReceived | DecodeError):
                return self._fail("message before OPEN exchange", None)
            return []

        # connected states
        if isinstance(ev, TcpFailed):
            return self._fail(ev.reason)
        if isinstance(ev, DecodeError):
            return self._fail(f"received malformed message: {ev.error}", ev.error)
        if isinstance(ev, TimerExpired):
            if ev.name == "hold":
                return self._fail("hold timer expired", E.HoldTimerExpired(0, "hold timer"))
            if ev.name == "keepalive" and st in (State.OPENCONFIRM, State.ESTABLISHED):
                return [Send(M.Keepalive()), StartTimer("keepalive", self.keepalive_time)]
            return []
        if not isinstance(ev, MessageReceived):
            return []
        msg = ev.msg
        if isinstance(msg, M.Notification):
            return self._fail(f"received NOTIFICATION: {msg.describe()}", error=msg.code != E.CEASE)

        if st == State.OPENSENT:
            if not isinstance(msg, M.Open):
                return self._fail("expected OPEN", E.FSMError(1, "expected OPEN"))
            err = self._check_open(msg)
            if err is not None:
                return self._fail(str(err), err)
            self.peer_open = msg
            self.hold_time = negotiated_hold(t.hold, msg.hold_time)
            ka = t.keepalive if t.keepalive is not None else self.hold_time / 3
            self.keepalive_time = min(ka, self.hold_time / 3) if self.hold_time else 0
            self.state = State.OPENCONFIRM
            acts: list = [OpenAccepted(msg), Send(M.Keepalive())]
            if self.keepalive_time:
                acts.append(StartTimer("keepalive", self.keepalive_time))
            return acts + self._hold_timer()

        if st == State.OPENCONFIRM:
            if isinstance(msg, M.Keepalive | M.Update):
                # an UPDATE here means the peer skipped its KEEPALIVE: BIRD takes it as
                # one and goes on (bgp_rx_update's workaround), so do we
                self.state = State.ESTABLISHED
                assert self.peer_open is not None
                acts = self._hold_timer() + [Up(self.peer_open)]
                return acts + [Deliver(msg)] if isinstance(msg, M.Update) else acts
            return self._fail("expected KEEPALIVE", E.FSMError(2, "expected KEEPALIVE"))

        # ESTABLISHED
        if isinstance(msg, M.Keepalive):
            return self._hold_timer()
        if isinstance(msg, M.Update | M.RouteRefresh):
            return self._hold_timer() + [Deliver(msg)]
        return self._fail("unexpected OPEN", E.FSMError(3, "OPEN in Established"))

    def _check_open(self, msg: M.Open) -> E.BGPError | None:
        """BIRD's order and data (bgp_rx_open): our own identifier on an iBGP session 2/3
        (the identifier), then the AS 2/2 (4 bytes when the peer speaks 4-octet AS, else
        the 2-byte My AS)."""
        if msg.router_id == self.config.router_id and self.config.peer_as == self.config.local_as:
            return E.OpenMessageError(E.BAD_BGP_IDENTIFIER,
                                      f"peer uses our router id {msg.router_id}",
                                      msg.router_id.packed)
        if msg.asn != self.config.peer_as:
            data = (msg.asn.to_bytes(4, "big") if msg.cap(M.FourOctetAS) is not None
                    else (msg.asn & 0xFFFF).to_bytes(2, "big"))
            return E.OpenMessageError(E.BAD_PEER_AS, f"peer AS {msg.asn}, expected "
                                                     f"{self.config.peer_as}", data)
        return None


#: BIRD's floor on the wait before a connection attempt (``bgp_active``: ``MAX(1, connect
#: delay time)``)
CONNECT_DELAY_FLOOR = 1.0


def reconnect_wait(timers: Timers) -> float:
    """How long a session whose connection was closed or lost (no protocol error) waits
    before it starts again; its connect delay follows, so the connection is made after
    BIRD's ``MAX(1, connect delay time)`` (a lab's 0.1 s connect delay, meant for the first
    connect of a node that starts with every other, does not make a peer that closes at
    once be called ten times a second)."""
    return max(0.0, CONNECT_DELAY_FLOOR - timers.connect_delay)


def error_wait(failures: int, timers: Timers) -> float:
    """BIRD's 'error wait time min,max': doubles per consecutive failure, capped."""
    if failures <= 0:
        return 0.0
    return min(timers.error_wait_min * (2 ** (failures - 1)), timers.error_wait_max)
