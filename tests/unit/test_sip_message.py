"""The SIP message layer driven with bytes: parsing, limits, serializing, field parsers."""

from __future__ import annotations

import pytest

from twinline.sip.errors import SipParseError, safe_reason
from twinline.sip.message import (
    Limits,
    Message,
    NameAddr,
    Request,
    Response,
    SipUri,
    Via,
    parse_message,
    parse_name_addr,
    parse_params,
    parse_uri,
    parse_via,
    response_to,
    split_quoted,
)


def wire(*lines: str | bytes, body: bytes = b"") -> bytes:
    raw = [line if isinstance(line, bytes) else line.encode() for line in lines]
    return b"\r\n".join(raw) + b"\r\n\r\n" + body


INVITE_LINES = [
    "INVITE sip:bob@biloxi.example.com SIP/2.0",
    "Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds",
    "Max-Forwards: 70",
    "To: Bob <sip:bob@biloxi.example.com>",
    "From: Alice <sip:alice@atlanta.example.com>;tag=1928301774",
    "Call-ID: a84b4c76e66710@pc33.atlanta.example.com",
    "CSeq: 314159 INVITE",
    "Contact: <sip:alice@pc33.atlanta.example.com>",
    "Content-Type: application/sdp",
]


def invite(*extra: str | bytes, body: bytes = b"v=0\r\n", length: str | None = None) -> bytes:
    clen = [f"Content-Length: {len(body) if length is None else length}"]
    return wire(*INVITE_LINES, *extra, *clen, body=body)


def request(data: bytes, **kwargs: object) -> Request:
    msg = parse_message(data, **kwargs)  # type: ignore[arg-type]
    assert isinstance(msg, Request)
    return msg


def rejected(data: bytes, *, limits: Limits | None = None, stream: bool = False) -> SipParseError:
    with pytest.raises(SipParseError) as info:
        if limits is None:
            parse_message(data, stream=stream)
        else:
            parse_message(data, limits, stream=stream)
    return info.value


# --- the basic request ------------------------------------------------------------------


def test_invite_fields_and_headers() -> None:
    req = request(invite())
    assert (req.method, req.uri) == ("INVITE", "sip:bob@biloxi.example.com")
    assert req.call_id == "a84b4c76e66710@pc33.atlanta.example.com"
    assert (req.cseq, req.cseq_method) == (314159, "INVITE")
    assert (req.branch, req.from_tag, req.to_tag) == ("z9hG4bK776asdhds", "1928301774", "")
    assert req.headers == [
        ("Via", "SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds"),
        ("Max-Forwards", "70"),
        ("To", "Bob <sip:bob@biloxi.example.com>"),
        ("From", "Alice <sip:alice@atlanta.example.com>;tag=1928301774"),
        ("Call-ID", "a84b4c76e66710@pc33.atlanta.example.com"),
        ("CSeq", "314159 INVITE"),
        ("Contact", "<sip:alice@pc33.atlanta.example.com>"),
        ("Content-Type", "application/sdp"),
        ("Content-Length", "5"),
    ]
    assert req.body == b"v=0\r\n"


def test_response_fields() -> None:
    data = wire(
        "SIP/2.0 180 Ringing",
        "Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds;received=192.0.2.1",
        "To: Bob <sip:bob@biloxi.example.com>;tag=a6c85cf",
        "From: Alice <sip:alice@atlanta.example.com>;tag=1928301774",
        "Call-ID: a84b4c76e66710@pc33.atlanta.example.com",
        "CSeq: 314159 INVITE",
        "Content-Length: 0",
    )
    resp = parse_message(data)
    assert isinstance(resp, Response)
    assert (resp.status, resp.reason) == (180, "Ringing")
    assert (resp.to_tag, resp.from_tag, resp.branch) == (
        "a6c85cf",
        "1928301774",
        "z9hG4bK776asdhds",
    )
    assert (resp.cseq, resp.cseq_method) == (314159, "INVITE")


# --- header names and values -------------------------------------------------------------


def test_compact_forms_and_case_are_canonicalized() -> None:
    data = wire(
        "OPTIONS sip:bob@example.com SIP/2.0",
        "v: SIP/2.0/UDP h.example.com;branch=z9hG4bK1",
        "F: <sip:a@example.com>;tag=1",
        "t: <sip:bob@example.com>",
        "I: c@h",
        "cSeQ: 1 OPTIONS",
        "m: <sip:a@h.example.com>",
        "k: timer",
        "s: hi",
        "c: text/plain",
        "e: gzip",
        "o: presence",
        "x: 1800",
        "max-FORWARDS: 70",
        "X-Custom-Thing: kept as sent",
        "L: 0",
    )
    assert [n for n, _ in request(data).headers] == [
        "Via", "From", "To", "Call-ID", "CSeq", "Contact", "Supported", "Subject",
        "Content-Type", "Content-Encoding", "Event", "Session-Expires", "Max-Forwards",
        "X-Custom-Thing", "Content-Length",
    ]  # fmt: skip


