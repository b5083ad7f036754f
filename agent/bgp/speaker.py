"""The asyncio BGP speaker: TCP transport for the FSM, peers, RIB, Adj-RIB-Out, kernel.

Runs inside one asyncio loop (see :mod:`agent.bgp.service` for the thread that owns it).
All methods are called on that loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address

from agent.bgp import errors as E
from agent.bgp import fsm as F
from agent.bgp import messages as M
from agent.bgp import prefix as PF
from agent.bgp.config import PeerConfig, SpeakerConfig
from agent.bgp.rib import RIB, PeerInfo
from agent.bgp.routes import KernelRoute, pool_class, route_for
from agent.bgp.wire import Wire
from agent.clock import Clock
from kernel.base import Kernel

log = logging.getLogger(__name__)
_MISSING = object()
_NO_ID = IPv4Address("0.0.0.0")
EXPORT_PATH_ID = 1  # ADD-PATH identifier of the (single, best) path we advertise per prefix
KERNEL_SCAN_SECONDS = 10.0
KERNEL_INLINE_MAX = 64  # route changes written from the event loop itself (more: kernel thread)
KERNEL_RETRY_SECONDS = 1.0  # the longest wait before failed kernel routes are written again
#: the first wait: a route via tunl0 that arrives before Felix has made tunl0 (the BGP
#: sessions of a lab's start come up first) fails with "No such device"; waiting a whole
#: second for it kept that node's pods unreachable ~0.5 s after the lab was ready
KERNEL_RETRY_FIRST = 0.1


def local_capabilities(cfg: SpeakerConfig, peer: PeerConfig) -> list:
    """The capabilities we announce: the set Calico's BIRD sends (calico.md section 4)."""
    gr = peer.graceful_restart_time or cfg.timers.graceful_restart
    return [M.MultiProtocol(), M.RouteRefreshCap(),
            M.GracefulRestart(int(gr) & 0xFFF, families=((M.AFI_IPV4, M.SAFI_UNICAST, 0),)),
            M.FourOctetAS(cfg.local_as), M.AddPath(((M.AFI_IPV4, M.SAFI_UNICAST, M.ADDPATH_BOTH),)),
            M.EnhancedRouteRefreshCap(), M.LongLivedGR(())]  # LLGR "aware": no families


def peer_addpath(peer_open: M.Open) -> int:
    """The peer's ADD-PATH mode for IPv4 unicast (0 none, 1 receive, 2 send, 3 both); as
    BIRD, the last matching entry counts."""
    mode = 0
    for cap in peer_open.capabilities:
        if isinstance(cap, M.AddPath):
            for a, s, sr in cap.families:
                if (a, s) == (M.AFI_IPV4, M.SAFI_UNICAST):
                    mode = sr
    return mode


def peer_sends_addpath(peer_open: M.Open) -> bool:
    """ADD-PATH for what we receive: we advertise both directions (Calico's ``add paths
    on``); NLRI from the peer carry path ids when it advertises send (2) or both (3)."""
    return bool(peer_addpath(peer_open) & M.ADDPATH_SEND)


def peer_receives_addpath(peer_open: M.Open) -> bool:
    """ADD-PATH for what we send: when the peer advertises receive (1) or both (3), our
    NLRI carry a path id (BIRD: ``add_path_tx``)."""
    return bool(peer_addpath(peer_open) & M.ADDPATH_RECEIVE)


class PeerInfos(Mapping[str, PeerInfo]):
    """The RIB's view of every peer of a speaker (``name -> PeerInfo``), each made when asked
    for. An export round needs its target's, and another peer's only to reflect a route that
    peer sent; building all of them for every round (each UPDATE received, each session that
    comes up) was work in proportion to the peers, per round: in a 100-node mesh the largest
    part of the speaker's own work after the asyncio loop's."""

    def __init__(self, peers: Mapping[str, Peer]) -> None:
        self._peers = peers

    def __getitem__(self, name: str) -> PeerInfo:
        peer = self._peers.get(name)
        if peer is None:
            raise KeyError(name)
        return peer.info_for_rib()

    def __contains__(self, name: object) -> bool:
        return name in self._peers

    def __iter__(self) -> Iterator[str]:
        return iter(self._peers)

    def __len__(self) -> int:
        return len(self._peers)


