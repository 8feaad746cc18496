"""The sans-IO link endpoint: an acceptor and a connector wired together in memory.

Bytes are passed by hand and time is a number, so every test is deterministic.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
from collections.abc import Callable
from typing import Any, cast

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from twinline.link import messages as m
from twinline.link.endpoint import (
    Closed,
    Established,
    HelloReceived,
    LinkEndpoint,
    LinkEvent,
    LinkState,
    Received,
    hello_proof,
    welcome_proof,
)
from twinline.link.framing import FrameDecoder, LinkError, MessageDecoder, encode

SECRET = b"cluster-secret-0123456789abcdef"
T0 = 1000.0
ANY = m.PeerMessage | m.CtlToServer | m.CtlToSwitch


def nonces(letter: bytes) -> Callable[[], bytes]:
    counter = itertools.count()
    return lambda: letter * 12 + next(counter).to_bytes(4, "big")


def decode_all(data: bytes) -> list[msgspec.Struct]:
    decoder = MessageDecoder(ANY, "any")
    return [decoder.decode(f) for f in FrameDecoder().feed(data)]


class Pair:
    """A switch (acceptor) and an application server (connector) on one clock."""

    def __init__(
        self,
        *,
        acceptor_secret: bytes = SECRET,
        connector_secret: bytes = SECRET,
        expect_peer: str | None = None,
    ) -> None:
        self.now = T0
        self.acceptor = LinkEndpoint(
            "acceptor",
            secret=acceptor_secret,
            name="switch",
            incarnation=1,
            receives=m.CtlToSwitch,
            nonce_source=nonces(b"a"),
            wall_clock=lambda: self.now + 5e8,
        )
        self.connector = LinkEndpoint(
            "connector",
            secret=connector_secret,
            name="as1",
            incarnation=7,
            receives=m.CtlToServer,
            pid=4242,
            expect_peer=expect_peer,
            nonce_source=nonces(b"c"),
            wall_clock=lambda: self.now + 5e8,
        )

    def start(self) -> None:
        self.acceptor.start(self.now)
        self.connector.start(self.now)

    def to_connector(self) -> list[LinkEvent]:
        return self.connector.receive_data(self.acceptor.data_to_send(), self.now)

    def to_acceptor(self) -> list[LinkEvent]:
        return self.acceptor.receive_data(self.connector.data_to_send(), self.now)

    def handshake(self, live: list[m.LiveInstance] | None = None) -> None:
        self.start()
        assert self.to_connector() == []
        (hello_received,) = self.to_acceptor()
        assert isinstance(hello_received, HelloReceived)
        assert self.acceptor.accept(live or []) == [Established("as1", hello_received.hello)]
        (established,) = self.to_connector()
        assert isinstance(established, Established)

    def advance(self, endpoint: LinkEndpoint) -> list[LinkEvent]:
        """Moves the clock to `endpoint`'s next deadline and fires it."""
        deadline = endpoint.next_deadline()
        assert deadline is not None
        self.now = deadline
        return endpoint.handle_timer(self.now)


def no_received(events: list[LinkEvent]) -> bool:
    return not any(isinstance(e, Received | Established | HelloReceived) for e in events)


# --- handshake --------------------------------------------------------------------------