def test_header_lookup_ignores_case() -> None:
    req = request(invite("X-Custom: one", "x-custom: two"))
    assert req.get("call-id") == req.get("i") == req.call_id
    assert req.get("X-CUSTOM") == "one"
    assert req.get_all("x-Custom") == ["one", "two"]
    assert req.get("Nope") is None


def test_set_remove_add_prepend() -> None:
    msg = Message([("Via", "a"), ("X-Foo", "1"), ("Via", "b"), ("x-foo", "2")])
    msg.set("x-FOO", "3")
    assert msg.headers == [("Via", "a"), ("x-FOO", "3"), ("Via", "b")]
    msg.set("v", "c")
    assert msg.headers == [("Via", "c"), ("x-FOO", "3")]
    msg.add("l", "0")
    msg.prepend("route", "<sip:p>")
    assert msg.headers == [
        ("Route", "<sip:p>"),
        ("Via", "c"),
        ("x-FOO", "3"),
        ("Content-Length", "0"),
    ]
    msg.remove("X-Foo")
    msg.remove("CONTENT-length")
    assert msg.headers == [("Route", "<sip:p>"), ("Via", "c")]
    msg.set("Subject", "new")
    assert msg.headers[-1] == ("Subject", "new")


def test_folding_is_undone() -> None:
    req = request(
        invite(
            "Subject: a folded",
            "\t subject",
            "   ",  # an empty continuation adds nothing
            "  over three lines",
            "X-Empty:",
            " filled later",
        )
    )
    assert req.get("Subject") == "a folded subject over three lines"
    assert req.get("X-Empty") == "filled later"


def test_whitespace_around_colon_and_value() -> None:
    req = request(invite("X-Spaced \t:  \t value with  inner  spaces \t"))
    assert req.get("X-Spaced") == "value with  inner  spaces"


def test_list_headers_are_split_one_value_per_entry() -> None:
    req = request(
        invite(
            "Route: <sip:p1.example.com;lr>, <sip:p2.example.com;lr>",
            "Route: <sip:p3.example.com;lr>",
            "Supported: timer ,100rel,, replaces,",
            "Allow: INVITE, ACK, BYE",
        )
    )
    assert req.get_all("Route") == [
        "<sip:p1.example.com;lr>",
        "<sip:p2.example.com;lr>",
        "<sip:p3.example.com;lr>",
    ]
    assert req.get_all("Supported") == ["timer", "100rel", "replaces"]  # empties dropped
    assert req.get_all("Allow") == ["INVITE", "ACK", "BYE"]


def test_quoted_strings_and_brackets_keep_their_commas() -> None:
    contact = r'"Doe, \"Jr\", J" <sip:j@example.com;x=a,b>;q=0.5, <sip:k@example.com>'
    req = request(invite(f"Contact: {contact}"))
    assert req.get_all("Contact") == [
        "<sip:alice@pc33.atlanta.example.com>",
        r'"Doe, \"Jr\", J" <sip:j@example.com;x=a,b>;q=0.5',
        "<sip:k@example.com>",
    ]
    first = parse_name_addr(req.get_all("Contact")[1])
    assert (first.display, first.uri, first.params) == (
        r'"Doe, \"Jr\", J"',
        "sip:j@example.com;x=a,b",
        {"q": "0.5"},
    )


def test_headers_that_are_not_lists_keep_their_commas() -> None:
    auth = 'Digest username="bob", realm="example.com", nonce="a,b", uri="sip:x", response="1"'
    req = request(
        invite(f"Authorization: {auth}", "Subject: one, two", "Date: Sat, 13 Nov 2010 23:29:00 GMT")
    )
    assert req.get_all("Authorization") == [auth]
    assert req.get("Subject") == "one, two"
    assert req.get("Date") == "Sat, 13 Nov 2010 23:29:00 GMT"


def test_split_quoted() -> None:
    assert split_quoted("a,b", ",") == ["a", "b"]
    assert split_quoted('"a,b",c', ",") == ['"a,b"', "c"]
    assert split_quoted(r'"a\",b",c', ",") == [r'"a\",b"', "c"]
    assert split_quoted("<sip:a;b>;c", ";") == ["<sip:a;b>", "c"]
    assert split_quoted("no separator", ",") == ["no separator"]
    assert split_quoted('"open, never closed', ",") == ['"open, never closed']


def test_tags_inside_bracketed_uris_are_not_header_tags() -> None:
    req = request(
        invite()
        .replace(
            b"From: Alice <sip:alice@atlanta.example.com>;tag=1928301774",
            b"From: <sip:alice@atlanta.example.com;tag=uri>;tag=header",
        )
        .replace(
            b"To: Bob <sip:bob@biloxi.example.com>",
            b'To: "x;tag=quoted" <sip:b@h;tag=u> ; TAG = t9',
        )
    )
    assert (req.from_tag, req.to_tag) == ("header", "t9")


