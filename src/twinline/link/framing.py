"""Frames on the links: a 4-byte big-endian length, then one MessagePack message.

    +--------+--------+--------+--------+-------------------------------+
    |        length (uint32, big-endian) |  msgpack body (length bytes)  |
    +--------+--------+--------+--------+-------------------------------+

`FrameDecoder` cuts a byte stream into frame bodies, `encode`/`encode_into` build
frames, `MessageDecoder` turns a body into a typed message. Anything the peer gets
wrong raises `LinkError`, whose `reason` is the close reason that is logged and sent
in the `Bye` (invariant 7: a bad frame closes that link, never the process).

The limit, 1 MiB, is checked on the length prefix before any body is buffered, so a
peer can make us hold at most one limit's worth of bytes. It is far above the largest
message the links carry (a checkpoint of a service state, a few kilobytes) and small
enough that a burst of them cannot exhaust memory.
"""

from __future__ import annotations

import struct
from typing import Any

import msgspec

from twinline.errors import printable

MAX_FRAME = 1 << 20
HEADER = struct.Struct(">I")
HEADER_SIZE = HEADER.size

# A close reason goes into logs and into a Bye on the wire, and may echo what a peer
# sent (a tag name in a decode error, its own Bye reason): printable ASCII, bounded.
MAX_REASON_LENGTH = 200


def safe_reason(text: str) -> str:
    return printable(text, MAX_REASON_LENGTH)


class LinkError(Exception):
    """The link cannot go on; `reason` is the close reason (a short, safe phrase)."""

    def __init__(self, reason: str) -> None:
        reason = safe_reason(reason)
        super().__init__(reason)
        self.reason = reason


class FramingError(LinkError):
    """The stream cannot be cut into frames any more.

    `frames` holds the frames that were complete before the fault, in order.
    """

    def __init__(self, reason: str, frames: list[bytes] | None = None) -> None:
        super().__init__(reason)
        self.frames: list[bytes] = frames if frames is not None else []


class FrameDecoder:
    """Cuts a byte stream into frame bodies, whatever the chunks it arrives in.

    A zero or oversized length raises `FramingError`; the stream has lost its framing
    for good, and every later `feed` raises it again (with no frames).
    """

    __slots__ = ("_buf", "_error", "max_frame")

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self.max_frame = max_frame
        self._buf = bytearray()
        self._error: LinkError | None = None

    @property
    def buffered(self) -> int:
        """Bytes held for a frame not yet complete."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes]:
        if self._error is not None:
            raise self._error
        buf = self._buf
        src: bytes | bytearray
        if buf:
            buf += data
            src = buf
        else:
            src = data  # the common case: no partial frame pending, no copy of the input
        frames: list[bytes] = []
        pos = 0
        end = len(src)
        fault = ""
        with memoryview(src) as view:
            while end - pos >= HEADER_SIZE:
                (length,) = HEADER.unpack_from(src, pos)
                if length == 0:
                    fault = "malformed frame: zero length"
                    break
                if length > self.max_frame:
                    fault = f"malformed frame: length {length} over the limit of {self.max_frame}"
                    break
                if end - pos - HEADER_SIZE < length:
                    break
                start = pos + HEADER_SIZE
                pos = start + length
                frames.append(bytes(view[start:pos]))
        if fault:
            # The frames complete before the bad length are handed over with the error,
            # so what is delivered does not depend on how TCP cut the stream.
            self._error = FramingError(fault)
            buf.clear()
            raise FramingError(fault, frames)
        if src is buf:
            del buf[:pos]
        elif pos < end:
            buf += data[pos:]
        return frames


_encoder = msgspec.msgpack.Encoder()
_ZERO_HEADER = bytes(HEADER_SIZE)


def encode_into(msg: msgspec.Struct, buffer: bytearray, max_frame: int = MAX_FRAME) -> int:
    """Appends `msg` as one frame to `buffer`; returns the body's length.

    A message over `max_frame` raises `LinkError` and leaves `buffer` as it was: the
    peer would close the link on it, so it must not be sent (the caller decides what
    that means for the one call it concerns).
    """
    start = len(buffer)
    buffer += _ZERO_HEADER
    try:
        _encoder.encode_into(msg, buffer, start + HEADER_SIZE)
    except BaseException:
        del buffer[start:]
        raise
    length = len(buffer) - start - HEADER_SIZE
    if length > max_frame:
        del buffer[start:]
        raise LinkError(f"message too large: {length} bytes over the limit of {max_frame}")
    HEADER.pack_into(buffer, start, length)
    return length


def encode(msg: msgspec.Struct, max_frame: int = MAX_FRAME) -> bytes:
    """`msg` as one frame."""
    buffer = bytearray()
    encode_into(msg, buffer, max_frame)
    return bytes(buffer)


class MessageDecoder:
    """Decodes frame bodies into the messages of `types` (a tagged union) and no others.

    `expecting` names what the state allows, for the close reason.
    """

    __slots__ = ("_decoder", "expecting")

    def __init__(self, types: Any, expecting: str) -> None:
        self._decoder: msgspec.msgpack.Decoder[Any] = msgspec.msgpack.Decoder(types)
        self.expecting = expecting

    def decode(self, frame: bytes) -> msgspec.Struct:
        try:
            msg: msgspec.Struct = self._decoder.decode(frame)
        except msgspec.ValidationError as e:
            raise LinkError(f"malformed frame: {e} (expecting {self.expecting})") from None
        except msgspec.DecodeError as e:
            raise LinkError(f"malformed frame: {e}") from None
        except UnicodeDecodeError:
            # msgspec lets this one through for a str that is not UTF-8 (found by fuzzing).
            raise LinkError("malformed frame: a string that is not UTF-8") from None
        except RecursionError:
            # msgspec bounds its nesting depth and says so with this error.
            raise LinkError("malformed frame: nested too deeply") from None
        return msg