def test_handshake_both_ways_with_the_exact_messages() -> None:
    pair = Pair()
    pair.start()
    assert pair.connector.data_to_send() == b""  # the connector waits for the challenge
    challenge = pair.acceptor.data_to_send()
    assert challenge == encode(m.Challenge(version=1, nonce=b"a" * 12 + bytes(4)))

    assert pair.connector.receive_data(challenge, pair.now) == []
    hello_bytes = pair.connector.data_to_send()
    (hello,) = decode_all(hello_bytes)
    assert hello == m.Hello(
        version=1,
        name="as1",
        incarnation=7,
        pid=4242,
        nonce=b"c" * 12 + bytes(4),
        proof=hello_proof(
            SECRET,
            version=1,
            acceptor_nonce=b"a" * 12 + bytes(4),
            name="as1",
            incarnation=7,
            role="appserver",
            connector_nonce=b"c" * 12 + bytes(4),
        ),
    )
    assert isinstance(hello, m.Hello)
    assert pair.acceptor.receive_data(hello_bytes, pair.now) == [HelloReceived(hello)]
    assert pair.acceptor.state is LinkState.DECIDING
    assert pair.acceptor.data_to_send() == b""  # nothing until the application decides

    live = [m.LiveInstance("c-9", 2, "standby")]
    assert pair.acceptor.accept(live) == [Established("as1", hello)]
    assert pair.acceptor.peer_name == "as1"
    welcome_bytes = pair.acceptor.data_to_send()
    (welcome,) = decode_all(welcome_bytes)
    assert welcome == m.Welcome(
        proof=welcome_proof(
            SECRET,
            version=1,
            connector_nonce=b"c" * 12 + bytes(4),
            name="switch",
            acceptor_nonce=b"a" * 12 + bytes(4),
        ),
        name="switch",
        live=live,
    )
    assert isinstance(welcome, m.Welcome)
    events = pair.connector.receive_data(welcome_bytes, pair.now)
    assert events == [Established("switch", welcome)]
    assert pair.connector.established and pair.acceptor.established


def test_messages_flow_both_ways_after_the_handshake() -> None:
    pair = Pair()
    pair.handshake()
    cmd = m.Command(call="c-1", epoch=1, seq=1, action=m.Release())
    pair.connector.send(cmd)
    assert pair.to_acceptor() == [Received(cmd)]
    ev = m.Event(call="c-1", seq=1, kind="answered", at=5.0)
    pair.acceptor.send(ev)
    pair.acceptor.send(ev)
    assert pair.to_connector() == [Received(ev), Received(ev)]


def test_proof_layout_is_length_prefixed_fields_under_hmac_sha256() -> None:
    def lp(b: bytes) -> bytes:
        return len(b).to_bytes(4, "big") + b

    expected = hmac.new(
        SECRET,
        b"hello"
        + (1).to_bytes(4, "big")
        + lp(b"A" * 16)
        + lp(b"as1")
        + (7).to_bytes(8, "big")
        + lp(b"appserver")
        + lp(b"C" * 16),
        hashlib.sha256,
    ).digest()
    got = hello_proof(
        SECRET,
        version=1,
        acceptor_nonce=b"A" * 16,
        name="as1",
        incarnation=7,
        role="appserver",
        connector_nonce=b"C" * 16,
    )
    assert got == expected
    expected_welcome = hmac.new(
        SECRET,
        b"welcome" + (1).to_bytes(4, "big") + lp(b"C" * 16) + lp(b"switch") + lp(b"A" * 16),
        hashlib.sha256,
    ).digest()
    assert (
        welcome_proof(
            SECRET, version=1, connector_nonce=b"C" * 16, name="switch", acceptor_nonce=b"A" * 16
        )
        == expected_welcome
    )
    # Bytes cannot move between fields: "as1"+"x..." and "as"+"1x..." prove differently.
    shifted = hello_proof(
        SECRET,
        version=1,
        acceptor_nonce=b"A" * 16,
        name="as",
        incarnation=7,
        role="appserver",
        connector_nonce=b"1" + b"C" * 15,
    )
    assert shifted != got


# --- authentication failures --------------------------------------------------------------


def test_wrong_secret_the_acceptor_closes_before_anything_else() -> None:
    pair = Pair(connector_secret=b"not-the-cluster-secret-at-all!!")
    pair.start()
    pair.to_connector()
    events = pair.to_acceptor()
    assert events == [Closed("authentication failed for 'as1'")]
    assert pair.acceptor.closed
    # The acceptor says why, and the connector logs it.
    assert pair.to_connector() == [Closed("peer closed: authentication failed for 'as1'")]