@pytest.mark.parametrize(
    ("from_value", "tag"),
    [
        ('"Alice" <sip:a@h;tag=no>;tag=yes', "yes"),
        (r'"A \";tag=no" <sip:a@h>;tag=yes', "yes"),
        ('"A" <sip:a@h>;x="<;tag=no>";tag=yes', "yes"),
        ('"A" <sip:a@h;tag=no>', ""),
        ("sip:a@h;tag=yes", "yes"),
        ("<sip:a@h>;TAG=yes", "yes"),
    ],
)
def test_from_tag_extraction(from_value: str, tag: str) -> None:
    data = invite().replace(
        b"Alice <sip:alice@atlanta.example.com>;tag=1928301774", from_value.encode()
    )
    assert request(data).from_tag == tag


# --- start lines -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "reason", "status", "answerable"),
    [
        (b"INVITE sip:bob@biloxi.example.com", "Malformed Request-Line", 400, True),
        (b"INVITE sip:bob@biloxi.example.com x SIP/2.0", "Malformed Request-Line", 400, True),
        (b"INV(TE sip:bob@biloxi.example.com SIP/2.0", "Malformed method", 400, False),
        (b"INVITE sip:bob@biloxi.example.com SIP/3.0", "Version Not Supported", 505, True),
        (b"INVITE sip:bob@biloxi.example.com HTTP/1.1", "Version Not Supported", 505, False),
        (b"INVITE\tsip:bob@biloxi.example.com\tSIP/2.0", "Malformed Request-Line", 400, False),
        (
            b"INVITE bob@biloxi.example.com SIP/2.0",
            "Malformed URI bob@biloxi.example.com",
            400,
            True,
        ),
        (b"INVITE sip:bob@bi\xc3\xa9.com SIP/2.0", "Invalid character in URI", 400, True),
        (b"INVITE sip:bob@biloxi.example.com SIP/2.0 ", None, 0, False),  # tolerated
        (b"INVITE  sip:bob@biloxi.example.com SIP/2.0", None, 0, False),  # tolerated
    ],
)
def test_request_line(line: bytes, reason: str | None, status: int, answerable: bool) -> None:
    data = invite().replace(b"INVITE sip:bob@biloxi.example.com SIP/2.0", line, 1)
    if reason is None:
        assert request(data).uri == "sip:bob@biloxi.example.com"
        return
    error = rejected(data)
    assert (error.reason, error.status, error.request is not None) == (reason, status, answerable)


@pytest.mark.parametrize(
    ("line", "status", "reason"),
    [
        (b"SIP/2.0 200 OK", 200, "OK"),
        (b"SIP/2.0 200", 200, ""),
        (b"SIP/2.0 486 Busy Here  ", 486, "Busy Here  "),
        (b"SIP/2.0 699 x", 699, "x"),
    ],
)
def test_status_line(line: bytes, status: int, reason: str) -> None:
    resp = parse_message(wire(line, *RESPONSE_HEADERS))
    assert isinstance(resp, Response)
    assert (resp.status, resp.reason) == (status, reason)


RESPONSE_HEADERS = [
    "Via: SIP/2.0/UDP h.example.com;branch=z9hG4bK1",
    "From: <sip:a@example.com>;tag=1",
    "To: <sip:b@example.com>;tag=2",
    "Call-ID: c@h",
    "CSeq: 1 INVITE",
]


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"SIP/2.0 099 Low", "Malformed status code"),
        (b"SIP/2.0 700 High", "Malformed status code"),
        (b"SIP/2.0 20 Short", "Malformed status code"),
        (b"SIP/2.0 2000 Long", "Malformed status code"),
        (b"SIP/2.0 \xc2\xb2\xc2\xb2\xc2\xb2 Superscripts", "Malformed status code"),
        ("SIP/2.0 \u0662\u0660\u0660 Arabic-Indic".encode(), "Malformed status code"),
        (b"SIP/1.0 200 OK", "Unsupported SIP version in response"),
    ],
)
def test_bad_status_lines_are_dropped(line: bytes, reason: str) -> None:
    error = rejected(wire(line, *RESPONSE_HEADERS))
    assert (error.reason, error.request) == (reason, None)


def test_crlf_before_the_start_line_is_ignored() -> None:
    assert request(b"\r\n\r\n" + invite()).method == "INVITE"


def test_lf_only_line_ends_are_tolerated() -> None:
    req = request(invite(body=b"v=0").replace(b"\r\n", b"\n"))
    assert (req.call_id, req.body) == ("a84b4c76e66710@pc33.atlanta.example.com", b"v=0")


def test_empty_message() -> None:
    for data in (b"", b"\r\n\r\n", b"\n"):
        error = rejected(data)
        assert (error.reason, error.request) == ("Empty message", None)


# --- required headers and scalar values --------------------------------------------------


