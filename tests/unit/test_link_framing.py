"""Link framing: length-prefixed MessagePack, typed decoding, and every message's round trip."""

from __future__ import annotations

import inspect

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from twinline.link import messages as m
from twinline.link.framing import (
    MAX_FRAME,
    FrameDecoder,
    FramingError,
    LinkError,
    MessageDecoder,
    encode,
    encode_into,
)

OFFERED = m.Offered(
    call="c-1",
    epoch=3,
    role="standby",
    primary="as1",
    standby="as2",
    service="prepaid",
    info=m.CallInfo(
        caller="1001",
        callee="08001234",
        caller_uri="sip:1001@pbx",
        callee_uri="sip:08001234@switch",
        headers={"P-Asserted-Identity": "<sip:1001@pbx>"},
        created=1700000000.5,
    ),
)

COMMAND = m.Command(call="c-1", epoch=3, seq=2, action=m.Route(destinations=["2001", "2002"]))

# One of each message, with every optional field away from its default where it can be.
SAMPLES: list[msgspec.Struct] = [
    m.Challenge(version=1, nonce=b"n" * 16),
    m.Hello(version=1, name="as1", incarnation=2**64 - 1, pid=4242, nonce=b"c" * 16, proof=b"p"),
    m.Welcome(
        proof=b"p" * 32,
        name="switch",
        live=[m.LiveInstance("c-1", 3, "primary"), m.LiveInstance("c-2", 1, "standby")],
    ),
    m.Heartbeat(sent_at=1700000000.25, active=12, standby=11, draining=True),
    m.Bye(reason="shutting down"),
    OFFERED,
    m.Event(
        call="c-1",
        seq=4,
        kind="released",
        at=1700000001.0,
        status=487,
        reason="Request Terminated",
        cause="cancelled",
    ),
    COMMAND,
    m.Command(call="c-1", epoch=3, seq=3, action=m.Reject(status=486, reason="Busy Here")),
    m.Command(call="c-1", epoch=3, seq=4, action=m.Release()),
    m.Checkpoint(
        call="c-1",
        epoch=3,
        version=5,
        event_seq=4,
        offered=OFFERED,
        service_state=b"\x81\xa1k\x01",
        timers=[m.TimerSpec("no-answer", 1700000030.0)],
        pending=[COMMAND],
        commands_sent=2,
        writes_done=["c-1:debit:1"],
        record=m.CallRecord(primaries=["as1", "as2"], answered_at=2.5, status=486, reason="x"),
    ),
    m.CheckpointAck(call="c-1", version=5),
    m.Forget(call="c-1"),
    m.Takeover(call="c-1", epoch=2, standby="as3", executed=4, event_seq=7),
    m.Takeover(call="c-1", epoch=3, standby=None, executed=0, event_seq=0),
    m.Adopt(call="c-1", epoch=4, standby="as2", executed=1, events=[], offered=OFFERED),
    m.Protect(call="c-1", epoch=2, standby="as2"),
    m.Drop(call="c-1"),
    m.Owned(call="c-1", epoch=2),
    m.Finished(call="c-1", epoch=2),
    m.Leaving(reason="SIGTERM"),
]

ALL = m.PeerMessage | m.CtlToServer | m.CtlToSwitch


def _tagged_messages() -> set[type]:
    return {
        cls
        for _, cls in inspect.getmembers(m, inspect.isclass)
        if issubclass(cls, m._Msg) and cls is not m._Msg
    }


def test_every_message_type_has_a_sample() -> None:
    # A new message in messages.py fails here until it gets a sample, so its round trip
    # is tested.
    assert _tagged_messages() <= {type(s) for s in SAMPLES}


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda s: type(s).__name__)
def test_round_trip_of_every_message(msg: msgspec.Struct) -> None:
    frame = encode(msg)
    (body,) = FrameDecoder().feed(frame)
    assert MessageDecoder(ALL, "any").decode(body) == msg


def test_frame_layout_is_a_big_endian_length_then_msgpack() -> None:
    msg = m.Bye(reason="x")
    body = msgspec.msgpack.encode(msg)
    assert encode(msg) == len(body).to_bytes(4, "big") + body
    assert body == b"\x82\xa4type\xa3bye\xa6reason\xa1x"


def test_encode_into_appends_frames_to_a_buffer() -> None:
    buffer = bytearray(b"prefix")
    n = encode_into(m.Bye(reason="a"), buffer)
    encode_into(m.Forget(call="c"), buffer)
    assert bytes(buffer) == b"prefix" + encode(m.Bye(reason="a")) + encode(m.Forget(call="c"))
    assert n == len(encode(m.Bye(reason="a"))) - 4