class Connection:
    """One session attempt with a peer: its FSM and, at any time, at most one transport
    (an outgoing connect in flight, or a connected socket). The FSM's Drop closes the
    transport; Down ends the Connection (``closed``), after which events are ignored."""

    def __init__(self, peer: Peer, incoming: bool):
        self.peer = peer
        self.incoming = incoming
        self.fsm = F.FSM(peer.fsm_config(), incoming=incoming)
        self.transport: asyncio.Transport | None = None  # the connected socket's
        self.wire: Wire | None = None                     # its reader (framing)
        self.timers: dict[str, asyncio.TimerHandle] = {}
        self.deadlines: dict[str, float] = {}  # each running timer's deadline (loop time)
        self._connecting: asyncio.Task | None = None  # the outgoing connect in flight
        self._attempt = 0  # numbers connect attempts: a superseded one never reports back
        self._tcp_up = False  # the attempt in flight has a connected socket (its transport comes)
        self.recv_addpath = False   # NLRI from the peer carry path ids
        self.send_addpath = False   # NLRI to the peer carry path ids
        self.closed = False

    @property
    def state(self) -> F.State:
        """FSM state of this connection."""
        return self.fsm.state

    def feed(self, ev: object) -> None:
        """Feed an event and perform the resulting actions."""
        if self.closed and not isinstance(ev, F.ManualStop):
            return
        for act in self.fsm.handle(ev):
            self._do(act)

    def _do(self, act: object) -> None:
        loop = asyncio.get_running_loop()
        if isinstance(act, F.StartTimer):
            when = loop.time() + act.seconds
            self.deadlines[act.name] = when
            old = self.timers.get(act.name)
            if isinstance(old, asyncio.TimerHandle) and not old.cancelled() and old.when() <= when:
                # a later deadline for a timer already set (the hold timer, restarted by every
                # message received): the set one fires first and sets itself again for the
                # rest, instead of a cancel and a new entry in the loop's heap per message
                return
            if old is not None:
                old.cancel()
            self.timers[act.name] = loop.call_at(when, self._due, act.name)
        elif isinstance(act, F.StopTimer):
            self.deadlines.pop(act.name, None)
            old = self.timers.pop(act.name, None)
            if old:
                old.cancel()
        elif isinstance(act, F.Connect):
            assert self._connecting is None and self.transport is None, "second transport"
            self._attempt += 1
            self._connecting = loop.create_task(self._connect(self._attempt))
        elif isinstance(act, F.Send):
            self.send(act.msg)
        elif isinstance(act, F.Drop):
            self._drop_transport()
        elif isinstance(act, F.OpenAccepted):
            # the peer's OPEN fixes how NLRI are framed both ways from the next message on
            self.recv_addpath = peer_sends_addpath(act.peer_open)
            self.send_addpath = peer_receives_addpath(act.peer_open)
            self.peer.on_open(self)
        elif isinstance(act, F.Up):
            self.recv_addpath = peer_sends_addpath(act.peer_open)
            self.send_addpath = peer_receives_addpath(act.peer_open)
            self.peer.on_up(self, act.peer_open)
        elif isinstance(act, F.Down):
            self._close()
            self.peer.on_down(self, act.reason, act.was_established, act.error)
        elif isinstance(act, F.Deliver):
            self.peer.on_message(act.msg)

    def _due(self, name: str) -> None:
        """A timer's handle ran: the timer expires, unless it was restarted meanwhile with a
        later deadline (then its handle is set again for that)."""
        loop = asyncio.get_running_loop()
        when = self.deadlines.get(name)
        if when is not None and when > loop.time():
            self.timers[name] = loop.call_at(when, self._due, name)
            return
        self._fire(name)

    def _fire(self, name: str) -> None:
        self.deadlines.pop(name, None)
        self.timers.pop(name, None)
        if name == "connect_retry" and self._connecting is not None and self._tcp_up:
            return  # the kernel connected this attempt: TcpConnected (or TcpFailed) follows
        if name == "connect_retry" and self._connecting is not None:
            # the connect may have completed in this same loop iteration, its wakeup queued
            # behind this timer (a loop starved for a whole connect-retry time): let it run
            # first, so a connection that is up is not dropped for a retry. StopTimer (on
            # TcpConnected) cancels this deferred expiry like any timer.
            self.timers[name] = asyncio.get_running_loop().call_soon(self._expire, name)
            return
        self.feed(F.TimerExpired(name))

    def _expire(self, name: str) -> None:
        self.deadlines.pop(name, None)
        self.timers.pop(name, None)
        self.feed(F.TimerExpired(name))

    def send(self, msg: object) -> None:
        """Write one message (no-op when the socket is gone)."""
        tr = self.transport
        if tr is None or tr.is_closing():
            return
        if isinstance(msg, M.Open):
            tr.write(self.peer.open_bytes(msg))
            return
        tr.write(M.encode(msg, addpath=self.send_addpath))
        if isinstance(msg, M.Notification):
            self.peer.last_notification_sent = msg

    def send_raw(self, data: bytes) -> None:
        """Write pre-encoded bytes."""
        tr = self.transport
        if tr is not None and not tr.is_closing():
            tr.write(data)

    def _drop_transport(self) -> None:
        """Close the socket (queued bytes, e.g. a NOTIFICATION, still go out) and abandon
        a connect in flight."""
        self._attempt += 1
        self._tcp_up = False
        task = self._connecting
        if task is not None and task is not asyncio.current_task():
            task.cancel()
        self._connecting = None
        if self.wire is not None:
            self.wire.unbind()
        if self.transport is not None:
            try:
                self.transport.close()
            except Exception:  # noqa: BLE001 - closing a broken socket
                pass
        self.transport = self.wire = None

    def _close(self) -> None:
        """End this Connection: transport and timers."""
        self.closed = True
        for t in self.timers.values():
            t.cancel()
        self.timers.clear()
        self.deadlines.clear()
        self._drop_transport()

    async def _connect(self, attempt: int) -> None:
        """One outgoing attempt. It has no timeout of its own: the FSM's ConnectRetry expiry
        drops an attempt in flight and starts the next (RFC 4271 8.2.2, as BIRD's connect
        retry timer does). Once the kernel has connected the socket, the attempt counts as
        connected (``_tcp_up``): on a loop slowed by load, making its transport takes several
        iterations, and an expiry meanwhile must not drop a connection the peer has already
        accepted (each such drop cost both ends an accepted socket, an OPEN and a close)."""
        pc, sc = self.peer.config, self.peer.speaker.config
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # asyncio: TCP_NODELAY
        try:
            sock.setblocking(False)
            sock.bind((str(sc.local_address), 0))
            await loop.sock_connect(sock, (self.peer.host, pc.port))
            if attempt != self._attempt or self.closed:
                sock.close()  # superseded while connecting
                return
            self._tcp_up = True
            transport, wire = await loop.create_connection(Wire, sock=sock)
        except OSError as exc:
            sock.close()
            if attempt != self._attempt or self.closed:
                return  # superseded: the FSM already moved on
            self._connecting = None
            why = os.strerror(exc.errno) if exc.errno else str(exc)  # BIRD's: 'Connection refused'
            self.feed(F.TcpFailed(f"Socket: {why}"))
            return
        except BaseException:  # dropped (cancelled) while connecting
            sock.close()
            raise
        finally:
            if attempt == self._attempt:
                self._tcp_up = False
        if attempt != self._attempt or self.closed:
            transport.close()  # superseded meanwhile
            return
        self._connecting = None
        if not self.peer.accept_outgoing(self):
            transport.close()
            return
        self.transport, self.wire = transport, wire
        self.feed(F.TcpConnected())
        if self.wire is wire:  # still ours after the FSM's actions
            wire.bind(self)

    def attach(self, transport: asyncio.Transport, wire: Wire) -> None:
        """Use an accepted socket."""
        self.transport, self.wire = transport, wire
        self.feed(F.ManualStart())
        self.feed(F.TcpConnected())
        if self.wire is wire:
            wire.bind(self)

    # ---- the Wire's calls (agent.bgp.wire), on the loop, in the callback that read the bytes
    def on_wire(self, data: bytes) -> bool:
        """One whole message from the socket; False once this connection reads no more."""
        wire = self.wire
        try:
            msg = M.decode(data, addpath=self.recv_addpath)
        except E.BGPError as err:
            log.warning("%s: malformed message: %s", self.peer.config.name, err)
            self.on_wire_error(err)
            return False
        if isinstance(msg, M.Update) and msg.treat_as_withdraw:
            log.warning("%s: treat-as-withdraw: %s", self.peer.config.name, msg.errors)
            self.peer.speaker.count("treat_as_withdraw")
        if isinstance(msg, M.Notification):
            self.peer.last_notification_received = msg
        self.feed(F.MessageReceived(msg))
        return not self.closed and self.wire is wire

    def on_wire_error(self, err: E.BGPError) -> None:
        """A malformed message: the FSM answers with its NOTIFICATION; nothing more is read."""
        if self.wire is not None:
            self.wire.unbind()
        self.peer.speaker.count("malformed")
        self.feed(F.DecodeError(err))

    def on_wire_lost(self, reason: str) -> None:
        """The peer closed the connection, or the socket failed."""
        self.feed(F.TcpFailed(reason))