@pytest.mark.parametrize(
    ("name", "reason", "answerable"),
    [
        ("Via", "Missing Via header", False),
        ("From", "Missing From header", False),
        ("To", "Missing To header", False),
        ("Call-ID", "Missing Call-ID header", False),
        ("CSeq", "Missing CSeq header", False),  # the answer could not be matched
    ],
)
def test_missing_required_header(name: str, reason: str, answerable: bool) -> None:
    data = b"\r\n".join(
        line for line in invite().split(b"\r\n") if not line.startswith(f"{name}:".encode())
    )
    error = rejected(data)
    assert (error.reason, error.status, error.request is not None) == (reason, 400, answerable)


@pytest.mark.parametrize(
    ("replace", "by", "reason"),
    [
        (b"CSeq: 314159 INVITE", b"CSeq: 2147483648 INVITE", "Invalid CSeq number"),
        (b"CSeq: 314159 INVITE", b"CSeq: -1 INVITE", "Invalid CSeq number"),
        (b"CSeq: 314159 INVITE", b"CSeq: 1" + b"0" * 5000 + b" INVITE", "Invalid CSeq number"),
        (b"CSeq: 314159 INVITE", b"CSeq: \xc2\xb2 INVITE", "Invalid CSeq number"),
        (b"CSeq: 314159 INVITE", b"CSeq: 1 INV@TE", "Invalid CSeq method"),
        (b"CSeq: 314159 INVITE", b"CSeq: 1", "Invalid CSeq method"),
        (b"CSeq: 314159 INVITE", b"CSeq: 1 ACK", "CSeq method does not match the request method"),
        (b"Max-Forwards: 70", b"Max-Forwards: 256", "Invalid Max-Forwards"),
        (b"Max-Forwards: 70", b"Max-Forwards: -1", "Invalid Max-Forwards"),
        (b"Max-Forwards: 70", b"Max-Forwards: " + b"9" * 5000, "Invalid Max-Forwards"),
        (b"Max-Forwards: 70", "Max-Forwards: \u0667".encode(), "Invalid Max-Forwards"),
        (b"Call-ID: a84b4c76e66710", b"Call-ID: has space", "Invalid Call-ID"),
        (b"Call-ID: a84b4c76e66710", "Call-ID: caf\u00e9".encode(), "Invalid Call-ID"),
        (b"Call-ID: a84b4c76e66710", b"Call-ID: \x01", "Invalid Call-ID"),
        (b"To: Bob", b"To: Bob\r\nTo: Eve", "More than one To header"),
        (b"From: Alice", b"From: Eve <sip:e@h>\r\nFrom: Alice", "More than one From header"),
        (b"Call-ID: a84", b"Call-ID: other\r\nCall-ID: a84", "More than one Call-ID header"),
        (b"CSeq: 314159 INVITE", b"CSeq: 1 INVITE\r\nCSeq: 2 INVITE", "More than one CSeq header"),
        (b".example.com>\r\nFrom", b".example.com\r\nFrom", "Missing '>' in address in To header"),
        (b"From: Alice <", b'From: "Alice" x <', "Malformed display name in From header"),
        (b"UDP pc33.atlanta.example.com;", b"UDP pc33:99999;", "Invalid port in Via header"),
        (b".com SIP/2.0", b".com?Subject=x SIP/2.0", "Headers not allowed in Request-URI"),
    ],
)  # fmt: skip
def test_bad_scalar_or_address_is_answered_with_400(replace: bytes, by: bytes, reason: str) -> None:
    data = invite()
    assert replace in data
    error = rejected(data.replace(replace, by, 1))
    assert (error.reason, error.status) == (reason, 400)
    assert error.request is not None


def test_identical_duplicates_of_call_id_and_cseq_are_tolerated() -> None:
    req = request(invite("Call-ID: a84b4c76e66710@pc33.atlanta.example.com", "CSeq: 314159 INVITE"))
    assert req.cseq == 314159


def test_scalars_with_leading_zeros() -> None:
    data = invite(length="0005").replace(b"CSeq: 314159", b"CSeq: 0000000000002147483647")
    req = request(data.replace(b"Max-Forwards: 70", b"Max-Forwards: 000255"))
    assert (req.cseq, req.body) == (2**31 - 1, b"v=0\r\n")


def test_error_answer_keeps_the_to_tag_of_an_in_dialog_request() -> None:
    data = invite().replace(
        b"To: Bob <sip:bob@biloxi.example.com>", b"To: <sip:bob@b.example.com>;tag=ours"
    )
    error = rejected(data.replace(b"CSeq: 314159 INVITE", b"CSeq: 1 INVITE\r\nCSeq: 2 INVITE"))
    assert error.request is not None
    assert error.request.to_tag == "ours"
    answer = response_to(error.request, 400, error.reason, to_tag="fresh").to_bytes()
    assert b"To: <sip:bob@b.example.com>;tag=ours\r\n" in answer  # no second tag