def test_a_message_over_the_limit_is_refused_and_nothing_is_queued() -> None:
    buffer = bytearray(b"kept")
    with pytest.raises(LinkError, match="message too large"):
        encode_into(m.Bye(reason="x" * 100), buffer, max_frame=50)
    assert buffer == b"kept"


def test_an_unencodable_message_leaves_the_buffer_as_it_was() -> None:
    buffer = bytearray(b"kept")
    with pytest.raises(TypeError):
        encode_into(m.Bye(reason=object()), buffer)  # type: ignore[arg-type]
    assert buffer == b"kept"


def test_frames_cut_anywhere_come_out_whole() -> None:
    stream = b"".join(encode(s) for s in SAMPLES)
    decoder = FrameDecoder()
    bodies: list[bytes] = []
    for i in range(len(stream)):
        bodies += decoder.feed(stream[i : i + 1])
    assert decoder.buffered == 0
    assert [MessageDecoder(ALL, "any").decode(b) for b in bodies] == SAMPLES


def test_many_frames_in_one_chunk_and_a_partial_tail() -> None:
    a, b = encode(m.Forget(call="a")), encode(m.Forget(call="b"))
    decoder = FrameDecoder()
    assert decoder.feed(a + b + b[:3]) == [a[4:], b[4:]]
    assert decoder.buffered == 3
    assert decoder.feed(b[3:]) == [b[4:]]
    assert decoder.feed(b"") == []


@given(st.lists(st.binary(min_size=1, max_size=300), max_size=20), st.data())
def test_any_chunking_gives_the_same_frames(bodies: list[bytes], data: st.DataObject) -> None:
    stream = b"".join(len(b).to_bytes(4, "big") + b for b in bodies)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    decoder = FrameDecoder()
    out: list[bytes] = []
    start = 0
    for cut in [*cuts, len(stream)]:
        out += decoder.feed(stream[start:cut])
        start = cut
    assert out == bodies


def test_zero_length_is_malformed() -> None:
    with pytest.raises(FramingError, match="malformed frame: zero length"):
        FrameDecoder().feed(b"\x00\x00\x00\x00")


def test_oversized_length_is_refused_from_the_header_alone() -> None:
    decoder = FrameDecoder()
    header = (MAX_FRAME + 1).to_bytes(4, "big")
    with pytest.raises(FramingError, match=r"length 1048577 over the limit of 1048576"):
        decoder.feed(header)  # no body needed: nothing is buffered for it


def test_a_frame_exactly_at_the_limit_passes() -> None:
    assert FrameDecoder(max_frame=5).feed(b"\x00\x00\x00\x05abcde") == [b"abcde"]


def test_the_error_is_sticky_and_carries_the_frames_before_it() -> None:
    good = encode(m.Forget(call="a"))
    decoder = FrameDecoder()
    with pytest.raises(FramingError) as info:
        decoder.feed(good + b"\xff\xff\xff\xff" + good)
    assert info.value.frames == [good[4:]]
    with pytest.raises(FramingError) as again:
        decoder.feed(good)
    assert again.value.frames == []
    assert again.value.reason == info.value.reason


def test_a_type_not_in_the_union_is_malformed_and_says_what_was_expected() -> None:
    decoder = MessageDecoder(m.Hello | m.Bye, "hello")
    with pytest.raises(LinkError) as info:
        decoder.decode(encode(COMMAND)[4:])
    assert info.value.reason == (
        "malformed frame: Invalid value 'command' - at `$.type` (expecting hello)"
    )


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b"\xc1", "malformed frame: MessagePack data is malformed"),
        (b"\x01", "malformed frame: Expected `object`, got `int`"),
        (msgspec.msgpack.encode({"type": "bye"}), "missing required field `reason`"),
        (msgspec.msgpack.encode({"type": "bye", "reason": 5}), "Expected `str`, got `int`"),
        (msgspec.msgpack.encode(m.Bye(reason="x")) + b"\x00", "trailing characters"),
        (b"\x82\xa4type\xa3bye\xa1z" + b"\x91" * 100_000 + b"\xc0", "nested too deeply"),
        (b"\xdd\xff\xff\xff\xff", "malformed frame"),
    ],
)
def test_garbage_is_malformed(body: bytes, says: str) -> None:
    with pytest.raises(LinkError, match=r"^malformed frame: ") as info:
        MessageDecoder(ALL, "any").decode(body)
    assert says in info.value.reason


def test_reasons_are_printable_and_bounded() -> None:
    err = LinkError("bad\r\nthing \x00" + "x" * 500)
    assert err.reason.startswith("bad??thing ?")
    assert err.reason.isprintable()
    assert len(err.reason) == 200
