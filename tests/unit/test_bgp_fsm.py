"""The pure BGP state machine: every state, timers as events, NOTIFICATION codes."""

from ipaddress import IPv4Address

import pytest

from agent.bgp import errors as E
from agent.bgp import fsm as F
from agent.bgp import messages as M

pytestmark = pytest.mark.unit

ME, PEER = IPv4Address("172.30.0.10"), IPv4Address("172.30.0.11")


def cfg(**kw):
    return F.FSMConfig(local_as=64512, router_id=ME, peer_as=64512,
                       timers=F.Timers(hold=9, connect_delay=0.5, connect_retry=1), **kw)


def peer_open(asn=64512, hold=240, rid=PEER):
    return F.MessageReceived(M.Open(asn=asn, hold_time=hold, router_id=rid))


def kinds(actions):
    return [type(a).__name__ for a in actions]


def establish(f):
    f.handle(F.ManualStart())
    f.handle(F.TimerExpired("connect_retry"))
    f.handle(F.TcpConnected())
    f.handle(peer_open())
    return f.handle(F.MessageReceived(M.Keepalive()))


def test_active_side_walks_every_state_to_established():
    f = F.FSM(cfg())
    assert f.state is F.State.IDLE
    assert f.handle(F.ManualStart()) == [F.StartTimer("connect_retry", 0.5)]   # connect delay
    assert f.state is F.State.CONNECT
    assert f.handle(F.TimerExpired("connect_retry")) == [F.Connect(), F.StartTimer("connect_retry", 1)]
    acts = f.handle(F.TcpFailed("refused"))
    assert f.state is F.State.ACTIVE and acts == [F.StartTimer("connect_retry", 1)]
    f.handle(F.TimerExpired("connect_retry"))
    assert f.state is F.State.CONNECT
    acts = f.handle(F.TcpConnected())
    assert f.state is F.State.OPENSENT
    sent = [a.msg for a in acts if isinstance(a, F.Send)]
    assert isinstance(sent[0], M.Open) and sent[0].hold_time == 9
    acts = f.handle(peer_open(hold=6))
    assert f.state is F.State.OPENCONFIRM
    assert acts[0] == F.OpenAccepted(peer_open(hold=6).msg)     # collision detection point
    assert f.hold_time == 6 and f.keepalive_time == 2          # min(9, 6), hold/3
    assert F.Send(M.Keepalive()) in acts and F.StartTimer("keepalive", 2) in acts
    acts = f.handle(F.MessageReceived(M.Keepalive()))
    assert f.state is F.State.ESTABLISHED and kinds(acts)[-1] == "Up"
    assert f.handle(F.TimerExpired("keepalive")) == [F.Send(M.Keepalive()), F.StartTimer("keepalive", 2)]
    upd = M.Update()
    assert F.Deliver(upd) in f.handle(F.MessageReceived(upd))


def test_passive_never_connects():
    f = F.FSM(cfg(passive=True))
    assert f.handle(F.ManualStart()) == []
    assert f.state is F.State.ACTIVE
    assert f.handle(F.TimerExpired("connect_retry")) == []
    f.handle(F.TcpConnected())
    assert f.state is F.State.OPENSENT


def test_hold_timer_expiry_sends_notification_4():
    f = F.FSM(cfg())
    establish(f)
    acts = f.handle(F.TimerExpired("hold"))
    assert acts[0] == F.Send(M.Notification(E.HOLD_TIMER_EXPIRED, 0))
    assert F.Drop() in acts and acts[-1] == F.Down("hold timer expired", True, error=True)
    assert f.state is F.State.IDLE


def opensent(f):
    f.handle(F.ManualStart())
    f.handle(F.TimerExpired("connect_retry"))
    f.handle(F.TcpConnected())
    assert f.state is F.State.OPENSENT


def test_only_protocol_errors_count_as_errors_for_the_error_wait():
    """BIRD delays a session's next start by its error wait after a NOTIFICATION other than
    Cease, sent or received (bgp_error / bgp_rx_notification call bgp_update_startup_delay);
    a connection closed or lost is tried again after the connect delay (bgp_sock_err)."""
    f = F.FSM(cfg())
    opensent(f)   # e.g. a passive peer that does not know us yet closes the connection
    assert f.handle(F.TcpFailed("connection closed"))[-1] == F.Down("connection closed", False, error=False)
    f = F.FSM(cfg())
    establish(f)
    assert f.handle(F.TcpFailed("connection closed"))[-1] == F.Down("connection closed", True, error=False)
    f = F.FSM(cfg())
    establish(f)
    down = f.handle(F.MessageReceived(M.Notification(E.CEASE, 2)))[-1]
    assert isinstance(down, F.Down) and down.error is False       # Cease: no error wait
    f = F.FSM(cfg())
    opensent(f)
    down = f.handle(F.MessageReceived(M.Notification(E.OPEN_MESSAGE_ERROR, E.BAD_PEER_AS)))[-1]
    assert isinstance(down, F.Down) and down.error is True
    f = F.FSM(cfg())
    opensent(f)
    down = f.handle(peer_open(asn=65000))[-1]                  # we refuse its OPEN: 2/2 sent
    assert isinstance(down, F.Down) and down.error is True
    f = F.FSM(cfg())
    opensent(f)
    down = f.handle(F.ManualStop())[-1]                        # administrative: Cease
    assert isinstance(down, F.Down) and down.error is False