# --- control characters ------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra",
    [b"X-Evil: a\nInjected: b", b"X-Evil: a\rInjected: b", b"X-Evil: a\r", b"\n"],
)
def test_bare_cr_or_lf_in_the_head_is_refused(extra: bytes) -> None:
    error = rejected(invite(extra))
    assert (error.reason, error.status) == ("Bare CR or LF in header", 400)
    assert error.request is not None  # the other lines were fine: the 400 can be built


def test_bare_lf_in_the_start_line_is_dropped() -> None:
    error = rejected(invite().replace(b" SIP/2.0\r\n", b" SIP/2.0\nX: y\r\n", 1))
    assert (error.reason, error.request) == ("Bare CR or LF in header", None)


def test_nul_is_refused_outside_a_quoted_pair() -> None:
    error = rejected(invite(b"X-Nul: a\x00b"))
    assert (error.reason, error.request is not None) == ("NUL character in header", True)
    req = request(invite(b'X-Quoted: "a\\\x00b"'))  # RFC 3261 quoted-pair allows %x00
    assert req.get("X-Quoted") == '"a\\\x00b"'


def test_non_utf8_header_bytes_survive_a_round_trip() -> None:
    data = invite(b"X-Latin1: caf\xe9", b"Subject: \xff\xfe")
    req = request(data)
    assert req.to_bytes() == data


def test_bad_header_lines_are_answered_with_400() -> None:
    for line, reason in [
        (b"No colon here", "Malformed header line No colon here"),
        (b"Bad Name: x", "Malformed header line Bad Name: x"),
        (b": no name", "Malformed header line : no name"),
        (b"Via", "Malformed header line Via"),  # a known name still needs its colon
    ]:
        error = rejected(invite(line))
        assert (error.reason, error.request is not None) == (reason, True)
    error = rejected(wire(INVITE_LINES[0], " folded first", *INVITE_LINES[1:], "l: 0"))
    assert (error.reason, error.request is not None) == (
        "Continuation line before any header",
        True,
    )


# --- limits ------------------------------------------------------------------------------


def test_message_size_limit() -> None:
    data = invite(body=b"x" * 1000)
    error = rejected(data, limits=Limits(max_message_size=len(data) - 1))
    assert (error.status, error.reason, error.request) == (513, "Message Too Large", None)
    assert request(data, limits=Limits(max_message_size=len(data))).body == b"x" * 1000


def test_header_count_limit() -> None:
    limits = Limits(max_headers=11)  # 8 + Route + Route + Content-Length: at the limit
    assert request(invite("Route: <sip:a>, <sip:b>"), limits=limits)
    error = rejected(invite("Route: <sip:a>, <sip:b>, <sip:c>"), limits=limits)
    assert (error.status, error.reason) == (400, "Too many headers (limit 11)")
    assert error.request is not None


def test_line_length_limit() -> None:
    limits = Limits(max_line_length=70)  # the Via line is 66 characters
    error = rejected(invite("X-Long: " + "y" * 63), limits=limits)
    assert (error.status, error.reason, error.request is not None) == (
        400,
        "Header line too long",
        True,
    )
    long_uri = b"INVITE sip:" + b"b" * 40 + b"@biloxi.example.com SIP/2.0"
    error = rejected(invite().replace(INVITE_LINES[0].encode(), long_uri), limits=limits)
    assert (error.status, error.reason, error.request) == (400, "Start line too long", None)


# --- body and Content-Length on datagrams --------------------------------------------------


def test_body_longer_than_content_length_is_truncated() -> None:
    req = request(invite(body=b"v=0\r\ngarbage after", length="5"))
    assert req.body == b"v=0\r\n"


def test_body_shorter_than_content_length_is_refused() -> None:
    error = rejected(invite(body=b"v=0\r\n", length="6"))
    assert (error.reason, error.request is not None) == (
        "Content-Length larger than the message body",
        True,
    )


def test_missing_content_length_takes_the_rest_of_the_datagram() -> None:
    req = request(wire(*INVITE_LINES, body=b"v=0\r\n\r\n\r\n"))
    assert req.body == b"v=0\r\n\r\n\r\n"


def test_message_without_empty_line() -> None:
    req = request(b"\r\n".join(line.encode() for line in INVITE_LINES) + b"\r\n")
    assert req.body == b""


@pytest.mark.parametrize(
    ("lengths", "reason"),
    [
        (["five"], "Invalid Content-Length"),
        (["-5"], "Invalid Content-Length"),
        (["+5"], "Invalid Content-Length"),
        (["5 5"], "Invalid Content-Length"),
        (["\u0665"], "Invalid Content-Length"),
        (["9" * 5000], "Content-Length larger than the message body"),
        (["99999999999999999999999"], "Content-Length larger than the message body"),
        (["5", "4"], "Conflicting Content-Length headers"),
    ],
)
def test_bad_content_length(lengths: list[str], reason: str) -> None:
    lines = [f"Content-Length: {n}" for n in lengths]
    error = rejected(wire(*INVITE_LINES, *lines, body=b"v=0\r\n"))
    assert (error.reason, error.request is not None) == (reason, True)