class Peer:
    """One configured neighbour: its connections, its Adj-RIB-Out, GR state, status."""

    def __init__(self, speaker: Speaker, config: PeerConfig):
        self.speaker = speaker
        self.config = config
        #: the address as a socket's peername gives it: matched on every accepted connection
        #: (a lab's mesh is rejected and retried many times while its nodes' configs catch up)
        self.host = str(config.address)
        self._open: tuple[M.Open, bytes] | None = None  # the last OPEN sent and its bytes
        self.main: Connection | None = None        # the outgoing-capable connection
        self.incoming: list[Connection] = []
        self.session: Connection | None = None     # the Established one
        # prefix -> the attributes object last advertised (shared by the prefix group)
        self.adj_out: dict[int, M.Attributes] = {}
        self.since = time.time()
        self.info = ""
        self.failures = 0
        self.stopped = True
        self.restart_handle: asyncio.TimerHandle | None = None
        self.stale_handle: asyncio.TimerHandle | None = None
        self.peer_open: M.Open | None = None
        self.eor_received = False
        self.last_notification_sent: M.Notification | None = None
        self.last_notification_received: M.Notification | None = None
        self.updates_received = 0
        self._info: PeerInfo | None = None

    # ---- identity
    def fsm_config(self) -> F.FSMConfig:
        """Per-connection FSM parameters."""
        sc = self.speaker.config
        timers = sc.timers
        if self.config.keepalive is not None:
            timers = F.Timers(**{**timers.__dict__, "keepalive": self.config.keepalive})
        return F.FSMConfig(local_as=sc.local_as, router_id=sc.router_id, peer_as=self.config.asn,
                           passive=self.config.passive, timers=timers,
                           capabilities=local_capabilities(sc, self.config))

    def open_bytes(self, msg: M.Open) -> bytes:
        """``msg`` encoded: the same OPEN goes on every connection to this peer (each accepted
        and each outgoing attempt), so its bytes are kept while the message stays the same."""
        cached = self._open
        if cached is None or cached[0] != msg:
            cached = self._open = (msg, M.encode(msg))
        return cached[1]

    def info_for_rib(self) -> PeerInfo:
        """The RIB's view of this peer (made once per peer OPEN and local address, not per
        UPDATE)."""
        rid = self.peer_open.router_id if self.peer_open else _NO_ID
        local = self.speaker.config.local_address
        info = self._info
        if info is None or info.router_id != rid or info.local_address != local:
            info = self._info = PeerInfo(self.config.name, self.config.address,
                                         self.config.asn, rid, rr_client=self.config.rr_client,
                                         local_address=local)
        return info

    # ---- lifecycle
    def start(self, since: float | None = None) -> None:
        """Start (or restart after an error wait). ``since``: the monotonic time the
        connect delay counts from (the daemon's start), when not now."""
        self.stopped = False
        self.restart_handle = None
        self.main = Connection(self, incoming=False)
        if since is not None:
            t = self.main.fsm.config.timers
            left = max(0.01, t.connect_delay - (time.monotonic() - since))
            self.main.fsm.config.timers = F.Timers(**{**t.__dict__, "connect_delay": left})
        self.main.feed(F.ManualStart())
        self._set_state_change()

    def stop(self, notify: bool = True, subcode: int = E.ADMINISTRATIVE_SHUTDOWN) -> None:
        """Close every connection (Cease with ``subcode`` when ``notify``)."""
        self.stopped = True
        if self.restart_handle:
            self.restart_handle.cancel()
        for c in [self.main, *self.incoming]:
            if c is None:
                continue
            if notify:
                c.feed(F.ManualStop(subcode))
            else:
                c.closed = True
                c._close()
        self.main, self.incoming, self.session = None, [], None
        if self.stale_handle:
            self.stale_handle.cancel()
            self.stale_handle = None

    def connections(self) -> list[Connection]:
        """Live connections."""
        return [c for c in [self.main, *self.incoming] if c is not None and not c.closed]

    def accept_incoming(self, transport: asyncio.Transport, wire: Wire) -> None:
        """A TCP connection from this peer's address arrived."""
        if self.stopped:
            transport.close()
            return
        if self.session is not None and self.session.state == F.State.ESTABLISHED:
            # collision with an Established session: the new one loses (RFC 4271 6.8)
            transport.write(M.encode(M.Notification(E.CEASE, E.CONNECTION_COLLISION_RESOLUTION)))
            transport.close()
            return
        conn = Connection(self, incoming=True)
        self.incoming = [c for c in self.incoming if not c.closed] + [conn]
        conn.attach(transport, wire)

    def accept_outgoing(self, conn: Connection) -> bool:
        """Our connect succeeded; keep it unless a session already runs."""
        return not (self.session and self.session.state == F.State.ESTABLISHED)

    def _set_state_change(self) -> None:
        self.since = time.time()

    # ---- FSM callbacks
    def _resolve_collision(self, conn: Connection) -> bool:
        """RFC 4271 6.8 when ``conn`` got its OPEN: True if ``conn`` survives."""
        others = [c for c in self.connections() if c is not conn
                  and c.state in (F.State.OPENCONFIRM, F.State.ESTABLISHED)]
        if not others:
            return True
        other = others[0]
        self.speaker.count("collisions")
        if other.state == F.State.ESTABLISHED:
            conn.feed(F.ManualStop(E.CONNECTION_COLLISION_RESOLUTION))
            return False
        local_id = int(self.speaker.config.router_id)
        remote_id = int(conn.fsm.peer_open.router_id) if conn.fsm.peer_open else 0
        # keep the connection initiated by the speaker with the higher BGP identifier
        keep_incoming = remote_id > local_id
        loser = other if conn.incoming == keep_incoming else conn
        loser.feed(F.ManualStop(E.CONNECTION_COLLISION_RESOLUTION))
        return loser is not conn

    def on_open(self, conn: Connection) -> None:
        """OPEN accepted on ``conn``: RFC 4271 6.8 collision detection."""
        self._resolve_collision(conn)

    def on_up(self, conn: Connection, peer_open: M.Open) -> None:
        """Session Established on ``conn``."""
        if not self._resolve_collision(conn):
            return
        for c in self.connections():
            if c is not conn and c.state != F.State.ESTABLISHED:
                c.closed = True
                c._close()
        self.session = conn
        self.peer_open = peer_open
        self.speaker.count("sessions_up")
        self.failures = 0
        self.info = ""
        self.eor_received = False
        self._set_state_change()
        self.adj_out = {}
        self.speaker.on_peer_up(self)

    def on_down(self, conn: Connection, reason: str, was_established: bool, error: bool = False) -> None:
        """A connection ended; ``error``: on a protocol error (:class:`agent.bgp.fsm.Down`),
        after which the session starts again only after the error wait, as BIRD's does. A
        connection closed or lost starts again after BIRD's connect delay floor
        (:func:`agent.bgp.fsm.reconnect_wait`)."""
        if conn in self.incoming:
            self.incoming.remove(conn)
        if self.stopped:
            if was_established:
                self.speaker.on_peer_down(self, graceful=False)
            return
        if conn is self.session:
            self.session = None
        if was_established:
            self.speaker.count("sessions_down")
            self._set_state_change()
            # RFC 4724: only a transport loss without NOTIFICATION starts graceful restart
            # (as in BIRD, hold timer expiry and NOTIFICATIONs flush the routes)
            lost = reason.startswith(("connection closed", "Socket:"))
            gr = self.peer_open.cap(M.GracefulRestart) if self.peer_open else None
            self.speaker.on_peer_down(self, graceful=bool(gr) and lost,
                                      restart_time=gr.restart_time if gr else 0)
        self.info = reason
        if conn is self.main or (was_established and self.main is None) or (
                self.main is not None and self.main.closed):
            timers = self.speaker.config.timers
            if error:
                self.failures += 1
                wait = F.error_wait(self.failures, timers)
            else:
                wait = F.reconnect_wait(timers)
            if self.config.passive:
                wait = 0
            self.main = None
            loop = asyncio.get_running_loop()
            self.restart_handle = loop.call_later(wait, self._restart)

    def _restart(self) -> None:
        if not self.stopped and self.main is None:
            self.start()

    def on_message(self, msg: object) -> None:
        """UPDATE or ROUTE-REFRESH on the Established session."""
        if isinstance(msg, M.RouteRefresh):
            if (msg.afi, msg.safi) != (M.AFI_IPV4, M.SAFI_UNICAST):
                return  # a family we never negotiated: ignore (RFC 2918)
            # as BIRD: the subtype counts only when the peer announced enhanced route
            # refresh; an unknown one is logged and ignored (no NOTIFICATION)
            enhanced = bool(self.peer_open and self.peer_open.cap(M.EnhancedRouteRefreshCap))
            subtype = msg.subtype if enhanced else 0
            if subtype == 0:
                self.speaker.resend(self)
            elif subtype == 1:    # BoRR: the peer re-advertises everything (RFC 7313)
                self.speaker.rib.mark_stale(self.config.name)
            elif subtype == 2:    # EoRR: what was not re-advertised is gone
                self.speaker._changed(self.speaker.rib.sweep_stale(self.config.name))
            else:
                log.warning("%s: ROUTE-REFRESH with unknown subtype %d, ignored",
                            self.config.name, subtype)
            return
        self.updates_received += 1
        self.speaker.on_update(self, msg)

    # ---- status
    def state(self) -> F.State:
        """The most advanced connection state."""
        order = list(F.State)
        states = [c.state for c in self.connections()]
        if self.session is not None and not self.session.closed:
            states.append(self.session.state)
        return max(states, key=order.index) if states else F.State.IDLE

    def status(self) -> dict:
        """What ``show protocols`` and node status print for this peer."""
        st = self.state()
        proto_state = "down" if self.stopped else ("up" if st == F.State.ESTABLISHED else "start")
        info = st.value
        if st == F.State.ACTIVE and self.config.passive:
            info = "Passive"  # BIRD's wording for a passive peer waiting to be called
        # the newest reason: this connection attempt's failure, else why the last one ended
        detail = (self.main.fsm.last_error if self.main is not None else "") or self.info
        if st != F.State.ESTABLISHED and detail:
            info += f"        {detail}"  # as BIRD: Active        Socket: Connection refused
        return {"name": self.config.name, "address": str(self.config.address),
                "type": self.config.peer_type, "state": proto_state, "bgp_state": st.value,
                "since": self.since, "info": info,
                "routes_received": self.speaker.rib.count_from(self.config.name),
                "routes_exported": len(self.adj_out),
                "add_path_rx": bool(self.session and self.session.recv_addpath),
                "add_path_tx": bool(self.session and self.session.send_addpath),
                "peer_capabilities": sorted({c.code for c in self.peer_open.capabilities})
                if self.peer_open else [],
                "hold_time": self.session.fsm.hold_time if self.session else None,
                "keepalive_time": self.session.fsm.keepalive_time if self.session else None}