def test_commands_pipelined_after_a_bad_hello_are_never_surfaced() -> None:
    pair = Pair(connector_secret=b"not-the-cluster-secret-at-all!!")
    pair.start()
    pair.to_connector()
    hello = pair.connector.data_to_send()
    cmd = encode(m.Command(call="c-1", epoch=1, seq=1, action=m.Release()))
    events = pair.acceptor.receive_data(hello + cmd + cmd, pair.now)
    assert events == [Closed("authentication failed for 'as1'")]
    assert pair.acceptor.receive_data(cmd, pair.now) == []  # after Closed: ignored


def test_a_client_that_skips_the_handshake_gets_nothing_through() -> None:
    acceptor = Pair().acceptor
    acceptor.start(T0)
    cmd = encode(m.Command(call="c-1", epoch=1, seq=1, action=m.Release()))
    events = acceptor.receive_data(cmd + cmd, T0)
    assert events == [
        Closed("malformed frame: Invalid value 'command' - at `$.type` (expecting hello)")
    ]
    assert acceptor.receive_data(cmd, T0) == []
    # It was told why, after the challenge.
    challenge, bye = decode_all(acceptor.data_to_send())
    assert isinstance(challenge, m.Challenge)
    assert bye == m.Bye(reason=acceptor.close_reason or "")


def test_a_server_that_skips_the_handshake_gets_nothing_through() -> None:
    connector = Pair().connector
    connector.start(T0)
    offered = encode(
        m.Offered(
            call="c",
            epoch=1,
            role="primary",
            primary="as1",
            standby=None,
            service="s",
            info=m.CallInfo(caller="1", callee="2"),
        )
    )
    events = connector.receive_data(offered, T0)
    assert len(events) == 1
    assert isinstance(events[0], Closed)
    assert events[0].reason.startswith("malformed frame: Invalid value 'offered'")
    assert "(expecting challenge)" in events[0].reason


def test_data_pipelined_after_a_good_hello_closes_the_link() -> None:
    # The connector must wait for the Welcome; a Command sent before it is not delivered,
    # not even after the application accepts.
    pair = Pair()
    pair.start()
    pair.to_connector()
    hello = pair.connector.data_to_send()
    cmd = encode(m.Command(call="c-1", epoch=1, seq=1, action=m.Release()))
    events = pair.acceptor.receive_data(hello + cmd, pair.now)
    assert isinstance(events[0], HelloReceived)
    assert isinstance(events[1], Closed)
    assert "expecting nothing before the welcome" in events[1].reason
    assert pair.acceptor.accept([]) == []
    assert no_received(pair.acceptor.receive_data(cmd, pair.now))


def test_a_replayed_hello_fails_against_a_fresh_challenge() -> None:
    first = Pair()
    first.start()
    first.to_connector()
    recorded = first.connector.data_to_send()
    second = Pair()
    second.acceptor = LinkEndpoint(
        "acceptor",
        secret=SECRET,
        name="switch",
        incarnation=1,
        receives=m.CtlToSwitch,
        nonce_source=nonces(b"z"),
    )
    second.acceptor.start(T0)
    assert second.acceptor.receive_data(recorded, T0) == [Closed("authentication failed for 'as1'")]


def test_a_forged_welcome_closes_the_connector() -> None:
    pair = Pair()
    pair.start()
    pair.to_connector()
    pair.connector.data_to_send()
    forged = m.Welcome(proof=b"\x00" * 32, name="switch", live=[m.LiveInstance("c", 1, "primary")])
    events = pair.connector.receive_data(encode(forged), pair.now)
    assert events == [Closed("authentication failed: the welcome's proof is wrong")]
    assert pair.connector.peer is None


def test_a_welcome_from_an_acceptor_with_another_secret_closes_the_connector() -> None:
    pair = Pair(acceptor_secret=b"another-secret-another-secret!!")
    pair.start()
    pair.to_connector()
    # An acceptor that does not know the secret cannot check the Hello either; here it
    # answers anyway, as an impostor would, with the proof it can make.
    hello = decode_all(pair.connector.data_to_send())[0]
    assert isinstance(hello, m.Hello)
    proof = welcome_proof(
        b"another-secret-another-secret!!",
        version=1,
        connector_nonce=hello.nonce,
        name="switch",
        acceptor_nonce=b"a" * 12 + bytes(4),
    )
    events = pair.connector.receive_data(encode(m.Welcome(proof=proof, name="switch")), pair.now)
    assert events == [Closed("authentication failed: the welcome's proof is wrong")]