def test_equal_content_lengths_are_not_a_conflict() -> None:
    assert (
        request(wire(*INVITE_LINES, "Content-Length: 5", "l: 005", body=b"v=0\r\n")).body
        == b"v=0\r\n"
    )


def test_stream_frames_need_content_length_and_are_not_truncated() -> None:
    error = rejected(wire(*INVITE_LINES, body=b""), stream=True)
    assert error.reason == "Missing Content-Length on a stream transport"
    assert request(invite(), stream=True).body == b"v=0\r\n"


# --- serializing -------------------------------------------------------------------------


def test_to_bytes_exact_output() -> None:
    data = wire(
        "MESSAGE sip:bob@example.com SIP/2.0",
        "v: SIP/2.0/TCP h.example.com;branch=z9hG4bKx, SIP/2.0/UDP g.example.com",
        "l: 999",
        "f: <sip:a@example.com>;tag=1",
        "t: <sip:bob@example.com>",
        "i: c1",
        "CSEQ: 2 MESSAGE",
        "Subject:",
        "  folded",
        "X-Mine:   kept  ",
        body=b"hello",
    )
    assert rejected(data).reason == "Content-Length larger than the message body"
    req = request(data.replace(b"l: 999", b"l: 3"))
    assert req.body == b"hel"
    req.body = b"hello, world"
    assert req.to_bytes() == (
        b"MESSAGE sip:bob@example.com SIP/2.0\r\n"
        b"Via: SIP/2.0/TCP h.example.com;branch=z9hG4bKx\r\n"
        b"Via: SIP/2.0/UDP g.example.com\r\n"
        b"From: <sip:a@example.com>;tag=1\r\n"
        b"To: <sip:bob@example.com>\r\n"
        b"Call-ID: c1\r\n"
        b"CSeq: 2 MESSAGE\r\n"
        b"Subject: folded\r\n"
        b"X-Mine: kept\r\n"
        b"Content-Length: 12\r\n"
        b"\r\n"
        b"hello, world"
    )


def test_to_bytes_of_a_built_response() -> None:
    resp = Response(200, "OK", [("Via", "SIP/2.0/UDP h;branch=z9hG4bK1"), ("Content-Length", "77")])
    assert (
        resp.to_bytes()
        == b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nContent-Length: 0\r\n\r\n"
    )


def test_response_to_exact_output() -> None:
    req = request(
        invite("Via: SIP/2.0/UDP proxy.example.com;branch=z9hG4bKp", "Record-Route: <sip:p;lr>")
    )
    resp = response_to(
        req, 180, "Ringing", to_tag="b0b", headers=[("Contact", "<sip:bob@192.0.2.4>")]
    )
    assert resp.to_bytes() == (
        b"SIP/2.0 180 Ringing\r\n"
        b"Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds\r\n"
        b"To: Bob <sip:bob@biloxi.example.com>;tag=b0b\r\n"
        b"From: Alice <sip:alice@atlanta.example.com>;tag=1928301774\r\n"
        b"Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n"
        b"CSeq: 314159 INVITE\r\n"
        b"Via: SIP/2.0/UDP proxy.example.com;branch=z9hG4bKp\r\n"
        b"Contact: <sip:bob@192.0.2.4>\r\n"
        b"Content-Length: 0\r\n"
        b"\r\n"
    )
    assert (resp.status, resp.to_tag, resp.from_tag, resp.branch) == (
        180,
        "b0b",
        "1928301774",
        "z9hG4bK776asdhds",
    )
    assert (resp.call_id, resp.cseq, resp.cseq_method) == (req.call_id, 314159, "INVITE")


def test_response_to_100_and_in_dialog_requests_add_no_tag() -> None:
    req = request(invite())
    trying = response_to(req, 100, "Trying", to_tag="b0b")
    assert (trying.get("To"), trying.to_tag) == ("Bob <sip:bob@biloxi.example.com>", "")
    tagged = request(
        invite().replace(b"<sip:bob@biloxi.example.com>", b"<sip:bob@biloxi.example.com>;tag=x")
    )
    ok = response_to(tagged, 200, "OK", to_tag="b0b", body=b"v=0\r\n")
    assert (ok.get("To"), ok.to_tag) == ("Bob <sip:bob@biloxi.example.com>;tag=x", "x")
    assert ok.to_bytes().endswith(b"Content-Length: 5\r\n\r\nv=0\r\n")


def test_parse_to_bytes_parse_keeps_everything() -> None:
    req = request(invite("Route: <sip:a;lr>, <sip:b;lr>", "Subject: x", " y"))
    again = request(req.to_bytes())
    assert again.headers == req.headers
    assert (again.body, again.uri, again.method) == (req.body, req.uri, req.method)


# --- SipParseError -----------------------------------------------------------------------


