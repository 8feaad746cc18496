"""Errors of the SIP layer, each knowing the status code that answers it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from twinline.errors import printable

if TYPE_CHECKING:
    from twinline.sip.message import Request

# A reason phrase goes on the wire as is (RFC 3261 21.4.1 lets it say what is wrong), so
# it is kept to printable ASCII and to a length that fits a status line comfortably.
MAX_REASON_LENGTH = 80


def safe_reason(text: str) -> str:
    return printable(text, MAX_REASON_LENGTH)


class SipParseError(Exception):
    """A message we cannot accept.

    `reason` is the reason phrase of the response that answers it (RFC 3261 21.4.1
    lets the phrase say what is wrong), `status` its code: 400 by default, 416 for an
    unsupported URI scheme, 505 for another SIP version, 513 for an oversized message.
    `reason` never holds CR, LF or other non-printable characters, whatever input it
    echoes. `request` is set when the request was read far enough to be answered.
    """

    def __init__(self, reason: str, status: int = 400) -> None:
        reason = safe_reason(reason)
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.request: Request | None = None