def test_reconnect_wait_is_birds_connect_delay_floor():
    assert F.reconnect_wait(F.Timers(connect_delay=0.1)) == pytest.approx(0.9)   # 1 s in all
    assert F.reconnect_wait(F.Timers()) == 0.0                                   # Calico's 2 s


def test_bad_peer_as_and_own_router_id():
    f = F.FSM(cfg())
    f.handle(F.ManualStart())
    f.handle(F.TimerExpired("connect_retry"))
    f.handle(F.TcpConnected())
    acts = f.handle(peer_open(asn=65000))
    # BIRD's data: the peer's 2-byte My AS (no 4-octet AS capability in that OPEN)
    assert acts[0] == F.Send(M.Notification(2, E.BAD_PEER_AS, bytes.fromhex("fde8")))
    f2 = F.FSM(cfg(passive=True))
    f2.handle(F.ManualStart())
    f2.handle(F.TcpConnected())
    assert f2.handle(peer_open(rid=ME))[0] == F.Send(
        M.Notification(2, E.BAD_BGP_IDENTIFIER, ME.packed))          # the identifier
    f3 = F.FSM(cfg())
    f3.handle(F.ManualStart())
    f3.handle(F.TimerExpired("connect_retry"))
    f3.handle(F.TcpConnected())
    four = M.Open(asn=4200000000, hold_time=9, router_id=PEER,
                  capabilities=[M.FourOctetAS(4200000000)])
    assert f3.handle(F.MessageReceived(four))[0] == F.Send(
        M.Notification(2, E.BAD_PEER_AS, (4200000000).to_bytes(4, "big")))


def test_update_in_openconfirm_is_taken_as_keepalive_then_delivered_as_bird():
    f = F.FSM(cfg())
    f.handle(F.ManualStart())
    f.handle(F.TimerExpired("connect_retry"))
    f.handle(F.TcpConnected())
    f.handle(peer_open())
    upd = M.Update()
    acts = f.handle(F.MessageReceived(upd))
    assert f.state is F.State.ESTABLISHED
    assert kinds(acts)[-2:] == ["Up", "Deliver"]


def test_malformed_input_notifies_with_its_code():
    f = F.FSM(cfg())
    establish(f)
    err = E.UpdateMessageError(E.MALFORMED_ATTRIBUTE_LIST, "bad")
    acts = f.handle(F.DecodeError(err))
    assert acts[0] == F.Send(M.Notification(3, 1))
    assert f.state is F.State.IDLE


def test_unexpected_messages_are_fsm_errors():
    f = F.FSM(cfg(passive=True))
    f.handle(F.ManualStart())
    f.handle(F.TcpConnected())
    assert f.handle(F.MessageReceived(M.Keepalive()))[0] == F.Send(M.Notification(5, 1))
    g = F.FSM(cfg())
    establish(g)
    assert g.handle(peer_open())[0] == F.Send(M.Notification(5, 3))


def test_notification_received_and_manual_stop():
    f = F.FSM(cfg())
    establish(f)
    acts = f.handle(F.MessageReceived(M.Notification(6, 2)))
    assert F.Send not in map(type, acts) and "Cease" in acts[-1].reason
    g = F.FSM(cfg())
    establish(g)
    assert g.handle(F.ManualStop())[0] == F.Send(M.Notification(6, 2))


def test_zero_hold_disables_keepalives():
    f = F.FSM(cfg())
    f.handle(F.ManualStart())
    f.handle(F.TimerExpired("connect_retry"))
    f.handle(F.TcpConnected())
    acts = f.handle(peer_open(hold=0))
    assert f.hold_time == 0 and F.StopTimer("hold") in acts
    assert not any(isinstance(a, F.StartTimer) and a.name == "keepalive" for a in acts)


def test_defaults_and_error_wait():
    t = F.Timers()
    assert (t.hold, t.connect_delay, t.connect_retry, t.error_wait_min, t.error_wait_max) == (240, 2, 5, 5, 30)
    assert [F.error_wait(n, t) for n in range(6)] == [0, 5, 10, 20, 30, 30]
    with pytest.raises(ValueError, match="hold time"):
        F.Timers(hold=2).validate()


def test_timers_parse_from_text():
    t = F.Timers.parse("hold=9, connect_delay=0.5")
    assert (t.hold, t.connect_delay, t.connect_retry) == (9, 0.5, 5)
    with pytest.raises(ValueError, match="bad item 'hodl=9'"):
        F.Timers.parse("hodl=9")
    with pytest.raises(ValueError, match="must be a number"):
        F.Timers.parse("hold=soon")