def test_reason_phrases_are_safe_on_the_wire() -> None:
    error = SipParseError("Bad\r\nInjected: yes\x00\x7f caf\u00e9")
    assert error.reason == "Bad??Injected: yes?? caf?"
    assert str(error) == error.reason
    assert len(safe_reason("x" * 500)) == 80
    assert safe_reason("Short and fine") == "Short and fine"


def test_reasons_echo_only_a_short_sanitized_excerpt() -> None:
    error = rejected(invite(b"\x01\x02 evil line " + b"z" * 200))
    assert error.reason == "Malformed header line ?? evil line " + "z" * 19 + "..."


# --- URIs --------------------------------------------------------------------------------


def test_parse_sip_uri() -> None:
    uri = parse_uri(
        "sips:alice:secret@atlanta.example.com:5061;transport=TCP;lr?subject=x&priority=1"
    )
    assert uri == SipUri(
        "sips",
        "alice",
        "atlanta.example.com",
        5061,
        {"transport": "TCP", "lr": None},
        "subject=x&priority=1",
        "secret",
    )
    assert uri.transport == "tcp"
    assert (
        str(uri)
        == "sips:alice:secret@atlanta.example.com:5061;transport=TCP;lr?subject=x&priority=1"
    )
    assert parse_uri("SIP:h.example.com").scheme == "sip"
    assert parse_uri("sip:h.example.com").transport == "udp"
    assert parse_uri("sips:h.example.com").transport == "tls"


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        ("sip:alice@[2001:db8::1]:5062;transport=tcp", "2001:db8::1", 5062),
        ("sip:[::1]", "::1", None),
        ("sip:[::ffff:192.0.2.1]:5060", "::ffff:192.0.2.1", 5060),
        ("sip:192.0.2.1:5060", "192.0.2.1", 5060),
    ],
)
def test_parse_uri_hosts(text: str, host: str, port: int | None) -> None:
    uri = parse_uri(text)
    assert (uri.host, uri.port) == (host, port)
    assert str(uri) == text


def test_parse_tel_uri() -> None:
    uri = parse_uri("tel:+1-201-555-0123;phone-context=example.com")
    assert (uri.scheme, uri.user, uri.params) == (
        "tel",
        "+1-201-555-0123",
        {"phone-context": "example.com"},
    )
    assert str(uri) == "tel:+1-201-555-0123;phone-context=example.com"


@pytest.mark.parametrize(
    ("text", "reason", "status"),
    [
        ("http://example.com", "Unsupported URI scheme http", 416),
        ("urn:service:sos", "Unsupported URI scheme urn", 416),
        ("sip", "Malformed URI sip", 400),
        ("<sip:a@b>", "Malformed URI <sip:a@b>", 400),
        ("sip:a@b c", "Whitespace inside URI", 400),
        ("sip:a@b\x00", "Invalid character in URI", 400),
        ("sip:\u00e9@example.com", "Invalid character in URI", 400),
        ("sip:@example.com", "Empty user part in URI", 400),
        ("sip:", "Malformed host in URI", 400),
        ("sip:a@exa mple", "Whitespace inside URI", 400),
        ("sip:a@ex*ample.com", "Malformed host in URI", 400),
        ("sip:a@[2001:db8::1", "Malformed IPv6 reference in URI", 400),
        ("sip:a@[zz::1]", "Malformed IPv6 reference in URI", 400),
        ("sip:a@[::1]x", "Malformed host in URI", 400),
        ("sip:a@h:0", "Invalid port in URI", 400),
        ("sip:a@h:65536", "Invalid port in URI", 400),
        ("sip:a@h:", "Invalid port in URI", 400),
        ("sip:a@h:\u0665\u0660\u0666\u0660", "Invalid character in URI", 400),
        ("sip:a@h;;lr", "Empty parameter in URI", 400),
        ("tel:", "Empty tel URI", 400),
    ],
)
def test_bad_uris(text: str, reason: str, status: int) -> None:
    with pytest.raises(SipParseError) as info:
        parse_uri(text)
    assert (info.value.reason, info.value.status) == (reason, status)


def test_uri_trailing_semicolon_is_tolerated() -> None:
    assert parse_uri("sip:a@h;lr;").params == {"lr": None}


# --- Via ---------------------------------------------------------------------------------


def test_parse_via() -> None:
    via = parse_via(
        "SIP/2.0/UDP pc33.atlanta.example.com:5066;branch=z9hG4bK776;received=192.0.2.1;rport=5066"
    )
    assert via == Via(
        "UDP",
        "pc33.atlanta.example.com",
        5066,
        {"branch": "z9hG4bK776", "received": "192.0.2.1", "rport": "5066"},
    )
    assert via.branch == "z9hG4bK776"
    assert str(via) == (
        "SIP/2.0/UDP pc33.atlanta.example.com:5066;branch=z9hG4bK776;received=192.0.2.1;rport=5066"
    )