def test_a_welcome_with_the_name_changed_fails_its_proof() -> None:
    pair = Pair()
    pair.start()
    pair.to_connector()
    pair.to_acceptor()
    pair.acceptor.accept([])
    (welcome,) = decode_all(pair.acceptor.data_to_send())
    assert isinstance(welcome, m.Welcome)
    tampered = m.Welcome(proof=welcome.proof, name="switch2", live=welcome.live)
    (closed,) = pair.connector.receive_data(encode(tampered), pair.now)
    assert isinstance(closed, Closed) and "authentication failed" in closed.reason


def test_the_connector_can_insist_on_the_peer_it_meant() -> None:
    pair = Pair(expect_peer="as2")
    pair.start()
    pair.to_connector()
    pair.to_acceptor()
    pair.acceptor.accept([])
    assert pair.to_connector() == [Closed("unexpected peer 'switch', expected 'as2'")]


def test_wrong_version_in_the_challenge() -> None:
    connector = Pair().connector
    connector.start(T0)
    events = connector.receive_data(encode(m.Challenge(version=2, nonce=b"n" * 16)), T0)
    assert events == [Closed("protocol version mismatch: peer 2, ours 1")]
    assert decode_all(connector.data_to_send()) == [m.Bye(reason=connector.close_reason or "")]


def test_wrong_version_in_the_hello() -> None:
    pair = Pair()
    pair.start()
    pair.to_connector()
    hello = decode_all(pair.connector.data_to_send())[0]
    assert isinstance(hello, m.Hello)
    newer = msgspec.structs.replace(hello, version=2)
    events = pair.acceptor.receive_data(encode(newer), pair.now)
    assert events == [Closed("protocol version mismatch: peer 2, ours 1")]


@pytest.mark.parametrize("nonce", [b"", b"short", b"x" * 65])
def test_a_challenge_with_a_bad_nonce_is_refused(nonce: bytes) -> None:
    connector = Pair().connector
    connector.start(T0)
    (closed,) = connector.receive_data(encode(m.Challenge(version=1, nonce=nonce)), T0)
    assert isinstance(closed, Closed) and closed.reason.startswith("bad challenge")


def test_a_hello_with_a_short_nonce_is_refused() -> None:
    acceptor = Pair().acceptor
    acceptor.start(T0)
    hello = m.Hello(version=1, name="as1", incarnation=1, nonce=b"", proof=b"")
    assert acceptor.receive_data(encode(hello), T0) == [Closed("bad hello from 'as1'")]


def test_refuse_tells_the_connector_why() -> None:
    pair = Pair()
    pair.start()
    pair.to_connector()
    pair.to_acceptor()
    assert pair.acceptor.refuse("unknown server") == [Closed("refused: unknown server")]
    assert pair.to_connector() == [Closed("peer closed: refused: unknown server")]


def test_a_handshake_that_does_not_finish_times_out() -> None:
    pair = Pair()
    pair.start()
    assert pair.acceptor.next_deadline() == T0 + 5.0
    assert pair.acceptor.handle_timer(T0 + 4.999) == []
    assert pair.advance(pair.acceptor) == [Closed("handshake not completed in 5 s")]
    assert pair.acceptor.next_deadline() is None


# --- heartbeats -------------------------------------------------------------------------


def test_heartbeats_every_interval_at_exact_times_with_the_load() -> None:
    pair = Pair()
    pair.handshake()
    pair.connector.set_load(active=3, standby=4, draining=True)
    seen: list[tuple[float, m.Heartbeat]] = []
    for _ in range(5):
        assert pair.advance(pair.connector) == []
        for event in pair.to_acceptor():
            assert isinstance(event, Received) and isinstance(event.message, m.Heartbeat)
            seen.append((pair.now, event.message))
        pair.to_connector()  # keep the connector alive too
    assert [t for t, _ in seen] == [T0 + k * 0.1 for k in range(1, 6)]
    assert [h.sent_at for _, h in seen] == [T0 + 5e8 + k * 0.1 for k in range(1, 6)]
    assert all((h.active, h.standby, h.draining) == (3, 4, True) for _, h in seen)


