"""Property test of the state machine's timer and connection events (hypothesis).

A simulated transport performs the FSM's actions exactly as the speaker's does (one-shot
timers, one TCP connection attempt per Connect, Drop closes whatever is open) and offers
only the events that transport could produce next, in any order: timers that are running
fire, an attempt in flight connects or fails, a live connection delivers messages or
breaks, an operator starts or stops the session. After every step the RFC 4271 (section 8)
invariants of the state must hold, and the session never has two live transports.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Address

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.bgp import errors as E
from agent.bgp import fsm as F
from agent.bgp import messages as M

pytestmark = pytest.mark.unit

ME, PEER = IPv4Address("172.30.0.10"), IPv4Address("172.30.0.11")
S = F.State


@dataclass
class Transport:
    """What the speaker's Connection does with the FSM's actions, as bookkeeping."""

    fsm: F.FSM
    timers: set[str] = field(default_factory=set)
    attempts: int = 0          # TCP connects in flight
    live: int = 0              # connected sockets
    up: bool = False
    ups: int = 0
    log: list = field(default_factory=list)

    def feed(self, ev: object) -> None:
        self.log.append(ev)
        for act in self.fsm.handle(ev):
            self.log.append(act)
            self.perform(act)
        self.check()

    def perform(self, act: object) -> None:
        if isinstance(act, F.StartTimer):
            assert act.seconds > 0, act
            self.timers.add(act.name)
        elif isinstance(act, F.StopTimer):
            self.timers.discard(act.name)
        elif isinstance(act, F.Connect):
            assert self.attempts + self.live == 0, \
                "Connect while a transport is open or in flight: two transports on one session"
            self.attempts = 1
        elif isinstance(act, F.Drop):
            self.attempts = self.live = 0
        elif isinstance(act, F.Send):
            assert self.live == 1, f"send {type(act.msg).__name__} without a connection"
        elif isinstance(act, F.Up):
            assert not self.up, "Up twice"
            self.up = True
            self.ups += 1
        elif isinstance(act, F.Down):
            assert act.was_established == self.up, act
            self.up = False

    def check(self) -> None:
        """RFC 4271 section 8, per state, as this speaker implements it."""
        f, st = self.fsm, self.fsm.state
        assert self.attempts + self.live <= 1, "two transports at once"
        assert self.up == (st is S.ESTABLISHED)
        active_side = not (f.config.passive or f.incoming)
        if st is S.IDLE:
            assert not self.timers and self.attempts + self.live == 0, (self.timers, self)
        elif st is S.CONNECT:
            assert "connect_retry" in self.timers and self.live == 0
            assert active_side
        elif st is S.ACTIVE:
            assert self.attempts + self.live == 0
            assert ("connect_retry" in self.timers) == active_side
            assert "hold" not in self.timers and "keepalive" not in self.timers
        elif st is S.OPENSENT:
            assert self.live == 1 and "hold" in self.timers
            assert "connect_retry" not in self.timers
        else:  # OpenConfirm, Established
            assert self.live == 1 and "connect_retry" not in self.timers
            assert ("hold" in self.timers) == bool(f.hold_time)
            assert ("keepalive" in self.timers) == bool(f.keepalive_time)

    def choices(self) -> list:
        """Every event this transport could deliver now."""
        out: list = [F.ManualStart(), F.ManualStop()]
        out += [F.TimerExpired(name) for name in sorted(self.timers)]
        if self.attempts:
            out += ["connect-ok", F.TcpFailed("Socket: Connection refused")]
        if self.live:
            out += [F.TcpFailed("connection closed"),
                    F.MessageReceived(M.Open(asn=64512, hold_time=9, router_id=PEER)),
                    F.MessageReceived(M.Open(asn=64512, hold_time=0, router_id=PEER)),
                    F.MessageReceived(M.Open(asn=65000, hold_time=9, router_id=PEER)),
                    F.MessageReceived(M.Keepalive()), F.MessageReceived(M.Update()),
                    F.MessageReceived(M.RouteRefresh()),
                    F.MessageReceived(M.Notification(6, 2)),
                    F.DecodeError(E.UpdateMessageError(1, "bad"))]
        return out

    def deliver(self, choice: object) -> None:
        if isinstance(choice, F.TimerExpired):
            self.timers.discard(choice.name)  # one-shot: fired means no longer running
        if choice == "connect-ok":
            self.attempts, self.live = 0, 1
            choice = F.TcpConnected()
        elif isinstance(choice, F.TcpFailed):
            self.attempts = self.live = 0
        self.feed(choice)


def make(passive: bool, incoming: bool, hold: float) -> Transport:
    timers = F.Timers(hold=hold, connect_delay=0.1, connect_retry=0.3)
    cfg = F.FSMConfig(local_as=64512, router_id=ME, peer_as=64512, passive=passive,
                      timers=timers)
    t = Transport(F.FSM(cfg, incoming=incoming))
    if incoming:  # an accepted socket: the speaker feeds ManualStart then TcpConnected
        t.live = 1
        for ev in (F.ManualStart(), F.TcpConnected()):
            for act in t.fsm.handle(ev):
                t.perform(act)
    return t


@settings(max_examples=400, deadline=None)
@given(passive=st.booleans(), incoming=st.booleans(), hold=st.sampled_from([0, 3, 9]),
       data=st.data())
def test_timer_and_connection_events_keep_rfc4271_invariants(passive, incoming, hold, data):
    t = make(passive, incoming, hold)
    t.check()
    for _ in range(data.draw(st.integers(1, 40), label="steps")):
        choice = data.draw(st.sampled_from(t.choices()), label="event")
        t.deliver(choice)


def test_connect_retry_expiry_with_an_attempt_in_flight_drops_it_first():
    """The issue-18 bug in one sequence: delay expires (connect 1), retry expires while
    connect 1 is in flight -> connect 1 is dropped before connect 2 starts."""
    t = make(passive=False, incoming=False, hold=9)
    t.feed(F.ManualStart())
    t.deliver(F.TimerExpired("connect_retry"))
    assert t.attempts == 1
    acts = t.fsm.handle(F.TimerExpired("connect_retry"))
    assert acts == [F.Drop(), F.Connect(), F.StartTimer("connect_retry", 0.3)]
    assert t.fsm.state is S.CONNECT