@pytest.mark.parametrize(
    ("text", "transport", "host", "port"),
    [
        ("SIP / 2.0 / tcp \t h.example.com ; branch = z9hG4bK1", "TCP", "h.example.com", None),
        ("SIP/2.0/TLS [2001:db8::9]:5061;branch=z9hG4bK1", "TLS", "2001:db8::9", 5061),
        ("SIP/2.0/UDP [2001:db8::9];rport", "UDP", "2001:db8::9", None),
        ("SIP/2.0/UDP 192.0.2.1 : 5060", "UDP", "192.0.2.1", 5060),
        ("sip/2.0/ws df7jal23ls0d.invalid;branch=z9hG4bK1", "WS", "df7jal23ls0d.invalid", None),
    ],
)
def test_parse_via_forms(text: str, transport: str, host: str, port: int | None) -> None:
    via = parse_via(text)
    assert (via.transport, via.host, via.port) == (transport, host, port)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "Malformed Via header"),
        ("SIP/2.0/UDP", "Malformed Via header"),
        ("SIP/UDP h.example.com", "Malformed Via header"),
        ("HTTP/2.0/UDP h.example.com", "Malformed Via header"),
        ("SIP/2.0/U(P h.example.com", "Malformed Via header"),
        ("SIP/2.0/UDP h.exa mple.com", "Malformed Via host"),
        ("SIP/2.0/UDP h\u00e9.com", "Malformed Via host"),
        ("SIP/2.0/UDP [2001:db8::9", "Malformed Via host"),
        ("SIP/2.0/UDP [2001:db8::9]5060", "Malformed Via host"),
        ("SIP/2.0/UDP [not:v6]", "Malformed Via host"),
        ("SIP/2.0/UDP h:0", "Invalid port in Via header"),
        ("SIP/2.0/UDP h:" + "9" * 5000, "Invalid port in Via header"),
        ("SIP/2.0/UDP h;;branch=z9hG4bK1", "Empty parameter in Via header"),
        ("SIP/2.0/UDP h;=x", "Empty parameter in Via header"),
    ],
)
def test_bad_vias(text: str, reason: str) -> None:
    with pytest.raises(SipParseError) as info:
        parse_via(text)
    assert info.value.reason == reason


# --- name-addr ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<sip:a@h>", NameAddr("", "sip:a@h")),
        ("sip:a@h;tag=1", NameAddr("", "sip:a@h", {"tag": "1"})),
        ("Alice <sip:a@h;lr>;tag=1;X=Y", NameAddr("Alice", "sip:a@h;lr", {"tag": "1", "x": "Y"})),
        ('"Alice \\"A\\" <x>" <sip:a@h>', NameAddr('"Alice \\"A\\" <x>"', "sip:a@h")),
        ('"A;B,C"<sip:a@h> ; q = 0.7', NameAddr('"A;B,C"', "sip:a@h", {"q": "0.7"})),
        ("J\u00f6rg M\u00fcller <sip:j@h>", NameAddr("J\u00f6rg M\u00fcller", "sip:j@h")),
        ("  <sip:a@[::1]:5060>  ", NameAddr("", "sip:a@[::1]:5060")),
        ("*", NameAddr("", "*")),
        ("<sip:a@h>;", NameAddr("", "sip:a@h")),
    ],
)
def test_parse_name_addr(text: str, expected: NameAddr) -> None:
    assert parse_name_addr(text) == expected


def test_name_addr_str_and_tag() -> None:
    addr = parse_name_addr('"Bob" <sip:bob@h>;tag=9;x')
    assert (addr.tag, str(addr)) == ("9", '"Bob" <sip:bob@h>;tag=9;x')
    assert str(NameAddr("", "sip:a@h")) == "<sip:a@h>"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ('"unterminated <sip:a@h>', "Unterminated quoted string"),
        ("<sip:a@h", "Missing '>' in address"),
        ("<>", "Empty URI in address"),
        ("Bell, Alexander <sip:a@h>", "Malformed display name"),
        ('"A" B <sip:a@h>', "Malformed display name"),
        ('A "B" <sip:a@h>', "Malformed display name"),
        ("<sip:a@h> junk", "Junk after address"),
        ("<sip:a@h>;;tag=1", "Empty parameter"),
        ("", "Malformed address"),
        ("sip:a@h x", "Malformed address"),
        ("sip:a@h?Route=x", "URI with headers not in angle brackets"),
        ("sip:a@h,sip:b@h", "URI with headers not in angle brackets"),
    ],
)
def test_bad_name_addrs(text: str, reason: str) -> None:
    with pytest.raises(SipParseError) as info:
        parse_name_addr(text)
    assert info.value.reason == reason


def test_parse_params() -> None:
    assert parse_params(";a=1; B = 2 ;c") == {"a": "1", "b": "2", "c": None}
    assert parse_params('x="a;b"') == {"x": '"a;b"'}
    assert parse_params("") == parse_params(" ") == parse_params(";") == {}
    with pytest.raises(SipParseError, match="Empty parameter in here"):
        parse_params(";a;;b", " in here")