def test_closed_after_three_missed_heartbeats() -> None:
    pair = Pair()
    pair.handshake()
    # The connector falls silent: the acceptor keeps sending its own, then gives up.
    assert pair.advance(pair.acceptor) == []
    assert pair.advance(pair.acceptor) == []
    assert pair.now == T0 + 2 * 0.1
    assert pair.advance(pair.acceptor) == [Closed("no heartbeat for 300 ms")]
    assert pair.now == T0 + 3 * 0.1
    sent = decode_all(pair.acceptor.data_to_send())
    assert [type(s) for s in sent] == [m.Heartbeat, m.Heartbeat, m.Bye]
    assert pair.acceptor.next_deadline() is None
    assert pair.acceptor.handle_timer(pair.now + 1) == []


def test_anything_received_keeps_the_link_alive() -> None:
    pair = Pair()
    pair.handshake()
    for _ in range(10):
        pair.now += 0.25  # under 300 ms between arrivals
        pair.acceptor.handle_timer(pair.now)
        pair.connector.send(_heartbeat())
        assert not any(isinstance(e, Closed) for e in pair.to_acceptor())
    assert pair.acceptor.established


def _heartbeat() -> m.Heartbeat:
    return m.Heartbeat(sent_at=0.0)


def test_a_stalled_loop_sends_one_heartbeat_not_a_burst() -> None:
    pair = Pair()
    pair.handshake()
    pair.connector.send(_heartbeat())
    pair.now = T0 + 0.25
    pair.to_acceptor()  # heard from the peer at T0 + 0.25
    assert pair.acceptor.handle_timer(T0 + 0.45) == []  # due at T0 + 0.1, fired late
    assert [type(s) for s in decode_all(pair.acceptor.data_to_send())] == [m.Heartbeat]
    assert pair.acceptor.next_deadline() == T0 + 5 * 0.1  # ... and back on the grid


def test_our_own_stall_is_not_taken_for_the_peers_silence() -> None:
    pair = Pair()
    pair.handshake()
    # This process's loop stalls for a second: the timer fires late, the peer's bytes
    # may be unread in the socket. No verdict yet; a fresh interval to hear it.
    assert pair.acceptor.handle_timer(T0 + 1.0) == []
    assert pair.acceptor.stalls == 1
    assert pair.acceptor.established
    # The peer is heard: all is well.
    pair.connector.send(_heartbeat())
    pair.now = T0 + 1.05
    assert pair.to_acceptor() != []
    assert pair.acceptor.handle_timer(T0 + 1.1) == []
    # A peer that is really silent is still declared dead, on the normal schedule.
    assert pair.acceptor.handle_timer(T0 + 1.25) == []
    assert pair.acceptor.handle_timer(T0 + 1.35) == [Closed("no heartbeat for 300 ms")]


# --- malformed frames -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\x00\x00\x00\x03\xc1\xc1\xc1", "malformed frame: MessagePack data is malformed"),
        (b"\xff\xff\xff\xff", "malformed frame: length 4294967295 over the limit of 1048576"),
        (b"\x00\x00\x00\x00", "malformed frame: zero length"),
        (encode(m.Forget(call="c")), "malformed frame: Invalid value 'forget' - at `$.type`"),
        (encode(m.Challenge(version=1, nonce=b"n" * 16)), "Invalid value 'challenge'"),
        (encode(m.Hello(version=1, name="x", incarnation=1, nonce=b"", proof=b"")), "'hello'"),
    ],
    ids=["garbage", "oversized", "zero", "wrong-type", "challenge-again", "hello-again"],
)
def test_malformed_frames_close_an_established_link(data: bytes, reason: str) -> None:
    pair = Pair()
    pair.handshake()
    events = pair.acceptor.receive_data(data, pair.now)
    assert len(events) == 1
    assert isinstance(events[0], Closed)
    assert events[0].reason.startswith("malformed frame: ")
    assert reason in events[0].reason
    assert decode_all(pair.acceptor.data_to_send()) == [m.Bye(reason=events[0].reason)]
    assert pair.acceptor.receive_data(encode(_heartbeat()), pair.now) == []


