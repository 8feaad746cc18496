"""Max-Forwards read as a number (RFC 3261 8.2.6 check, 20.22 grammar, 16.6 step 3).

``00`` is zero (it was forwarded as -1 once), an INVITE at zero gets 483 Too Many Hops
and starts no call, a value that is not 1*DIGIT or is above 255 gets 400 naming the
header, and the callee's INVITE carries the caller's value less one.
"""

from __future__ import annotations

import pytest
from sipfix import CALLEE, CALLER, SDP_OFFER, Switch, parse_request, request_bytes, summaries

from twinline.sip.errors import SipParseError
from twinline.sip.message import parse_message


def invite(max_forwards: str | None) -> bytes:
    data = request_bytes(
        "INVITE",
        "sip:9555@127.0.0.1:5060",
        branch="z9hG4bKmf1",
        call_id="mf-1@127.0.0.1",
        cseq=1,
        contact="<sip:alice@127.0.0.1:5061>",
        body=SDP_OFFER,
        content_type="application/sdp",
        max_forwards=None if max_forwards is None else 70,
    )
    if max_forwards is None:
        return data
    return data.replace(b"Max-Forwards: 70", f"Max-Forwards: {max_forwards}".encode())


@pytest.mark.parametrize(("text", "value"), [("0", 0), ("00", 0), ("007", 7), ("255", 255)])
def test_parser_reads_max_forwards_as_a_number(text: str, value: int) -> None:
    assert parse_request(invite(text)).max_forwards == value


def test_absent_max_forwards_reads_as_minus_one() -> None:
    assert parse_request(invite(None)).max_forwards == -1


@pytest.mark.parametrize("zero", ["0", "00", "000"])
def test_zero_max_forwards_gets_483_and_no_call(zero: str) -> None:
    sw = Switch()
    out = sw.receive(invite(zero), CALLER)
    assert summaries(out) == [(CALLER, "483 INVITE")]
    assert out[0].resp.reason == "Too Many Hops"
    assert out[0].resp.to_tag
    assert not sw.core.calls


@pytest.mark.parametrize("bad", ["abc", "256", "-1", "+5", "1 2", "0x10", "9" * 400, "\u0663"])
def test_bad_max_forwards_gets_400_naming_the_header(bad: str) -> None:
    with pytest.raises(SipParseError) as e:
        parse_message(invite(bad))
    assert e.value.reason == "Invalid Max-Forwards"
    sw = Switch()
    out = sw.receive(invite(bad), CALLER)
    assert summaries(out) == [(CALLER, "400 INVITE")]
    assert out[0].resp.reason == "Invalid Max-Forwards"
    assert not sw.core.calls


@pytest.mark.parametrize(
    ("given", "forwarded"), [("1", "0"), ("01", "0"), ("10", "9"), ("007", "6"), (None, "69")]
)
def test_callee_gets_the_callers_value_less_one(given: str | None, forwarded: str) -> None:
    sw = Switch()
    out = sw.receive(invite(given), CALLER)
    assert summaries(out) == [(CALLER, "100 INVITE"), (CALLEE, "INVITE")]
    assert out[1].req.get_all("Max-Forwards") == [forwarded]