@dataclass
class Counters:
    """Event counters shown by status()."""

    malformed: int = 0
    treat_as_withdraw: int = 0
    collisions: int = 0
    kernel_changes: int = 0
    accepted: int = 0        # incoming connections from configured peers
    rejected: int = 0        # incoming connections from addresses that are not peers (closed)
    sessions_up: int = 0     # sessions that reached Established
    sessions_down: int = 0   # Established sessions that ended


class Speaker:
    """The BGP speaker: listener, peers, RIB, export and kernel programming."""

    def __init__(self, config: SpeakerConfig, *, program_kernel: bool = True,
                 on_change: Callable[[set[int]], None] | None = None,
                 kernel: Kernel | None = None, clock: Clock | None = None,
                 started_at: float | None = None):
        """``kernel``: the handle routes go to (default: a netlink handle on the netns of
        the thread that starts the speaker); ``clock``: scan and retry timers;
        ``started_at``: the monotonic time the first connect delay counts from."""
        config.validate()
        # monotonic time the process started: the first connect delay counts from there
        self.started_at = started_at
        self.config = config
        self.clock = clock or Clock()
        self.kernel_handle = kernel
        self._own_handle = False
        self.rib = RIB(config.local_as, config.router_id, config.cluster_id)
        self.peers: dict[str, Peer] = {}
        self.server: asyncio.AbstractServer | None = None
        self.program_kernel = program_kernel
        self.kernel = None
        self.kernel_exec = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="bgp-krt")
        self.kernel_routes: dict[int, KernelRoute] = {}  # prefix key -> what we installed
        self.counters = Counters()
        self.on_change = on_change
        self.started = self.clock.time()
        self._pending_kernel: set[int] = set()
        self._kernel_task: asyncio.Task | None = None
        self._kernel_busy = 0  # kernel calls running on the kernel thread
        self._kernel_retry: asyncio.TimerHandle | None = None
        self._kernel_retry_delay = KERNEL_RETRY_FIRST  # doubles while retries fail
        self._retry_prefixes: set[int] = set()
        self._scan_task: asyncio.Task | None = None
        # routes found in the kernel at start (a restart): kept until the first full scan
        self._adopted: set[int] = set()
        self._pending_export: set[int] = set()
        self._export_memo: tuple[object, tuple[int, ...]] = (None, ())
        # (Loc-RIB entry, pool class) -> kernel route: one object per way of routing
        self._kcache: dict[tuple, KernelRoute | None] = {}
        self._kcache_policy: object = None
        # id(attributes) -> (attributes, encoded): one encoding per attribute set
        self._attr_bytes: dict[int, tuple[M.Attributes, bytes]] = {}
        self._export_handle: asyncio.Handle | None = None

    def count(self, name: str) -> None:
        """Bump a counter."""
        setattr(self.counters, name, getattr(self.counters, name) + 1)

    # ---- lifecycle
    async def start(self, listener: socket.socket | None = None) -> None:
        """Open the kernel driver, listen (on ``listener`` when the caller bound it
        already), start every peer, originate local routes."""
        if self.program_kernel:
            from agent.bgp.kernel import KernelRoutes

            if self.kernel_handle is None:
                from kernel.netlink import Netlink

                self.kernel_handle, self._own_handle = Netlink(), True  # this thread's netns
            self.kernel = KernelRoutes(self.kernel_handle)
            existing = await self._kernel_dump()
            self.kernel_routes = dict(existing)
            self._adopted = set(existing)
        loop = asyncio.get_running_loop()
        if listener is not None:
            self.server = await loop.create_server(self._wire, sock=listener)
        else:
            self.server = await loop.create_server(
                self._wire, self.config.listen_address, self.config.listen_port,
                reuse_address=True)
        self._set_local()
        for pc in self.config.peers:
            self._add_peer(pc, since=self.started_at)
        self._schedule_kernel(set(self.kernel_routes) | set(self.rib.loc))
        if self.kernel is not None:
            self._scan_task = asyncio.get_running_loop().create_task(self._scan_loop())

    async def _scan_loop(self) -> None:
        """BIRD's kernel 'scan time': re-read the kernel table and repair differences
        (routes deleted by someone else, devices re-created). The first scan, one graceful
        restart time after start, also drops routes left by a previous run that nobody
        re-announced."""
        first = max(self.config.timers.graceful_restart, 1.0)
        await self.clock.asleep(first)
        self._adopted = set()
        while True:
            desired = {p: r for p in self.rib.loc if (r := self.desired_kernel(p)) is not None}
            actual = await self._kernel_dump()
            if actual != desired:
                self.kernel_routes = dict(actual)
                self._schedule_kernel(set(actual) | set(desired))
            await self.clock.asleep(KERNEL_SCAN_SECONDS)

    async def _kernel_dump(self) -> dict[int, KernelRoute]:
        """The kernel's proto bird routes, keyed by prefix key."""
        return await self._in_kernel_thread(self.kernel.dump)

    async def _in_kernel_thread(self, fn, *args):
        """Run a kernel call on the kernel thread (one at a time: the handle is not shared
        between threads while this runs)."""
        self._kernel_busy += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self.kernel_exec, fn, *args)
        finally:
            self._kernel_busy -= 1

    async def stop(self, graceful: bool = False) -> None:
        """Stop: Cease to every peer and flush routes; or, with ``graceful``, just drop TCP
        (peers keep our routes for the restart time) and leave kernel routes in place."""
        closing = [c.wire.lost for p in self.peers.values() for c in p.connections()
                   if c.wire is not None and c.wire.lost is not None]
        for p in list(self.peers.values()):
            p.stop(notify=not graceful)
        if self.server is not None:
            self.server.close()
        if closing:  # let NOTIFICATIONs reach the wire before the loop goes away
            await asyncio.wait(closing, timeout=1.0)
        if self._scan_task is not None:
            self._scan_task.cancel()
        if self._kernel_retry is not None:
            self._kernel_retry.cancel()
        if self._kernel_task is not None:
            try:
                await self._kernel_task
            except Exception:  # noqa: BLE001 - the last sync failing must not block stop
                pass
        if self.kernel is not None:
            if not graceful:
                await self._in_kernel_thread(self.kernel.flush)
            if self._own_handle:
                await self._in_kernel_thread(self.kernel_handle.close)
        self.kernel_exec.shutdown(wait=False)

    def _add_peer(self, pc: PeerConfig, since: float | None = None) -> None:
        peer = Peer(self, pc)
        self.peers[pc.name] = peer
        peer.start(since)

    def _wire(self) -> Wire:
        return Wire(self._accept)

    def _accept(self, transport: asyncio.Transport, wire: Wire) -> None:
        host = transport.get_extra_info("peername")[0]
        for p in self.peers.values():
            if p.host == host:
                self.count("accepted")
                p.accept_incoming(transport, wire)
                return
        self.count("rejected")
        log.info("rejecting BGP connection from unknown peer %s", host)
        transport.close()

    # ---- configuration changes
    async def apply(self, new: SpeakerConfig) -> None:
        """Move to a new configuration. Peers whose settings did not change keep their
        sessions; removed peers get Cease/peer de-configured; changed ones restart."""
        new.validate()
        old = self.config
        identity_changed = (new.router_id, new.local_as, new.local_address, new.cluster_id,
                            new.listen_port, new.listen_address) != (
            old.router_id, old.local_as, old.local_address, old.cluster_id, old.listen_port,
            old.listen_address)
        self.config = new
        if identity_changed:
            for p in list(self.peers.values()):
                p.stop(subcode=E.OTHER_CONFIGURATION_CHANGE)
                self._peer_gone(p)
            self.peers = {}
            self.rib.local_as, self.rib.router_id = new.local_as, new.router_id
            self.rib.cluster_id = new.cluster_id
            if (new.listen_port, new.listen_address) != (old.listen_port, old.listen_address) \
                    and self.server is not None:
                self.server.close()
                self.server = await asyncio.get_running_loop().create_server(
                    self._wire, new.listen_address, new.listen_port, reuse_address=True)
        wanted = {p.name: p for p in new.peers}
        for name, peer in list(self.peers.items()):
            if name not in wanted or wanted[name] != peer.config:
                peer.stop(subcode=E.PEER_DECONFIGURED if name not in wanted
                          else E.OTHER_CONFIGURATION_CHANGE)
                del self.peers[name]
                self._peer_gone(peer)
        for name, pc in wanted.items():
            if name not in self.peers:
                self._add_peer(pc)
        changed = self._set_local()
        if new.export_pools != old.export_pools:
            changed |= set(self.rib.loc)
        self._schedule_export(changed)
        if new.kernel != old.kernel:
            self._schedule_kernel(set(self.rib.loc) | set(self.kernel_routes))
        else:
            self._schedule_kernel(changed)

    def _peer_gone(self, peer: Peer) -> None:
        changed = self.rib.drop_peer(peer.config.name)
        self._changed(changed)

    def _set_local(self) -> set[int]:
        return self.rib.set_local(dict(self.config.originate))

    # ---- RIB events
    def on_peer_up(self, peer: Peer) -> None:
        """Send the whole Adj-RIB-Out, then End-of-RIB."""
        log.info("%s: Established", peer.config.name)
        self.send_full(peer)

    def resend(self, peer: Peer) -> None:
        """Answer a ROUTE-REFRESH: everything again, between BoRR and EoRR when both sides
        announced enhanced route refresh (RFC 7313)."""
        conn = peer.session
        if conn is None:
            return
        enhanced = bool(peer.peer_open and peer.peer_open.cap(M.EnhancedRouteRefreshCap))
        if enhanced:
            conn.send(M.RouteRefresh(subtype=1))
        peer.adj_out = {}
        self._export_to(peer, set(self.rib.loc))
        if enhanced:
            conn.send(M.RouteRefresh(subtype=2))

    def send_full(self, peer: Peer) -> None:
        """Advertise everything exportable to ``peer`` followed by End-of-RIB."""
        self._export_to(peer, set(self.rib.loc) | set(peer.adj_out))
        if peer.session is not None:
            peer.session.send(M.Update())  # End-of-RIB

    def on_peer_down(self, peer: Peer, graceful: bool, restart_time: float = 0) -> None:
        """Session lost: drop its routes, or keep them stale for the restart time (RFC 4724)."""
        peer.adj_out = {}
        if graceful and restart_time > 0:
            self.rib.mark_stale(peer.config.name)
            loop = asyncio.get_running_loop()
            if peer.stale_handle:
                peer.stale_handle.cancel()
            peer.stale_handle = loop.call_later(restart_time, self._stale_expired, peer)
            return
        self._changed(self.rib.drop_peer(peer.config.name))

    def _stale_expired(self, peer: Peer) -> None:
        peer.stale_handle = None
        self._changed(self.rib.sweep_stale(peer.config.name))

    def on_update(self, peer: Peer, upd: M.Update) -> None:
        """Apply an UPDATE; End-of-RIB ends graceful-restart stale retention."""
        if upd.is_end_of_rib():
            peer.eor_received = True
            if peer.stale_handle:
                peer.stale_handle.cancel()
                peer.stale_handle = None
            self._changed(self.rib.sweep_stale(peer.config.name))
            return
        self._changed(self.rib.apply_update(peer.info_for_rib(), upd))

    def _changed(self, prefixes: set[int]) -> None:
        if not prefixes:
            return
        self._schedule_export(prefixes)
        self._schedule_kernel(prefixes)
        if self.on_change:
            self.on_change(prefixes)

    # ---- export
    def _schedule_export(self, prefixes: set[int]) -> None:
        # coalesce everything changed in this loop iteration into one round of UPDATEs
        self._pending_export |= prefixes
        if self._export_handle is None and self._pending_export:
            self._export_handle = asyncio.get_running_loop().call_soon(self._flush_export)

    def _flush_export(self) -> None:
        self._export_handle = None
        prefixes, self._pending_export = self._pending_export, set()
        peers = [p for p in self.peers.values()
                 if p.session is not None and p.session.state == F.State.ESTABLISHED]
        if not peers:
            return
        items = self._export_items(prefixes)
        if self.rib.cluster_id is None and all(it[0] is not None and it[0].ibgp for it in items):
            # every prefix of the round is best over a path learned from an iBGP peer and
            # nothing is reflected: no iBGP peer is sent any of them (split horizon, the
            # full-mesh case of every route a node receives), so the round can reach only
            # eBGP peers and iBGP peers that were sent one of these prefixes before (its
            # withdrawal). Without this, each received route cost an empty pass over every
            # peer (a 100-node mesh: ~7 % more CPU, docs/bgp.md).
            local_as = self.config.local_as
            peers = [p for p in peers if p.config.asn != local_as
                     or (p.adj_out and not p.adj_out.keys().isdisjoint(prefixes))]
            if not peers:
                return
        # built once per round, not once per peer
        infos = self._peer_infos()
        shared: dict[tuple, bytes] = {}
        for peer in peers:
            self._export_items_to(peer, items, infos, shared)

    def _peer_infos(self) -> Mapping[str, PeerInfo]:
        return PeerInfos(self.peers)

    def _export_items(self, prefixes: set[int]) -> list[list]:
        """The round's prefixes grouped by best path (None: no route any more), each group
        as [best path, its prefixes in order, those inside an export pool or None until a
        peer needs them]: what every peer's export needs, computed once per round. Per peer
        the work is then per group (and C-speed bulk operations on each group's lists), not
        per prefix. The export pools are checked only for groups some peer is sent (in a
        full mesh most groups are other nodes' routes, which no iBGP peer is sent)."""
        loc = self.rib.loc
        by_best: dict[int, list] = {}
        for pfx in sorted(prefixes):
            paths = loc.get(pfx)
            best = paths[0] if paths else None
            g = by_best.get(id(best))
            if g is None:
                by_best[id(best)] = [best, [pfx], None]
            else:
                g[1].append(pfx)
        return list(by_best.values())

    def _in_pool(self, item: list) -> list[int]:
        """An export item's prefixes inside the export pools (computed once per item)."""
        if item[2] is None:
            pools = self.config.export_pools
            if self._export_memo[0] is not pools:
                self._export_memo = (pools, tuple(map(PF.of, pools)))
            keys, within = self._export_memo[1], PF.within
            item[2] = [p for p in item[1] if within(p, keys)]
        return item[2]

    def _export_to(self, peer: Peer, prefixes: set[int]) -> None:
        self._export_items_to(peer, self._export_items(prefixes), self._peer_infos(), {})

    def _export_items_to(self, peer: Peer, items: list[list],
                         infos: Mapping[str, PeerInfo], shared: dict[tuple, bytes]) -> None:
        """Bring ``peer``'s Adj-RIB-Out up to date for ``items``: UPDATEs grouped by
        attribute set, each filled with as many NLRI as fit (as BIRD does). Identical
        UPDATE streams to several peers are encoded once (``shared``)."""
        conn = peer.session
        if conn is None or conn.state != F.State.ESTABLISHED:
            return
        to = infos[peer.config.name]
        adj = peer.adj_out
        announce: dict[int, tuple[M.Attributes, list[int]]] = {}
        withdraw: list[int] = []
        export_path = self.rib.export_path
        for item in items:
            best, pfxs = item[0], item[1]
            attrs, filtered = export_path(best, to, infos) if best is not None else (None, False)
            send = self._in_pool(item) if attrs is not None and filtered else pfxs
            if attrs is None or len(send) != len(pfxs):  # some or all must not be advertised
                if adj:
                    keep = set(send) if attrs is not None else ()
                    gone = [p for p in pfxs if p in adj and p not in keep]
                    for p in gone:
                        del adj[p]
                    withdraw.extend(gone)
                if attrs is None:
                    continue
            new = [p for p in send if adj.get(p) is not attrs] if adj else send
            if not new:
                continue
            adj.update(dict.fromkeys(new, attrs))
            grp = announce.get(id(attrs))
            if grp is None:
                announce[id(attrs)] = (attrs, list(new))
            else:
                grp[1].extend(new)
        withdraw.sort()
        # ADD-PATH towards this peer: we advertise one path per prefix (the best), so one
        # path id for all of them makes each announcement replace the previous one
        pid = EXPORT_PATH_ID if conn.send_addpath else None
        out = []
        if withdraw:
            key = ("w", pid, tuple(withdraw))
            data = shared.get(key)
            if data is None:
                data = shared[key] = b"".join(
                    M.frame(M.UPDATE, len(nl).to_bytes(2, "big") + nl + b"\0\0")
                    for nl, _n in M.pack_nlri(withdraw, M.MAX_MESSAGE_LEN - M.HEADER_LEN - 4,
                                              pid))
            out.append(data)
        for attrs, nets in announce.values():
            enc = self._encoded(attrs)
            key = (enc, pid, tuple(nets))
            data = shared.get(key)
            if data is None:
                head = b"\0\0" + len(enc).to_bytes(2, "big") + enc
                room = M.MAX_MESSAGE_LEN - M.HEADER_LEN - len(head)
                data = shared[key] = b"".join(M.frame(M.UPDATE, head + nl)
                                              for nl, _n in M.pack_nlri(nets, room, pid))
            out.append(data)
        if out:
            conn.send_raw(b"".join(out))

    def _encoded(self, attrs: M.Attributes) -> bytes:
        hit = self._attr_bytes.get(id(attrs))
        if hit is None or hit[0] is not attrs:
            if len(self._attr_bytes) > 10000:
                self._attr_bytes.clear()
            hit = self._attr_bytes[id(attrs)] = (attrs, M.encode_attributes(attrs))
        return hit[1]

    # ---- kernel
    def desired_kernel(self, pfx: int) -> KernelRoute | None:
        """The route the kernel should hold for ``pfx`` (one shared object per way of
        routing: the prefix is the dict key, not part of the route)."""
        paths = self.rib.loc.get(pfx)
        if not paths:
            return None
        policy = self.config.kernel
        if self._kcache_policy is not policy or len(self._kcache) > 20000:
            self._kcache, self._kcache_policy = {}, policy
        key = (paths, pool_class(pfx, policy))
        r = self._kcache.get(key, _MISSING)
        if r is _MISSING:
            r = self._kcache[key] = route_for(key[1], paths, policy, pfx)
        return r

    def _schedule_kernel(self, prefixes: set[int]) -> None:
        if self.kernel is None:
            return  # not programming the kernel: nothing to track
        idle = (self._kernel_task is None or self._kernel_task.done()) and not self._kernel_busy
        if idle and not self._pending_kernel and len(prefixes) <= KERNEL_INLINE_MAX:
            # a few routes and nothing queued (a new block, a node joining): written now,
            # in this loop iteration, as BIRD writes its routes
            changes = self._kernel_changes(prefixes)
            if changes:
                self._kernel_done(changes, self.kernel.apply(changes))
            return
        self._pending_kernel |= prefixes
        if self._kernel_task is None or self._kernel_task.done():
            self._kernel_task = asyncio.get_running_loop().create_task(self._kernel_sync())

    def _kernel_changes(self, prefixes: set[int]) -> dict[int, KernelRoute | None]:
        """What must change in the kernel for ``prefixes`` (route, or None: remove)."""
        changes: dict[int, KernelRoute | None] = {}
        for p in prefixes:
            want = self.desired_kernel(p)
            if want is None and p in self._adopted:
                continue  # left by our previous run: wait for the peers to re-announce
            if want is None and p not in self.kernel_routes:
                self.kernel.failing.pop(p, None)  # withdrawn before it ever got in
                continue
            if self.kernel_routes.get(p) != want:
                changes[p] = want
        return changes

    def _kernel_done(self, changes: dict[int, KernelRoute | None], failed: set[int]) -> None:
        self.counters.kernel_changes += len(changes) - len(failed)
        for p, r in changes.items():
            if p in failed:
                continue
            if r is None:
                self.kernel_routes.pop(p, None)
            else:
                self.kernel_routes[p] = r
        if failed:
            self._retry_kernel(failed)
        elif not self._retry_prefixes:
            self._kernel_retry_delay = KERNEL_RETRY_FIRST

    async def _kernel_sync(self) -> None:
        while self._pending_kernel:
            prefixes, self._pending_kernel = self._pending_kernel, set()
            changes = self._kernel_changes(prefixes)
            if not changes:
                continue
            if len(changes) <= KERNEL_INLINE_MAX and not self._kernel_busy:
                failed = self.kernel.apply(changes)  # a thread hop costs more than the write
            else:
                # many: the kernel thread writes while the loop goes on decoding UPDATEs
                failed = await self._in_kernel_thread(self.kernel.apply, changes)
            self._kernel_done(changes, failed)

    def _retry_kernel(self, prefixes: set[int]) -> None:
        self._retry_prefixes |= prefixes

        def fire() -> None:
            self._kernel_retry = None
            todo, self._retry_prefixes = self._retry_prefixes, set()
            self._schedule_kernel(todo)

        if self._kernel_retry is None:
            self._kernel_retry = self.clock.call_later(self._kernel_retry_delay, fire)
            self._kernel_retry_delay = min(self._kernel_retry_delay * 2, KERNEL_RETRY_SECONDS)

    # ---- views
    def status(self) -> dict:
        """A JSON-able summary: peers, route counts, counters."""
        return {"router_id": str(self.config.router_id), "as": self.config.local_as,
                "started": self.started,
                "peers": [p.status() for p in self.peers.values()],
                "established": sum(1 for p in self.peers.values()
                                   if p.state() == F.State.ESTABLISHED),
                "routes": len(self.rib.loc), "kernel_routes": len(self.kernel_routes),
                "counters": dict(self.counters.__dict__),
                # routes that cannot be programmed right now (retried every second)
                "kernel_errors": sorted(self.kernel.failing.values()) if self.kernel else [],
                "kernel_error_history": list(self.kernel.errors) if self.kernel else []}

    def show_route(self) -> list[str]:
        """birdc-like 'show route' lines."""
        lines = []
        for pfx in sorted(self.rib.loc):
            name = PF.text(pfx)
            for n, p in enumerate(self.rib.loc[pfx]):
                mark = "*" if n == 0 else " "
                if p.source == "local":
                    how = "blackhole" if p.blackhole else "unreachable"
                    lines.append(f"{name:<18} {how:<26} [static1] {mark} (200)")
                    continue
                r = route_for(pool_class(pfx, self.config.kernel), (p,), self.config.kernel, pfx)
                dev = r.nexthops[0].device if r and r.nexthops and r.nexthops[0].device else ""
                via = f"via {p.next_hop}" + (f" on {dev}" if dev else "")
                path = " ".join(str(a) for _t, s in p.attrs.as_path for a in s)
                stale = " stale" if p.stale else ""
                lines.append(f"{name:<18} {via:<26} [{p.source}] {mark} (100) "
                             f"[{path or 'i'}]{stale}")
        return lines