def test_frames_before_a_bad_length_are_delivered_then_the_link_closes() -> None:
    pair = Pair()
    pair.handshake()
    hb = encode(_heartbeat())
    events = pair.acceptor.receive_data(hb + b"\x00\x00\x00\x00" + hb, pair.now)
    assert events == [Received(_heartbeat()), Closed("malformed frame: zero length")]


def test_frames_cut_into_single_bytes_still_arrive() -> None:
    pair = Pair()
    pair.handshake()
    cmd = m.Command(call="c-1", epoch=1, seq=1, action=m.Route(destinations=["2001"]))
    pair.connector.send(cmd)
    data = pair.connector.data_to_send()
    events: list[LinkEvent] = []
    for i in range(len(data)):
        events += pair.acceptor.receive_data(data[i : i + 1], pair.now)
    assert events == [Received(cmd)]


# --- closing and local misuse --------------------------------------------------------------


def test_close_sends_a_bye_and_the_peer_closes_with_its_reason() -> None:
    pair = Pair()
    pair.handshake()
    assert pair.connector.close("shutting down") == [Closed("shutting down")]
    assert pair.connector.close("again") == []
    pair.connector.send(_heartbeat())  # dropped: the link is closed
    assert pair.to_acceptor() == [Closed("peer closed: shutting down")]
    assert pair.acceptor.close("late") == []


def test_connection_lost_closes_once() -> None:
    pair = Pair()
    pair.handshake()
    assert pair.acceptor.connection_lost() == [Closed("connection lost")]
    assert pair.acceptor.connection_lost() == []
    assert pair.acceptor.data_to_send() == b""


def test_send_before_the_handshake_is_a_local_error() -> None:
    pair = Pair()
    pair.start()
    with pytest.raises(RuntimeError):
        pair.connector.send(_heartbeat())
    with pytest.raises(RuntimeError):
        pair.acceptor.accept([])


def test_an_oversized_message_is_refused_and_the_link_stays_up() -> None:
    pair = Pair()
    pair.handshake()
    big = m.Forget(call="x" * (1 << 20))
    with pytest.raises(LinkError, match="message too large"):
        pair.acceptor.send(big)
    assert pair.acceptor.established
    assert pair.acceptor.data_to_send() == b""


def test_constructor_checks() -> None:
    with pytest.raises(ValueError, match="secret"):
        LinkEndpoint("acceptor", secret=b"", name="s", incarnation=1, receives=m.CtlToSwitch)
    with pytest.raises(ValueError, match="role"):
        LinkEndpoint(
            cast(Any, "client"), secret=b"x", name="s", incarnation=1, receives=m.CtlToSwitch
        )
    with pytest.raises(ValueError, match="incarnation"):
        LinkEndpoint("connector", secret=b"x", name="s", incarnation=-1, receives=m.CtlToServer)


# --- anything a peer sends -----------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=8))
def test_random_bytes_never_raise_and_never_get_through_the_handshake(
    chunks: list[bytes],
) -> None:
    acceptor = Pair().acceptor
    acceptor.start(T0)
    events: list[LinkEvent] = []
    for chunk in chunks:
        events += acceptor.receive_data(chunk, T0)
    assert no_received(events)
    assert len([e for e in events if isinstance(e, Closed)]) <= 1


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=8))
def test_random_bytes_on_an_established_link_never_raise(chunks: list[bytes]) -> None:
    pair = Pair()
    pair.handshake()
    events: list[LinkEvent] = []
    for chunk in chunks:
        events += pair.acceptor.receive_data(chunk, pair.now)
    closed = [e for e in events if isinstance(e, Closed)]
    assert len(closed) <= 1
    if closed:
        assert events[-1] is closed[0]
