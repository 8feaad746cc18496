"""StreamFramer: cutting a TCP byte stream into SIP messages by Content-Length."""

from __future__ import annotations

import pytest

from twinline.sip.errors import SipParseError
from twinline.sip.message import Limits, Request, StreamFramer, parse_message


def message(n: int, body: bytes = b"", *, length: str | None = None, extra: str = "") -> bytes:
    clen = str(len(body)) if length is None else length
    return (
        f"OPTIONS sip:bob@example.com SIP/2.0\r\n"
        f"Via: SIP/2.0/TCP h.example.com;branch=z9hG4bK{n}\r\n"
        f"From: <sip:a@example.com>;tag={n}\r\n"
        f"To: <sip:bob@example.com>\r\n"
        f"Call-ID: call-{n}\r\n"
        f"CSeq: {n} OPTIONS\r\n"
        f"{extra}"
        f"Content-Length: {clen}\r\n"
        f"\r\n"
    ).encode() + body


def test_one_message_in_one_feed() -> None:
    framer = StreamFramer()
    assert framer.feed(message(1, b"hello")) == [message(1, b"hello")]
    assert framer.feed(b"") == []


def test_partial_feeds_byte_by_byte() -> None:
    data = message(1, b"body\r\n\r\nwith a blank line")
    framer = StreamFramer()
    frames: list[bytes] = []
    for i in range(len(data)):
        got = framer.feed(data[i : i + 1])
        if i < len(data) - 1:
            assert got == []
        frames += got
    assert frames == [data]


def test_several_messages_in_one_feed() -> None:
    stream = message(1) + message(2, b"abc") + message(3, b"\r\n\r\n")
    assert StreamFramer().feed(stream) == [message(1), message(2, b"abc"), message(3, b"\r\n\r\n")]


def test_a_message_split_across_feeds_at_every_point() -> None:
    data = message(1, b"abc") + message(2)
    for cut in range(1, len(data)):
        framer = StreamFramer()
        assert framer.feed(data[:cut]) + framer.feed(data[cut:]) == [message(1, b"abc"), message(2)]


def test_keep_alive_crlfs_are_skipped() -> None:
    framer = StreamFramer()
    assert framer.feed(b"\r\n\r\n") == []  # RFC 5626 ping
    assert framer.feed(b"\r\n" + message(1) + b"\r\n\r\n\r\n" + message(2) + b"\r\n") == [
        message(1),
        message(2),
    ]
    assert framer.feed(message(3)) == [message(3)]


def test_a_body_that_has_not_arrived_is_waited_for() -> None:
    framer = StreamFramer()
    data = message(1, b"0123456789")
    assert framer.feed(data[:-3]) == []
    assert framer.feed(data[-3:-1]) == []
    assert framer.feed(data[-1:]) == [data]


def test_frames_parse_as_stream_messages() -> None:
    frames = StreamFramer().feed(message(1, b"abc") + message(2))
    msgs = [parse_message(f, stream=True) for f in frames]
    assert [(m.call_id, m.body) for m in msgs] == [("call-1", b"abc"), ("call-2", b"")]
    assert isinstance(msgs[0], Request)


def test_compact_and_folded_content_length() -> None:
    data = message(1, b"abcd").replace(b"Content-Length: 4", b"l  :\r\n 4")
    assert StreamFramer().feed(data) == [data]
    assert parse_message(data, stream=True).body == b"abcd"


def test_equal_content_lengths_frame() -> None:
    data = message(1, b"ab", extra="l: 02\r\n")
    assert StreamFramer().feed(data) == [data]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (
            message(1).replace(b"Content-Length: 0\r\n", b""),
            "Missing Content-Length on a stream transport",
        ),
        (message(1, length="five"), "Invalid Content-Length"),
        (message(1, length="-1"), "Invalid Content-Length"),
        (message(1, length=""), "Invalid Content-Length"),
        (message(1, length="\u0661"), "Invalid Content-Length"),
        (message(1, b"ab", extra="Content-Length: 3\r\n"), "Conflicting Content-Length headers"),
    ],
)
def test_unframeable_streams_raise(data: bytes, reason: str) -> None:
    with pytest.raises(SipParseError) as info:
        StreamFramer().feed(data)
    assert (info.value.reason, info.value.status, info.value.request) == (reason, 400, None)


def test_an_error_after_good_frames_still_raises() -> None:
    # The good frame before is lost with the connection: there is no resynchronizing.
    with pytest.raises(SipParseError):
        StreamFramer().feed(message(1) + message(2, length="x"))


@pytest.mark.parametrize("length", ["70000", "9" * 5000, "99999999999999999999"])
def test_oversized_content_length_is_513(length: str) -> None:
    with pytest.raises(SipParseError) as info:
        StreamFramer().feed(message(1, length=length))
    assert (info.value.status, info.value.reason) == (513, "Message Too Large")


def test_message_size_limit_counts_head_and_body() -> None:
    data = message(1, b"x" * 100)
    assert StreamFramer(Limits(max_message_size=len(data))).feed(data) == [data]
    with pytest.raises(SipParseError) as info:
        StreamFramer(Limits(max_message_size=len(data) - 1)).feed(data)
    assert info.value.status == 513


def test_a_header_block_that_never_ends_is_513() -> None:
    framer = StreamFramer(Limits(max_message_size=1000))
    assert framer.feed(b"OPTIONS sip:a SIP/2.0\r\nX: " + b"y" * 900) == []
    with pytest.raises(SipParseError) as info:
        framer.feed(b"y" * 200)
    assert info.value.status == 513


def test_header_end_split_between_feeds_is_found() -> None:
    data = message(1, b"ab")
    end = data.index(b"\r\n\r\n")
    for cut in range(end, end + 4):  # inside the CRLFCRLF
        framer = StreamFramer()
        assert framer.feed(data[:cut]) == []
        assert framer.feed(data[cut:]) == [data]
