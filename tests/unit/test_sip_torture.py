"""RFC 4475 (SIP Torture Test Messages) against the message layer, plus fuzzing.

Each message is rebuilt here from the RFC's text, line by line with CRLF line ends, so
the test shows the exact bytes. Bodies are the RFC's SDP (their lengths match the RFC's
Content-Length values); mpart01's binary attachment is not reproducible from the RFC's
text and is replaced by one of the same length with the same hazards (NULs, bare LF,
CRLFCRLF).

For every invalid message the decision is written next to it: what the parser does
(accept, or SipParseError with a status and a reason phrase) and whether the error is
answerable (`error.request` set: the B2BUA sends the response) or dropped (no request
to answer, or a response, which is never answered). Where RFC 4475 lets a robust element
accept a message it calls invalid, the comment says which way we went and why.

Application-level semantics (RFC 4475 3.3: 420, 415, 483, 501...) belong to the
registrar and the B2BUA, not the parser; for those the tests check that the message
parses and that the fields those layers decide on read right.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from twinline.sip.errors import SipParseError
from twinline.sip.message import (
    Request,
    Response,
    StreamFramer,
    parse_message,
    parse_name_addr,
    parse_uri,
    parse_via,
)


def wire(*lines: str | bytes, body: bytes = b"") -> bytes:
    """Header lines joined by CRLF, the empty line, then the body."""
    raw = [line if isinstance(line, bytes) else line.encode() for line in lines]
    return b"\r\n".join(raw) + b"\r\n\r\n" + body


def sdp(origin: str, conn: str, timing: str = "0 0") -> bytes:
    """The SDP body RFC 4475 uses throughout (150 to 159 octets)."""
    lines = [
        "v=0",
        f"o=mhandley 29739 7272939 IN IP4 {origin}",
        "s=-",
        f"c=IN IP4 {conn}",
        f"t={timing}",
        "m=audio 49217 RTP/AVP 0 12",
        "m=video 3227 RTP/AVP 31",
        "a=rtpmap:31 LPC",
    ]
    return ("\r\n".join(lines) + "\r\n").encode()


def request(data: bytes) -> Request:
    msg = parse_message(data)
    assert isinstance(msg, Request)
    return msg


def response(data: bytes) -> Response:
    msg = parse_message(data)
    assert isinstance(msg, Response)
    return msg


def rejected(data: bytes, *, stream: bool = False) -> SipParseError:
    with pytest.raises(SipParseError) as info:
        parse_message(data, stream=stream)
    return info.value


def assert_round_trip(msg: Request | Response) -> None:
    again = parse_message(msg.to_bytes())
    assert again.headers[:-1] == [h for h in msg.headers if h[0] != "Content-Length"]
    assert again.body == msg.body


# === 3.1.1 Valid messages: all must parse ================================================

# 3.1.1.1 wsinv: folding everywhere, LWS around colons and semicolons, odd case, compact
# and long forms mixed, escaped quotes in quoted strings, leading zeros, empty Subject.
WSINV = wire(
    "INVITE sip:vivekg@chair-dnrc.example.com;unknownparam SIP/2.0",
    "TO :",
    " sip:vivekg@chair-dnrc.example.com ;   tag    = 1918181833n",
    r'from   : "J Rosenberg \\\""       <sip:jdrosen@example.com>',
    "  ;",
    "  tag = 98asjd8",
    "MaX-fOrWaRdS: 0068",
    "Call-ID: wsinv.ndaksdj@192.0.2.1",
    "Content-Length   : 150",
    "cseq: 0009",
    "  INVITE",
    "Via  : SIP  /   2.0",
    " /UDP",
    "    192.0.2.2;branch=390skdjuw",
    "s :",
    "NewFangledHeader:   newfangled value",
    " continued newfangled value",
    "UnknownHeaderWithUnusualValue: ;;,,;;,;",
    "Content-Type: application/sdp",
    "Route:",
    " <sip:services.example.com;lr;unknownwith=value;unknown-no-value>",
    "v:  SIP  / 2.0  / TCP     spindle.example.com   ;",
    "  branch  =   z9hG4bK9ikj8  ,",
    " SIP  /    2.0   / UDP  192.168.255.111   ; branch=",
    " z9hG4bK30239",
    r'm:"Quoted string \"\"" <sip:jdrosen@example.com> ; newparam =',
    "      newvalue ;",
    "  secondparam ; q = 0.33",
    body=sdp("192.0.2.3", "192.0.2.4"),
)


def test_wsinv() -> None:
    req = request(WSINV)
    assert (req.method, req.uri) == ("INVITE", "sip:vivekg@chair-dnrc.example.com;unknownparam")
    assert req.call_id == "wsinv.ndaksdj@192.0.2.1"
    assert (req.cseq, req.cseq_method) == (9, "INVITE")
    assert (req.from_tag, req.to_tag, req.branch) == ("98asjd8", "1918181833n", "390skdjuw")
    assert req.headers == [
        ("To", "sip:vivekg@chair-dnrc.example.com ;   tag    = 1918181833n"),
        ("From", r'"J Rosenberg \\\""       <sip:jdrosen@example.com> ; tag = 98asjd8'),
        ("Max-Forwards", "0068"),
        ("Call-ID", "wsinv.ndaksdj@192.0.2.1"),
        ("Content-Length", "150"),
        ("CSeq", "0009 INVITE"),
        ("Via", "SIP  /   2.0 /UDP 192.0.2.2;branch=390skdjuw"),
        ("Subject", ""),
        ("NewFangledHeader", "newfangled value continued newfangled value"),
        # Unknown, so not a list: kept whole, commas and all (RFC 4475 3.1.1.1).
        ("UnknownHeaderWithUnusualValue", ";;,,;;,;"),
        ("Content-Type", "application/sdp"),
        ("Route", "<sip:services.example.com;lr;unknownwith=value;unknown-no-value>"),
        ("Via", "SIP  / 2.0  / TCP     spindle.example.com   ; branch  =   z9hG4bK9ikj8"),
        ("Via", "SIP  /    2.0   / UDP  192.168.255.111   ; branch= z9hG4bK30239"),
        (
            "Contact",
            r'"Quoted string \"\"" <sip:jdrosen@example.com> ; newparam = newvalue ;'
            " secondparam ; q = 0.33",
        ),
    ]
    assert req.body == sdp("192.0.2.3", "192.0.2.4")
    vias = [parse_via(v) for v in req.get_all("Via")]
    assert [(v.transport, v.host, v.branch) for v in vias] == [
        ("UDP", "192.0.2.2", "390skdjuw"),
        ("TCP", "spindle.example.com", "z9hG4bK9ikj8"),
        ("UDP", "192.168.255.111", "z9hG4bK30239"),
    ]
    sender = parse_name_addr(req.get("From") or "")
    assert (sender.display, sender.uri, sender.tag) == (
        r'"J Rosenberg \\\""',
        "sip:jdrosen@example.com",
        "98asjd8",
    )
    contact = parse_name_addr(req.get("m") or "")
    assert contact.params == {"newparam": "newvalue", "secondparam": None, "q": "0.33"}
    assert parse_uri(req.uri).params == {"unknownparam": None}
    assert_round_trip(req)


# 3.1.1.2 intmeth: every token character in the method, an unusual but legal
# Request-URI (';', '?', ',' in the userinfo), quoted-pairs of BEL, NUL and DEL in a
# display name, a UTF-8 parameter value, a Call-ID of `word` characters.
INTMETH_METHOD = "!interesting-Method0123456789_*+`.%indeed'~"
INTMETH_USER = "1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"
INTMETH_PASSWORD = "&it+has=1,weird!*pas$wo~d_too.(doesn't-it)"
INTMETH_URI = f"sip:{INTMETH_USER}:{INTMETH_PASSWORD}@example.com"
INTMETH = wire(
    f"{INTMETH_METHOD} {INTMETH_URI} SIP/2.0",
    "Via: SIP/2.0/TCP host1.example.com;branch=z9hG4bK-.!%66*_+`'~",
    b'To: "BEL:\\\x07 NUL:\\\x00 DEL:\\\x7f" <sip:' + INTMETH_USER.encode() + b"@example.com>",
    "From: token1~` token2'+_ token3*%!.- <sip:mundane@example.com>"
    ";fromParam''~+*_!.-%=\"\u0440\u0430\u0431\u043e\u0442\u0430\u044e\u0449\u0438\u0439\""
    ";tag=_token~1'+`*%!-.",
    r"""Call-ID: intmeth.word%ZK-!.*_+'@word`~)(><:\/"][?}{""",
    f"CSeq: 139122385 {INTMETH_METHOD}",
    "Max-Forwards: 255",
    b"extensionHeader-!.%*+_`'~:\xef\xbb\xbf\xe5\xa4\xa7\xe5\x81\x9c\xe9\x9b\xbb",
    "Content-Length: 0",
)


def test_intmeth() -> None:
    req = request(INTMETH)
    # An unknown method: the B2BUA answers 501 with Allow (RFC 4475 3.1.1.2), not us.
    assert req.method == INTMETH_METHOD
    assert req.call_id == r"""intmeth.word%ZK-!.*_+'@word`~)(><:\/"][?}{"""
    assert (req.cseq, req.cseq_method) == (139122385, INTMETH_METHOD)
    assert req.branch == "z9hG4bK-.!%66*_+`'~"
    assert req.from_tag == "_token~1'+`*%!-."
    uri = parse_uri(req.uri)
    assert (uri.user, uri.password, uri.host) == (INTMETH_USER, INTMETH_PASSWORD, "example.com")
    to = parse_name_addr(req.get("To") or "")
    assert to.display == '"BEL:\\\x07 NUL:\\\x00 DEL:\\\x7f"'
    assert parse_uri(to.uri).user == INTMETH_USER
    sender = parse_name_addr(req.get("From") or "")
    assert sender.display == "token1~` token2'+_ token3*%!.-"
    assert (
        sender.params["fromparam''~+*_!.-%"]
        == '"\u0440\u0430\u0431\u043e\u0442\u0430\u044e\u0449\u0438\u0439"'
    )
    assert req.get("extensionHeader-!.%*+_`'~") == "\ufeff\u5927\u505c\u96fb"
    # Byte for byte, but for the SP that to_bytes always writes after the colon.
    assert req.to_bytes() == INTMETH.replace(b"~:\xef", b"~: \xef")


# 3.1.1.3 esc01: %HH escapes in user parts and URI parameters; a folded Contact.
ESC01 = wire(
    "INVITE sip:sips%3Auser%40example.com@example.net SIP/2.0",
    "To: sip:%75se%72@example.com",
    "From: <sip:I%20have%20spaces@example.net>;tag=938",
    "Max-Forwards: 87",
    "i: esc01.239409asdfakjkn23onasd0-3234",
    "CSeq: 234234 INVITE",
    "Via: SIP/2.0/UDP host5.example.net;branch=z9hG4bKkdjuw",
    "C: application/sdp",
    "Contact:",
    "  <sip:cal%6Cer@host5.example.net;%6C%72;n%61me=v%61lue%25%34%31>",
    "Content-Length: 150",
    body=sdp("192.0.2.1", "192.0.2.1"),
)


def test_esc01() -> None:
    req = request(ESC01)
    # Escapes are kept as received: comparing URIs (RFC 3261 19.1.4) is not parsing.
    uri = parse_uri(req.uri)
    assert (uri.user, uri.host) == ("sips%3Auser%40example.com", "example.net")
    assert req.call_id == "esc01.239409asdfakjkn23onasd0-3234"
    assert (req.cseq, req.from_tag, req.to_tag) == (234234, "938", "")
    assert req.get("Content-Type") == "application/sdp"
    contact = parse_uri(parse_name_addr(req.get("Contact") or "").uri)
    assert (contact.user, contact.params) == (
        "cal%6Cer",
        {"%6c%72": None, "n%61me": "v%61lue%25%34%31"},
    )
    assert parse_uri(parse_name_addr(req.get("From") or "").uri).user == "I%20have%20spaces"
    assert len(req.body) == 150


# 3.1.1.4 escnull: %00 in user parts; two Contacts.
ESCNULL = wire(
    "REGISTER sip:example.com SIP/2.0",
    "To: sip:null-%00-null@example.com",
    "From: sip:null-%00-null@example.com;tag=839923423",
    "Max-Forwards: 70",
    "Call-ID: escnull.39203ndfvkjdasfkq3w4otrq0adsfdfnavd",
    "CSeq: 14398234 REGISTER",
    "Via: SIP/2.0/UDP host5.example.com;branch=z9hG4bKkdjuw",
    "Contact: <sip:%00@host5.example.com>",
    "Contact: <sip:%00%00@host5.example.com>",
    "L:0",
)


def test_escnull() -> None:
    req = request(ESCNULL)
    assert (req.method, req.cseq, req.from_tag) == ("REGISTER", 14398234, "839923423")
    assert req.get_all("Contact") == [
        "<sip:%00@host5.example.com>",
        "<sip:%00%00@host5.example.com>",
    ]
    assert parse_uri(parse_name_addr(req.get("To") or "").uri).user == "null-%00-null"
    assert req.get("Content-Length") == "0"


# 3.1.1.5 esc02: '%' where it is not an escape: in the method, a display name, a branch
# and a header name. "C%6Fntact" is an extension header, not a third Contact.
ESC02 = wire(
    "RE%47IST%45R sip:registrar.example.com SIP/2.0",
    'To: "%Z%45" <sip:resource@example.com>',
    'From: "%Z%45" <sip:resource@example.com>;tag=f232jadfj23',
    "Call-ID: esc02.asdfnqwo34rq23i34jrjasdcnl23nrlknsdf",
    "Via: SIP/2.0/TCP host.example.com;branch=z9hG4bK209%fzsnel234",
    "CSeq: 29344 RE%47IST%45R",
    "Max-Forwards: 70",
    "Contact: <sip:alias1@host1.example.com>",
    "C%6Fntact: <sip:alias2@host2.example.com>",
    "Contact: <sip:alias3@host3.example.com>",
    "l: 0",
)


def test_esc02() -> None:
    req = request(ESC02)
    assert (req.method, req.cseq_method) == ("RE%47IST%45R", "RE%47IST%45R")  # not REGISTER
    assert req.branch == "z9hG4bK209%fzsnel234"
    assert parse_name_addr(req.get("To") or "").display == '"%Z%45"'
    assert req.get_all("Contact") == [
        "<sip:alias1@host1.example.com>",
        "<sip:alias3@host3.example.com>",
    ]
    assert req.get("C%6Fntact") == "<sip:alias2@host2.example.com>"


# 3.1.1.6 lwsdisp: no LWS between the display name and '<' (a known grammar bug that
# elements should accept).
LWSDISP = wire(
    "OPTIONS sip:user@example.com SIP/2.0",
    "To: sip:user@example.com",
    "From: caller<sip:caller@example.com>;tag=323",
    "Max-Forwards: 70",
    "Call-ID: lwsdisp.1234abcd@funky.example.com",
    "CSeq: 60 OPTIONS",
    "Via: SIP/2.0/UDP funky.example.com;branch=z9hG4bKkdjuw",
    "l: 0",
)


def test_lwsdisp() -> None:
    req = request(LWSDISP)
    sender = parse_name_addr(req.get("From") or "")
    assert (sender.display, sender.uri, sender.tag) == ("caller", "sip:caller@example.com", "323")
    assert (req.from_tag, req.cseq_method) == ("323", "OPTIONS")


# 3.1.1.7 longreq: long values and 34 Via headers in every spelling of the name.
LONG_TO_URI = (
    "sip:user@example.com:6000"
    f";unknownparam1=very{'long' * 20}value"
    f";longparam{'name' * 25}=shortvalue"
    f";very{'long' * 25}ParameterNameWithNoValue"
)
LONG_DISPLAY = f'"I have a user name of {"extreme" * 10} proportion"'
LONG_CALLER = "amazinglylongcallername" * 5
LONG_TAG = "12" + "982" * 50 + "424"
LONG_BRANCH = f"very{'long' * 50}branchvalue"
LONG_VIA_PREFIXES = [
    "Via: ", "v: ", "V: ", "Via: ", "ViA: ", "VIa: ", "VIA: ", "via: ", "viA: ", "vIa: ",
    "vIA: ", "V :  ", "v :  ", "V  : ", "v  : ", "Via : ", "Via  : ",
] + ["Via: "] * 16  # fmt: skip
LONGREQ = wire(
    "INVITE sip:user@example.com SIP/2.0",
    f"To: {LONG_DISPLAY}<{LONG_TO_URI}>",
    f"F: sip:{LONG_CALLER}@example.net;tag={LONG_TAG}"
    f";unknownheaderparam{'name' * 20}=unknowheaderparam{'value' * 15}"
    f";unknownValueless{'paramname' * 10}",
    f"Call-ID: longreq.one{'really' * 20}longcallid",
    "CSeq: 3882340 INVITE",
    f"Unknown-{'Long' * 20}-Name: unknown-{'long' * 20}-value;"
    f" unknown-{'long' * 20}-parameter-name = unknown-{'long' * 20}-parameter-value",
    *(f"{prefix}SIP/2.0/TCP sip{33 - i}.example.com" for i, prefix in enumerate(LONG_VIA_PREFIXES)),
    f"Via: SIP/2.0/TCP host.example.com;received=192.0.2.5;branch={LONG_BRANCH}",
    "Max-Forwards: 70",
    f"Contact: <sip:{LONG_CALLER}@host5.example.net>",
    "Content-Type: application/sdp",
    "l: 150",
    body=sdp("192.0.2.1", "192.0.2.1"),
)


def test_longreq() -> None:
    req = request(LONGREQ)
    vias = [parse_via(v) for v in req.get_all("Via")]
    assert [v.host for v in vias] == [f"sip{n}.example.com" for n in range(33, 0, -1)] + [
        "host.example.com"
    ]
    assert req.branch == ""  # the top Via has none
    assert vias[-1].params == {"received": "192.0.2.5", "branch": LONG_BRANCH}
    assert req.from_tag == LONG_TAG
    assert req.call_id == f"longreq.one{'really' * 20}longcallid"
    to = parse_name_addr(req.get("To") or "")
    assert (to.display, to.uri) == (LONG_DISPLAY, LONG_TO_URI)
    uri = parse_uri(to.uri)
    assert (uri.port, uri.params[f"very{'long' * 25}parameternamewithnovalue"]) == (6000, None)
    assert req.get(f"unknown-{'long' * 20}-name") is not None  # names compare without case
    assert len(req.body) == 150


# 3.1.1.8 dblreq: a REGISTER with Content-Length 0 followed, in the same datagram, by
# what looks like an INVITE: noise to be ignored (RFC 3261 18.3).
DBLREQ_INVITE = wire(
    "INVITE sip:joe@example.com SIP/2.0",
    "t: sip:joe@example.com",
    "From: sip:caller@example.net;tag=141334",
    "Max-Forwards: 8",
    "Call-ID: dblreq.0ha0isnda977644900765@192.0.2.15",
    "CSeq: 8 INVITE",
    "Via: SIP/2.0/UDP 192.0.2.15;branch=z9hG4bKkdjuw380234",
    "Content-Type: application/sdp",
    "Content-Length: 150",
    body=sdp("192.0.2.15", "192.0.2.15"),
)
DBLREQ = wire(
    "REGISTER sip:example.com SIP/2.0",
    "To: sip:j.user@example.com",
    "From: sip:j.user@example.com;tag=43251j3j324",
    "Max-Forwards: 8",
    "I: dblreq.0ha0isndaksdj99sdfafnl3lk233412",
    "Contact: sip:j.user@host.example.com",
    "CSeq: 8 REGISTER",
    "Via: SIP/2.0/UDP 192.0.2.125;branch=z9hG4bKkdjuw23492",
    "Content-Length: 0",
    body=b"\r\n" + DBLREQ_INVITE,
)


def test_dblreq() -> None:
    req = request(DBLREQ)
    assert (req.method, req.call_id, req.body) == (
        "REGISTER",
        "dblreq.0ha0isndaksdj99sdfafnl3lk233412",
        b"",
    )
    assert b"INVITE" not in req.to_bytes()  # a proxy would not forward the noise


# 3.1.1.9 semiuri: ';' in the user part of the Request-URI; a folded Accept list.
SEMIURI = wire(
    "OPTIONS sip:user;par=u%40example.net@example.com SIP/2.0",
    "To: sip:j_user@example.com",
    "From: sip:caller@example.org;tag=33242",
    "Max-Forwards: 3",
    "Call-ID: semiuri.0ha0isndaksdj",
    "CSeq: 8 OPTIONS",
    "Accept: application/sdp, application/pkcs7-mime,",
    "        multipart/mixed, multipart/signed,",
    "        message/sip, message/sipfrag",
    "Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKkdjuw",
    "l: 0",
)


def test_semiuri() -> None:
    req = request(SEMIURI)
    uri = parse_uri(req.uri)
    assert (uri.user, uri.host, uri.params) == ("user;par=u%40example.net", "example.com", {})
    assert req.get_all("Accept") == [
        "application/sdp",
        "application/pkcs7-mime",
        "multipart/mixed",
        "multipart/signed",
        "message/sip",
        "message/sipfrag",
    ]


# 3.1.1.10 transports: UDP, SCTP, TLS, an unknown transport and TCP in the Via stack.
TRANSPORTS = wire(
    "OPTIONS sip:user@example.com SIP/2.0",
    "To: sip:user@example.com",
    "From: <sip:caller@example.com>;tag=323",
    "Max-Forwards: 70",
    "Call-ID:  transports.kijh4akdnaqjkwendsasfdj",
    "Accept: application/sdp",
    "CSeq: 60 OPTIONS",
    "Via: SIP/2.0/UDP t1.example.com;branch=z9hG4bKkdjuw",
    "Via: SIP/2.0/SCTP t2.example.com;branch=z9hG4bKklasjdhf",
    "Via: SIP/2.0/TLS t3.example.com;branch=z9hG4bK2980unddj",
    "Via: SIP/2.0/UNKNOWN t4.example.com;branch=z9hG4bKasd0f3en",
    "Via: SIP/2.0/TCP t5.example.com;branch=z9hG4bK0a9idfnee",
    "l: 0",
)


def test_transports() -> None:
    req = request(TRANSPORTS)
    assert req.call_id == "transports.kijh4akdnaqjkwendsasfdj"
    assert [(v.transport, v.host) for v in map(parse_via, req.get_all("Via"))] == [
        ("UDP", "t1.example.com"),
        ("SCTP", "t2.example.com"),
        ("TLS", "t3.example.com"),
        ("UNKNOWN", "t4.example.com"),
        ("TCP", "t5.example.com"),
    ]
    assert req.branch == "z9hG4bKkdjuw"


# 3.1.1.11 mpart01: a multipart body whose binary part holds NULs, bare LFs and
# CRLFCRLF. Framing must follow Content-Length, never the body's contents.
MPART_BOUNDARY = "7a9cbec02ceef655"
MPART_HEAD = (
    f"--{MPART_BOUNDARY}\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: binary\r\n"
    f"\r\nHello\r\n--{MPART_BOUNDARY}\r\nContent-Type: application/octet-stream\r\n"
    "Content-Transfer-Encoding: binary\r\n\r\n"
).encode()
MPART_TAIL = f"\r\n--{MPART_BOUNDARY}--\r\n".encode()
MPART_BINARY = b"0\x82\x01R\x06\t*\x86H\x86\xf7\r\x01\x07\x02\xa0\x00\n\r\n\r\n" + bytes(range(256))
MPART_BODY = (
    MPART_HEAD + MPART_BINARY.ljust(553 - len(MPART_HEAD) - len(MPART_TAIL), b"\x00") + MPART_TAIL
)
MPART01 = wire(
    "MESSAGE sip:kumiko@example.org SIP/2.0",
    "Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-d87543-4dade06d0bdb11ee-1--d87543-;rport",
    "Max-Forwards: 70",
    "Route: <sip:127.0.0.1:5080>",
    "Identity: r5mwreLuyDRYBi/0TiPwEsY3rEVsk/G2WxhgTV1PF7hHuLIK0YWVKZhKv9Mj8UeXqkMVbnVq37CD+813g"
    "vYjcBUaZngQmXc9WNZSDNGCzA+fWl9MEUHWIZo1CeJebdY/XlgKeTa0Olvq0rt70Q5jiSfbqMJmQFteeivUhkMWYUA=",
    "Contact: <sip:fluffy@127.0.0.1:5070>",
    "To: <sip:kumiko@example.org>",
    "From: <sip:fluffy@example.com>;tag=2fb0dcc9",
    "Call-ID: 3d9485ad0c49859b@Zmx1ZmZ5LW1hYy0xNi5sb2NhbA..",
    "CSeq: 1 MESSAGE",
    "Content-Transfer-Encoding: binary",
    f"Content-Type: multipart/mixed;boundary={MPART_BOUNDARY}",
    "Date: Sat, 15 Oct 2005 04:44:56 GMT",
    "User-Agent: SIPimp.org/0.2.5 (curses)",
    "Content-Length: 553",
    body=MPART_BODY,
)


def test_mpart01() -> None:
    assert len(MPART_BODY) == 553
    req = request(MPART01)
    assert req.body == MPART_BODY
    via = parse_via(req.get("Via") or "")
    assert (via.host, via.port, via.params["rport"]) == ("127.0.0.1", 5070, None)
    assert req.branch == "z9hG4bK-d87543-4dade06d0bdb11ee-1--d87543-"
    framer = StreamFramer()
    assert framer.feed(MPART01 + MPART01[:100]) == [MPART01]
    assert framer.feed(MPART01[100:]) == [MPART01]


# 3.1.1.12 unreason: a reason phrase in UTF-8 (Cyrillic).
UNREASON_PHRASE = (
    "= 2**3 * 5**2 \u043d\u043e \u0441\u0442\u043e \u0434\u0435\u0432\u044f\u043d\u043e"
    "\u0441\u0442\u043e \u0434\u0435\u0432\u044f\u0442\u044c - \u043f\u0440\u043e\u0441"
    "\u0442\u043e\u0435"
)
UNREASON = wire(
    f"SIP/2.0 200 {UNREASON_PHRASE}",
    "Via: SIP/2.0/UDP 192.0.2.198;branch=z9hG4bK1324923",
    "Call-ID: unreason.1234ksdfak3j2erwedfsASdf",
    "CSeq: 35 INVITE",
    "From: sip:user@example.com;tag=11141343",
    "To: sip:user@example.edu;tag=2229",
    "Content-Length: 154",
    "Content-Type: application/sdp",
    "Contact: <sip:user@host198.example.com>",
    body=sdp("192.0.2.198", "192.0.2.198"),
)


def test_unreason() -> None:
    resp = response(UNREASON)
    assert (resp.status, resp.reason) == (200, UNREASON_PHRASE)
    assert (resp.cseq, resp.cseq_method, resp.from_tag, resp.to_tag) == (
        35,
        "INVITE",
        "11141343",
        "2229",
    )
    assert resp.branch == "z9hG4bK1324923"
    assert len(resp.body) == 154
    assert resp.to_bytes().startswith(f"SIP/2.0 200 {UNREASON_PHRASE}\r\n".encode())


# 3.1.1.13 noreason: an empty reason phrase (the SP after the code is there).
NOREASON = wire(
    "SIP/2.0 100 ",
    "Via: SIP/2.0/UDP 192.0.2.105;branch=z9hG4bK2398ndaoe",
    "Call-ID: noreason.asndj203insdf99223ndf",
    "CSeq: 35 INVITE",
    "From: <sip:user@example.com>;tag=39ansfi3",
    "To: <sip:user@example.edu>;tag=902jndnke3",
    "Content-Length: 0",
    "Contact: <sip:user@host105.example.com>",
)


def test_noreason() -> None:
    resp = response(NOREASON)
    assert (resp.status, resp.reason, resp.to_tag) == (100, "", "902jndnke3")
    # Without the SP, RFC 4475 says a liberal receiver may still accept: we do.
    assert response(NOREASON.replace(b"100 \r\n", b"100\r\n", 1)).reason == ""


# === 3.1.2 Invalid messages ==============================================================

# 3.1.2.1 badinv01: ";;,;,," in Via and ";;;;" in Contact.
# Decision: 400, answerable. Empty parameters are refused wherever we parse parameters
# (the top Via always; the Contact when the registrar or the B2BUA reads it). The empty
# list elements ",," alone are dropped silently (harmless, and seen in the field).
BADINV01 = wire(
    "INVITE sip:user@example.com SIP/2.0",
    "To: sip:j.user@example.com",
    "From: sip:caller@example.net;tag=134161461246",
    "Max-Forwards: 7",
    "Call-ID: badinv01.0ha0isndaksdjasdf3234nas",
    "CSeq: 8 INVITE",
    "Via: SIP/2.0/UDP 192.0.2.15;;,;,,",
    'Contact: "Joe" <sip:joe@example.org>;;;;',
    "Content-Length: 152",
    "Content-Type: application/sdp",
    body=sdp("192.0.2.15", "192.0.2.15"),
)

# 3.1.2.2 clerr: Content-Length 9999, far more than the body.
# Decision: on UDP 400, answerable (RFC 3261 18.3). On TCP the framer waits for more
# bytes (test_clerr_on_a_stream_waits); the transport's idle timer ends it.
CLERR = wire(
    "INVITE sip:user@example.com SIP/2.0",
    "Max-Forwards: 80",
    "To: sip:j.user@example.com",
    "From: sip:caller@example.net;tag=93942939o2",
    "Contact: <sip:caller@hungry.example.net>",
    "Call-ID: clerr.0ha0isndaksdjweiafasdk3",
    "CSeq: 8 INVITE",
    "Via: SIP/2.0/UDP host5.example.com;branch=z9hG4bK-39234-23523",
    "Content-Type: application/sdp",
    "Content-Length: 9999",
    body=sdp("192.0.2.155", "192.0.2.155"),
)

# 3.1.2.3 ncl: negative Content-Length.
# Decision: 400, answerable on UDP; on TCP the framer raises and the connection closes.
NCL = wire(
    "INVITE sip:user@example.com SIP/2.0",
    "Max-Forwards: 254",
    "To: sip:j.user@example.com",
    "From: sip:caller@example.net;tag=32394234",
    "Call-ID: ncl.0ha0isndaksdj2193423r542w35",
    "CSeq: 0 INVITE",
    "Via: SIP/2.0/UDP 192.0.2.53;branch=z9hG4bKkdjuw",
    "Contact: <sip:caller@example53.example.net>",
    "Content-Type: application/sdp",
    "Content-Length: -999",
    body=sdp("192.0.2.53", "192.0.2.53"),
)

# 3.1.2.4 scalar02: CSeq >= 2**32, Max-Forwards 300, Expires and expires= enormous.
# Decision: 400 "Invalid CSeq number", answerable (the RFC's choice). Expires values are
# the registrar's to bound; the parser never turns them into ints.
SCALAR02 = wire(
    "REGISTER sip:example.com SIP/2.0",
    "Via: SIP/2.0/TCP host129.example.com;branch=z9hG4bK342sdfoi3",
    "To: <sip:user@example.com>",
    "From: <sip:user@example.com>;tag=239232jh3",
    "CSeq: 36893488147419103232 REGISTER",
    "Call-ID: scalar02.23o0pd9vanlq3wnrlnewofjas9ui32",
    "Max-Forwards: 300",
    f"Expires: 1{'0' * 100}",
    "Contact: <sip:user@host129.example.com>",
    "  ;expires=280297596632815",
    "Content-Length: 0",
)

# 3.1.2.5 scalarlg: a response with CSeq >= 2**32, a giant Retry-After, a 4-digit
# warn-code. Decision: error, dropped (a response is never answered).
SCALARLG = wire(
    "SIP/2.0 503 Service Unavailable",
    "Via: SIP/2.0/TCP host129.example.com;branch=z9hG4bKzzxdiwo34sw;received=192.0.2.129",
    "To: <sip:user@example.com>",
    "From: <sip:other@example.net>;tag=2easdjfejw",
    "CSeq: 9292394834772304023312 OPTIONS",
    "Call-ID: scalarlg.noase0of0234hn2qofoaf0232aewf2394r",
    "Retry-After: 949302838503028349304023988",
    'Warning: 1812 overture "In Progress"',
    "Content-Length: 0",
)

# 3.1.2.6 quotbal: unterminated quote in the To display name.
# Decision: 400, answerable; no guessing where the quote should have ended.
QUOTBAL = wire(
    "INVITE sip:user@example.com SIP/2.0",
    'To: "Mr. J. User <sip:j.user@example.com>',
    "From: sip:caller@example.net;tag=93334",
    "Max-Forwards: 10",
    "Call-ID: quotbal.aksdj",
    "Contact: <sip:caller@host59.example.net>",
    "CSeq: 8 INVITE",
    "Via: SIP/2.0/UDP 192.0.2.59:5050;branch=z9hG4bKkdjuw39234",
    "Content-Type: application/sdp",
    "Content-Length: 152",
    body=sdp("192.0.2.15", "192.0.2.15"),
)

# 3.1.2.7 ltgtruri: Request-URI in angle brackets.
# Decision: 400, answerable ("reasonable always to reject").
LTGTRURI = wire(
    "INVITE <sip:user@example.com> SIP/2.0",
    "To: sip:user@example.com",
    "From: sip:caller@example.net;tag=39291",
    "Max-Forwards: 23",
    "Call-ID: ltgtruri.1@192.0.2.5",
    "CSeq: 1 INVITE",
    "Via: SIP/2.0/UDP 192.0.2.5",
    "Contact: <sip:caller@host5.example.net>",
    "Content-Type: application/sdp",
    "Content-Length: 159",
    body=sdp("192.0.2.5", "192.0.2.5", "3149328700 0"),
)

# 3.1.2.8 lwsruri: LWS inside the Request-URI ("sip:user@example.com; lr").
# Decision: 400, answerable: the Request-Line then has four elements, and guessing
# which SP is part of the URI is exactly the ambiguity the RFC warns of.
LWSRURI = wire(
    "INVITE sip:user@example.com; lr SIP/2.0",
    "To: sip:user@example.com;tag=3xfe-9921883-z9f",
    "From: sip:caller@example.net;tag=231413434",
    "Max-Forwards: 5",
    "Call-ID: lwsruri.asdfasdoeoi2323-asdfwrn23-asd834rk423",
    "CSeq: 2130706432 INVITE",
    "Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKkdjuw2395",
    "Contact: <sip:caller@host1.example.net>",
    "Content-Type: application/sdp",
    "Content-Length: 159",
    body=sdp("192.0.2.1", "192.0.2.1", "3149328700 0"),
)

# 3.1.2.11 escruri: escaped headers in the Request-URI.
# Decision: 400, answerable (RFC 3261 19.1.1 allows headers in no Request-URI; the RFC
# finds rejecting acceptable, and it keeps them from ever reaching the B leg).
ESCRURI = wire(
    "INVITE sip:user@example.com?Route=%3Csip:example.com%3E SIP/2.0",
    "To: sip:user@example.com",
    "From: sip:caller@example.net;tag=341518",
    "Max-Forwards: 7",
    "Contact: <sip:caller@host39923.example.net>",
    "Call-ID: escruri.23940-asdfhj-aje3br-234q098w-fawerh2q-h4n5",
    "CSeq: 149209342 INVITE",
    "Via: SIP/2.0/UDP host-of-the-hour.example.com;branch=z9hG4bKkdjuw",
    "Content-Type: application/sdp",
    "Content-Length: 150",
    body=sdp("192.0.2.1", "192.0.2.1"),
)

# 3.1.2.15 baddn: unquoted display names with non-token characters ("Bell, Alexander").
# Decision: 400, answerable ("reasonable always to reject"; inferring quotes would
# forward a repaired header the sender never signed).
BADDN = wire(
    "OPTIONS sip:t.watson@example.org SIP/2.0",
    "Via:     SIP/2.0/UDP c.example.com:5060;branch=z9hG4bKkdjuw",
    "Max-Forwards:      70",
    "From:    Bell, Alexander <sip:a.g.bell@example.com>;tag=43",
    "To:      Watson, Thomas <sip:t.watson@example.org>",
    "Call-ID: baddn.31415@c.example.com",
    "Accept: application/sdp",
    "CSeq:    3923239 OPTIONS",
    "l: 0",
)

# 3.1.2.16 badvers: SIP/7.0. Decision: 505, answerable (the RFC's choice).
BADVERS = wire(
    "OPTIONS sip:t.watson@example.org SIP/7.0",
    "Via:     SIP/7.0/UDP c.example.com;branch=z9hG4bKkdjuw",
    "Max-Forwards:     70",
    "From:    A. Bell <sip:a.g.bell@example.com>;tag=qweoiqpe",
    "To:      T. Watson <sip:t.watson@example.org>",
    "Call-ID: badvers.31417@c.example.com",
    "CSeq:    1 OPTIONS",
    "l: 0",
)

# 3.1.2.17 mismatch01: OPTIONS with "CSeq: 8 INVITE". Decision: 400, answerable.
MISMATCH01 = wire(
    "OPTIONS sip:user@example.com SIP/2.0",
    "To: sip:j.user@example.com",
    "From: sip:caller@example.net;tag=34525",
    "Max-Forwards: 6",
    "Call-ID: mismatch01.dj0234sxdfl3",
    "CSeq: 8 INVITE",
    "Via: SIP/2.0/UDP host.example.com;branch=z9hG4bKkdjuw",
    "l: 0",
)

# 3.1.2.18 mismatch02: unknown method NEWMETHOD with "CSeq: 8 INVITE".
# Decision: 400, answerable. The RFC prefers 501 but allows 400; the parser cannot know
# which methods the element implements, and the mismatch is a syntax error either way.
MISMATCH02 = wire(
    "NEWMETHOD sip:user@example.com SIP/2.0",
    "To: sip:j.user@example.com",
    "From: sip:caller@example.net;tag=34525",
    "Max-Forwards: 6",
    "Call-ID: mismatch02.dj0234sxdfl3",
    "CSeq: 8 INVITE",
    "Contact: <sip:caller@host.example.net>",
    "Via: SIP/2.0/UDP host.example.net;branch=z9hG4bKkdjuw",
    "Content-Type: application/sdp",
    "l: 138",
    body=b"v=0\r\no=mhandley 29739 7272939 IN IP4 192.0.2.1\r\nc=IN IP4 192.0.2.1\r\n"
    b"m=audio 49217 RTP/AVP 0 12\r\nm=video 3227 RTP/AVP 31\r\na=rtpmap:31 LPC\r\n",
)

# 3.1.2.19 bigcode: status code 4294967301. Decision: error, dropped (as the RFC says).
BIGCODE = wire(
    "SIP/2.0 4294967301 better not break the receiver",
    "Via: SIP/2.0/UDP 192.0.2.105;branch=z9hG4bK2398ndaoe",
    "Call-ID: bigcode.asdof3uj203asdnf3429uasdhfas3ehjasdfas9i",
    "CSeq: 353494 INVITE",
    "From: <sip:user@example.com>;tag=39ansfi3",
    "To: <sip:user@example.edu>;tag=902jndnke3",
    "Content-Length: 0",
    "Contact: <sip:user@host105.example.com>",
)

# 3.3.1 insuf: no Call-ID, From or To. Decision: error, dropped. The RFC would like a
# 400, but RFC 3261 8.2.6.2 builds a response from exactly the headers that are missing;
# a response without them would be malformed in turn.
INSUF = wire(
    "INVITE sip:user@example.com SIP/2.0",
    "CSeq: 193942 INVITE",
    "Via: SIP/2.0/UDP 192.0.2.95;branch=z9hG4bKkdj.insuf",
    "Content-Type: application/sdp",
    "l: 152",
    body=sdp("192.0.2.95", "192.0.2.95"),
)

# 3.3.2 unkscm: an unknown scheme in the Request-URI. Decision: 416, answerable.
UNKSCM = wire(
    "OPTIONS nobodyKnowsThisScheme:totallyopaquecontent SIP/2.0",
    "To: sip:user@example.com",
    "From: sip:caller@example.net;tag=384",
    "Max-Forwards: 3",
    "Call-ID: unkscm.nasdfasser0q239nwsdfasdkl34",
    "CSeq: 3923423 OPTIONS",
    "Via: SIP/2.0/TCP host9.example.com;branch=z9hG4bKkdjuw39234",
    "Content-Length: 0",
)

# 3.3.3 novelsc: a registered but unsupported scheme (soap.beep). Decision: 416.
NOVELSC = wire(
    "OPTIONS soap.beep://192.0.2.103:3002 SIP/2.0",
    "To: sip:user@example.com",
    "From: sip:caller@example.net;tag=384",
    "Max-Forwards: 3",
    "Call-ID: novelsc.asdfasser0q239nwsdfasdkl34",
    "CSeq: 3923423 OPTIONS",
    "Via: SIP/2.0/TCP host9.example.com;branch=z9hG4bKkdjuw39234",
    "Content-Length: 0",
)

# 3.3.8 multi01: two CSeq, Call-ID, From and To values. Decision: 400, answerable.
MULTI01 = wire(
    "INVITE sip:user@company.com SIP/2.0",
    "Contact: <sip:caller@host25.example.net>",
    "Via: SIP/2.0/UDP 192.0.2.25;branch=z9hG4bKkdjuw",
    "Max-Forwards: 70",
    "CSeq: 5 INVITE",
    "Call-ID: multi01.98asdh@192.0.2.1",
    "CSeq: 59 INVITE",
    "Call-ID: multi01.98asdh@192.0.2.2",
    "From: sip:caller@example.com;tag=3413415",
    "To: sip:user@example.com",
    "To: sip:other@example.net",
    "From: sip:caller@example.net;tag=2923420123",
    "Content-Type: application/sdp",
    "l: 154",
    "Contact: <sip:caller@host36.example.net>",
    "Max-Forwards: 5",
    body=sdp("192.0.2.25", "192.0.2.25"),
)

# 3.3.9 mcl01: Content-Length 13 and 5. Decision: 400 on UDP, answerable; on TCP the
# framer raises (the frame cannot be cut) and the connection closes.
MCL01 = wire(
    "OPTIONS sip:user@example.com SIP/2.0",
    "Via: SIP/2.0/UDP host5.example.net;branch=z9hG4bK293423",
    "To: sip:user@example.com",
    "From: sip:other@example.net;tag=3923942",
    "Call-ID: mcl01.fhn2323orihawfdoa3o4r52o3irsdf",
    "CSeq: 15932 OPTIONS",
    "Content-Length: 13",
    "Max-Forwards: 60",
    "Content-Length: 5",
    "Content-Type: text/plain",
    body=b"There's no way to know how many octets are supposed to be here.\r\n",
)

REJECTED = [
    # (case, message, status, reason, answerable)
    ("badinv01", BADINV01, 400, "Empty parameter in Via header", True),
    ("clerr", CLERR, 400, "Content-Length larger than the message body", True),
    ("ncl", NCL, 400, "Invalid Content-Length", True),
    ("scalar02", SCALAR02, 400, "Invalid CSeq number", True),
    ("scalarlg", SCALARLG, 400, "Invalid CSeq number", False),
    ("quotbal", QUOTBAL, 400, "Unterminated quoted string in To header", True),
    ("ltgtruri", LTGTRURI, 400, "Malformed URI <sip:user@example.com>", True),
    ("lwsruri", LWSRURI, 400, "Malformed Request-Line", True),
    ("escruri", ESCRURI, 400, "Headers not allowed in Request-URI", True),
    ("baddn", BADDN, 400, "Malformed display name in From header", True),
    ("badvers", BADVERS, 505, "Version Not Supported", True),
    ("mismatch01", MISMATCH01, 400, "CSeq method does not match the request method", True),
    ("mismatch02", MISMATCH02, 400, "CSeq method does not match the request method", True),
    ("bigcode", BIGCODE, 400, "Malformed status code", False),
    ("insuf", INSUF, 400, "Missing From header", False),
    ("unkscm", UNKSCM, 416, "Unsupported URI scheme nobodyknowsthisscheme", True),
    ("novelsc", NOVELSC, 416, "Unsupported URI scheme soap.beep", True),
    ("multi01", MULTI01, 400, "More than one CSeq header", True),
    ("mcl01", MCL01, 400, "Conflicting Content-Length headers", True),
]


@pytest.mark.parametrize(
    ("data", "status", "reason", "answerable"),
    [case[1:] for case in REJECTED],
    ids=[case[0] for case in REJECTED],
)
def test_rejected(data: bytes, status: int, reason: str, answerable: bool) -> None:
    error = rejected(data)
    assert (error.status, error.reason) == (status, reason)
    assert (error.request is not None) == answerable
    if error.request is not None:
        # What the B2BUA copies into its answer was read from the request.
        assert error.request.call_id
        assert error.request.get("Via")


def test_badinv01_contact_is_refused_where_it_is_read() -> None:
    with pytest.raises(SipParseError, match="Empty parameter"):
        parse_name_addr('"Joe" <sip:joe@example.org>;;;;')


def test_clerr_on_a_stream_waits() -> None:
    framer = StreamFramer()
    assert framer.feed(CLERR) == []  # 9999 octets announced, fewer arrived: wait


@pytest.mark.parametrize("data", [NCL, MCL01], ids=["ncl", "mcl01"])
def test_bad_content_length_breaks_a_stream(data: bytes) -> None:
    with pytest.raises(SipParseError):
        StreamFramer().feed(data)


def test_scalar02_rejects_max_forwards_alone() -> None:
    # Max-Forwards 300 alone is refused too (the RFC lets it be ignored instead; a
    # B2BUA that forwarded it would have to invent a value, so 400 is plainer).
    error = rejected(SCALAR02.replace(b"36893488147419103232", b"1"))
    assert (error.reason, error.request is not None) == ("Invalid Max-Forwards", True)


def test_badvers_response_keeps_the_request_fields() -> None:
    error = rejected(BADVERS)
    assert error.request is not None
    assert (error.request.method, error.request.from_tag) == ("OPTIONS", "qweoiqpe")


# 3.1.2.9 lwsstart: several SP between the Request-Line's elements.
# Decision: accepted. RFC 4475 lets a liberal element ignore them, provided it never
# forwards them; to_bytes writes the line back with single SPs.
LWSSTART = wire(
    "INVITE  sip:user@example.com  SIP/2.0",
    "Max-Forwards: 8",
    "To: sip:user@example.com",
    "From: sip:caller@example.net;tag=8814",
    "Call-ID: lwsstart.dfknq234oi243099adsdfnawe3@example.com",
    "CSeq: 1893884 INVITE",
    "Via: SIP/2.0/UDP host1.example.com;branch=z9hG4bKkdjuw3923",
    "Contact: <sip:caller@host1.example.net>",
    "Content-Type: application/sdp",
    "Content-Length: 150",
    body=sdp("192.0.2.1", "192.0.2.1"),
)

# 3.1.2.10 trws: SP after the SIP-Version. Decision: accepted, as for lwsstart.
TRWS = wire(
    "OPTIONS sip:remote-target@example.com SIP/2.0  ",
    "Via: SIP/2.0/TCP host1.examle.com;branch=z9hG4bK299342093",
    "To: <sip:remote-target@example.com>",
    "From: <sip:local-resource@example.com>;tag=329429089",
    "Call-ID: trws.oicu34958239neffasdhr2345r",
    "Accept: application/sdp",
    "CSeq: 238923 OPTIONS",
    "Max-Forwards: 70",
    "Content-Length: 0",
)


@pytest.mark.parametrize(
    ("data", "line"),
    [
        (LWSSTART, b"INVITE sip:user@example.com SIP/2.0\r\n"),
        (TRWS, b"OPTIONS sip:remote-target@example.com SIP/2.0\r\n"),
    ],
    ids=["lwsstart", "trws"],
)
def test_extra_spaces_in_the_request_line_are_accepted(data: bytes, line: bytes) -> None:
    req = request(data)
    assert req.to_bytes().startswith(line)


# 3.1.2.12 baddate: "EST" instead of "GMT" in Date.
# Decision: accepted. The RFC advises against rejecting unless Date matters to the
# element; to a B2BUA it does not, so the header is never parsed.
BADDATE = wire(
    "INVITE sip:user@example.com SIP/2.0",
    "To: sip:user@example.com",
    "From: sip:caller@example.net;tag=2234923",
    "Max-Forwards: 70",
    "Call-ID: baddate.239423mnsadf3j23lj42--sedfnm234",
    "CSeq: 1392934 INVITE",
    "Via: SIP/2.0/UDP host.example.com;branch=z9hG4bKkdjuw",
    "Date: Fri, 01 Jan 2010 16:00:00 EST",
    "Contact: <sip:caller@host5.example.net>",
    "Content-Type: application/sdp",
    "Content-Length: 150",
    body=sdp("192.0.2.5", "192.0.2.5"),
)


def test_baddate_is_accepted() -> None:
    assert request(BADDATE).get("Date") == "Fri, 01 Jan 2010 16:00:00 EST"


# 3.1.2.13 regbadct: an addr-spec Contact with a '?' header part, no angle brackets.
# Decision: the message parses (Contact is not read on the hot path); parse_name_addr,
# which the registrar uses, refuses it, so the REGISTER is answered 400.
REGBADCT = wire(
    "REGISTER sip:example.com SIP/2.0",
    "To: sip:user@example.com",
    "From: sip:user@example.com;tag=998332",
    "Max-Forwards: 70",
    "Call-ID: regbadct.k345asrl3fdbv@10.0.0.1",
    "CSeq: 1 REGISTER",
    "Via: SIP/2.0/UDP 135.180.130.133:5060;branch=z9hG4bKkdjuw",
    "Contact: sip:user@example.com?Route=%3Csip:sip.example.com%3E",
    "l: 0",
)


def test_regbadct_contact_is_refused() -> None:
    req = request(REGBADCT)
    with pytest.raises(SipParseError, match="URI with headers not in angle brackets") as info:
        parse_name_addr(req.get("Contact") or "")
    assert info.value.status == 400


# 3.1.2.14 badaspec: spaces inside <...> in To. Decision: accepted; the RFC lets a
# liberal element ignore them, and parse_name_addr strips them from the URI.
BADASPEC = wire(
    "OPTIONS sip:user@example.org SIP/2.0",
    "Via: SIP/2.0/UDP host4.example.com:5060;branch=z9hG4bKkdju43234",
    "Max-Forwards: 70",
    'From: "Bell, Alexander" <sip:a.g.bell@example.com>;tag=433423',
    'To: "Watson, Thomas" < sip:t.watson@example.org >',
    "Call-ID: badaspec.sdf0234n2nds0a099u23h3hnnw009cdkne3",
    "Accept: application/sdp",
    "CSeq: 3923239 OPTIONS",
    "l: 0",
)


def test_badaspec_is_accepted() -> None:
    req = request(BADASPEC)
    to = parse_name_addr(req.get("To") or "")
    assert (to.display, to.uri) == ('"Watson, Thomas"', "sip:t.watson@example.org")
    # The quoted comma in From is not a list separator (From is not a list header).
    assert parse_name_addr(req.get("From") or "").display == '"Bell, Alexander"'


# === 3.2 Transaction layer ===============================================================

# 3.2.1 badbranch: the magic cookie with nothing after it. Decision: accepted by the
# parser (it is syntactically valid); the transaction layer decides what it is worth.
BADBRANCH = wire(
    "OPTIONS sip:user@example.com SIP/2.0",
    "To: sip:user@example.com",
    "From: sip:caller@example.org;tag=33242",
    "Max-Forwards: 3",
    "Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK",
    "Accept: application/sdp",
    "Call-ID: badbranch.sadonfo23i420jv0as0derf3j3n",
    "CSeq: 8 OPTIONS",
    "l: 0",
)


def test_badbranch_parses() -> None:
    assert request(BADBRANCH).branch == "z9hG4bK"


# === 3.3 Application layer: the parser accepts, the layers above decide ==================

# 3.3.4 unksm2: isbn:, http: and name: URIs in To, From and Contact of a REGISTER.
# Decision: the parser accepts (only the Request-URI's scheme is checked). RFC 4475
# wants a registrar to answer 400; parse_uri on the To URI raises 416, which the
# registrar must map to 400 for an AOR.
UNKSM2 = wire(
    "REGISTER sip:example.com SIP/2.0",
    "To: isbn:2983792873",
    "From: <http://www.example.com>;tag=3234233",
    "Call-ID: unksm2.daksdj@hyphenated-host.example.com",
    "CSeq: 234902 REGISTER",
    "Max-Forwards: 70",
    "Via: SIP/2.0/UDP 192.0.2.21:5060;branch=z9hG4bKkdjuw",
    "Contact: <name:John_Smith>",
    "l: 0",
)

# 3.3.5 bext01: unknown Require and Proxy-Require. The B2BUA answers 420.
BEXT01 = wire(
    "OPTIONS sip:user@example.com SIP/2.0",
    "To: sip:j_user@example.com",
    "From: sip:caller@example.net;tag=242etr",
    "Max-Forwards: 6",
    "Call-ID: bext01.0ha0isndaksdj",
    "Require: nothingSupportsThis, nothingSupportsThisEither",
    "Proxy-Require: noProxiesSupportThis, norDoAnyProxiesSupportThis",
    "CSeq: 8 OPTIONS",
    "Via: SIP/2.0/TLS fold-and-staple.example.com;branch=z9hG4bKkdjuw",
    "Content-Length: 0",
)

# 3.3.6 invut: a body of an unknown type. The B2BUA answers 415.
INVUT_BODY = b'<audio>\r\n <pcmu port="443"/>\r\n</audio>\r\n'
INVUT = wire(
    "INVITE sip:user@example.com SIP/2.0",
    "Contact: <sip:caller@host5.example.net>",
    "To: sip:j.user@example.com",
    "From: sip:caller@example.net;tag=8392034",
    "Max-Forwards: 70",
    "Call-ID: invut.0ha0isndaksdjadsfij34n23d",
    "CSeq: 235448 INVITE",
    "Via: SIP/2.0/UDP somehost.example.com;branch=z9hG4bKkdjuw",
    "Content-Type: application/unknownformat",
    "Content-Length: 40",
    body=INVUT_BODY,
)

# 3.3.7 regaut01: an unknown authorization scheme. The registrar challenges (401).
REGAUT01 = wire(
    "REGISTER sip:example.com SIP/2.0",
    "To: sip:j.user@example.com",
    "From: sip:j.user@example.com;tag=87321hj23128",
    "Max-Forwards: 8",
    "Call-ID: regaut01.0ha0isndaksdj",
    "CSeq: 9338 REGISTER",
    "Via: SIP/2.0/TCP 192.0.2.253;branch=z9hG4bKkdjuw",
    "Authorization: NoOneKnowsThisScheme opaque-data=here",
    "Content-Length:0",
)

# 3.3.10 bcast: a 200 whose second Via is the broadcast address. A B2BUA consumes its
# own Via and never forwards a response along the others.
BCAST = wire(
    "SIP/2.0 200 OK",
    "Via: SIP/2.0/UDP 192.0.2.198;branch=z9hG4bK1324923",
    "Via: SIP/2.0/UDP 255.255.255.255;branch=z9hG4bK1saber23",
    "Call-ID: bcast.0384840201234ksdfak3j2erwedfsASdf",
    "CSeq: 35 INVITE",
    "From: sip:user@example.com;tag=11141343",
    "To: sip:user@example.edu;tag=2229",
    "Content-Length: 154",
    "Content-Type: application/sdp",
    "Contact: <sip:user@host28.example.com>",
    body=sdp("192.0.2.198", "192.0.2.198"),
)

# 3.3.11 zeromf: Max-Forwards 0 on an OPTIONS: valid; the B2BUA answers 483 to what it
# would forward, and answers an OPTIONS addressed to itself.
ZEROMF = wire(
    "OPTIONS sip:user@example.com SIP/2.0",
    "To: sip:user@example.com",
    "From: sip:caller@example.net;tag=3ghsd41",
    "Call-ID: zeromf.jfasdlfnm2o2l43r5u0asdfas",
    "CSeq: 39234321 OPTIONS",
    "Via: SIP/2.0/UDP host1.example.com;branch=z9hG4bKkdjuw2349i",
    "Max-Forwards: 0",
    "Content-Length: 0",
)

# 3.3.12 cparam01 / 3.3.13 cparam02: who owns ";unknownparam" in a Contact: the header
# (addr-spec form) or the URI (name-addr form).
CPARAM01 = wire(
    "REGISTER sip:example.com SIP/2.0",
    "Via: SIP/2.0/UDP saturn.example.com:5060;branch=z9hG4bKkdjuw",
    "Max-Forwards: 70",
    "From: sip:watson@example.com;tag=DkfVgjkrtMwaerKKpe",
    "To: sip:watson@example.com",
    "Call-ID: cparam01.70710@saturn.example.com",
    "CSeq: 2 REGISTER",
    "Contact: sip:+19725552222@gw1.example.net;unknownparam",
    "l: 0",
)
CPARAM02 = wire(
    "REGISTER sip:example.com SIP/2.0",
    "Via: SIP/2.0/UDP saturn.example.com:5060;branch=z9hG4bKkdjuw",
    "Max-Forwards: 70",
    "From: sip:watson@example.com;tag=838293",
    "To: sip:watson@example.com",
    "Call-ID: cparam02.70710@saturn.example.com",
    "CSeq: 3 REGISTER",
    "Contact: <sip:+19725552222@gw1.example.net;unknownparam>",
    "l: 0",
)

# 3.3.14 regescrt: a Contact URI with an escaped Route header, properly bracketed: valid;
# the registrar stores the URI with its header part.
REGESCRT = wire(
    "REGISTER sip:example.com SIP/2.0",
    "To: sip:user@example.com",
    "From: sip:user@example.com;tag=8",
    "Max-Forwards: 70",
    "Call-ID: regescrt.k345asrl3fdbv@192.0.2.1",
    "CSeq: 14398234 REGISTER",
    "Via: SIP/2.0/UDP host5.example.com;branch=z9hG4bKkdjuw",
    "M: <sip:user@example.com?Route=%3Csip:sip.example.com%3E>",
    "L:0",
)

# 3.3.15 sdp01: Accept excludes the SDP the INVITE carries. The B2BUA decides (406).
SDP01 = wire(
    "INVITE sip:user@example.com SIP/2.0",
    "To: sip:j_user@example.com",
    "Contact: <sip:caller@host15.example.net>",
    "From: sip:caller@example.net;tag=234",
    "Max-Forwards: 5",
    "Call-ID: sdp01.ndaksdj9342dasdd",
    "Accept: text/nobodyKnowsThis",
    "CSeq: 8 INVITE",
    "Via: SIP/2.0/UDP 192.0.2.15;branch=z9hG4bKkdjuw",
    "Content-Length: 150",
    "Content-Type: application/sdp",
    body=sdp("192.0.2.5", "192.0.2.5"),
)

# 3.4.1 inv2543: an RFC 2543 INVITE: no branch, no From tag, no Max-Forwards, no
# Content-Length (allowed on UDP: the body runs to the end of the datagram).
INV2543_BODY = (
    b"v=0\r\no=mhandley 29739 7272939 IN IP4 192.0.2.5\r\ns=-\r\nc=IN IP4 192.0.2.5\r\n"
    b"t=0 0\r\nm=audio 49217 RTP/AVP 0\r\n"
)
INV2543 = wire(
    "INVITE sip:UserB@example.com SIP/2.0",
    "Via: SIP/2.0/UDP iftgw.example.com",
    "From: <sip:+13035551111@ift.client.example.net;user=phone>",
    "Record-Route: <sip:UserB@example.com;maddr=ss1.example.com>",
    "To: sip:+16505552222@ss1.example.net;user=phone",
    "Call-ID: inv2543.1717@ift.client.example.com",
    "CSeq: 56 INVITE",
    "Content-Type: application/sdp",
    body=INV2543_BODY,
)


def test_unksm2() -> None:
    req = request(UNKSM2)
    to = parse_name_addr(req.get("To") or "")
    assert to.uri == "isbn:2983792873"
    with pytest.raises(SipParseError) as info:
        parse_uri(to.uri)
    assert info.value.status == 416
    assert parse_name_addr(req.get("Contact") or "").uri == "name:John_Smith"


def test_bext01() -> None:
    req = request(BEXT01)
    assert req.get_all("Require") == ["nothingSupportsThis", "nothingSupportsThisEither"]
    assert req.get_all("Proxy-Require") == ["noProxiesSupportThis", "norDoAnyProxiesSupportThis"]
    assert parse_via(req.get("Via") or "").transport == "TLS"


def test_invut() -> None:
    req = request(INVUT)
    assert (req.get("Content-Type"), req.body) == ("application/unknownformat", INVUT_BODY)


def test_regaut01() -> None:
    req = request(REGAUT01)
    # Authorization is not a list header: its commas separate parameters.
    assert req.get("Authorization") == "NoOneKnowsThisScheme opaque-data=here"


def test_bcast() -> None:
    resp = response(BCAST)
    assert [parse_via(v).host for v in resp.get_all("Via")] == ["192.0.2.198", "255.255.255.255"]
    assert (resp.status, resp.branch, len(resp.body)) == (200, "z9hG4bK1324923", 154)


def test_zeromf() -> None:
    assert request(ZEROMF).get("Max-Forwards") == "0"


def test_cparam01_and_cparam02() -> None:
    header_param = parse_name_addr(request(CPARAM01).get("Contact") or "")
    assert (header_param.uri, header_param.params) == (
        "sip:+19725552222@gw1.example.net",
        {"unknownparam": None},
    )
    uri_param = parse_name_addr(request(CPARAM02).get("Contact") or "")
    assert (uri_param.uri, uri_param.params) == (
        "sip:+19725552222@gw1.example.net;unknownparam",
        {},
    )
    assert parse_uri(uri_param.uri).params == {"unknownparam": None}


def test_regescrt() -> None:
    contact = parse_name_addr(request(REGESCRT).get("Contact") or "")
    uri = parse_uri(contact.uri)
    assert (uri.user, uri.host, uri.headers) == (
        "user",
        "example.com",
        "Route=%3Csip:sip.example.com%3E",
    )


def test_sdp01() -> None:
    req = request(SDP01)
    assert (req.get("Accept"), len(req.body)) == ("text/nobodyKnowsThis", 150)


def test_inv2543() -> None:
    req = request(INV2543)
    assert (req.branch, req.from_tag, req.get("Max-Forwards")) == ("", "", None)
    assert req.body == INV2543_BODY
    # On a stream the missing Content-Length cannot be tolerated.
    assert rejected(INV2543, stream=True).reason == "Missing Content-Length on a stream transport"


# === Fuzzing =============================================================================

VALID = [
    WSINV, INTMETH, ESC01, ESCNULL, ESC02, LWSDISP, LONGREQ, DBLREQ, SEMIURI, TRANSPORTS,
    MPART01, UNREASON, NOREASON, LWSSTART, TRWS, BADDATE, BADASPEC, BADBRANCH, UNKSM2,
    BEXT01, INVUT, REGAUT01, BCAST, ZEROMF, CPARAM01, CPARAM02, REGESCRT, SDP01, INV2543,
]  # fmt: skip
CORPUS = VALID + [case[1] for case in REJECTED]
# Fragments that tend to reach the corners: separators, line ends, control bytes,
# numbers no int() should see, non-ASCII digits, invalid UTF-8.
SPICE = [
    b"\r\n", b"\n", b"\r", b"\r\n ", b"\x00", b"\\\x00", b":", b";", b";;", b",", b'"',
    b"<", b">", b"@", b"[", b"]", b"[::1]", b" ", b"\t", b"\\", b"%", b"?", b"=",
    b"\xff", b"\xc3\xa9", b"\xc2\xb2", "\u0663".encode(), b"9" * 5000, b"-1", b"0",
    b"SIP/2.0", b"l: 5\r\n", b"Content-Length: 99999999999999999999\r\n", b"v: ",
]  # fmt: skip

mutation = st.tuples(
    st.sampled_from(["insert", "delete", "replace", "duplicate", "truncate"]),
    st.floats(0, 1),
    st.integers(1, 40),
    st.one_of(st.sampled_from(SPICE), st.binary(min_size=1, max_size=6)),
)


def mutate(data: bytes, edits: list[tuple[str, float, int, bytes]]) -> bytes:
    for kind, where, size, payload in edits:
        at = int(where * len(data))
        if kind == "insert":
            data = data[:at] + payload + data[at:]
        elif kind == "delete":
            data = data[:at] + data[at + size :]
        elif kind == "replace":
            data = data[:at] + payload + data[at + len(payload) :]
        elif kind == "duplicate":
            data = data[:at] + data[at : at + size] + data[at:]
        else:
            data = data[:at]
    return data


def check_parse(data: bytes, *, stream: bool = False) -> Request | Response | None:
    """Parse; only SipParseError may come out, and its reason must be wire-safe."""
    try:
        return parse_message(data, stream=stream)
    except SipParseError as e:
        assert e.reason and e.reason.isascii() and e.reason.isprintable(), e.reason
        assert e.status in (400, 416, 505, 513)
        if e.request is not None:
            assert e.request.get("Via") and e.request.get("Call-ID")
        return None


def check_round_trip(msg: Request | Response) -> None:
    again = parse_message(msg.to_bytes())
    assert type(again) is type(msg)
    assert again.headers[:-1] == [h for h in msg.headers if h[0] != "Content-Length"]
    assert again.headers[-1] == ("Content-Length", str(len(msg.body)))
    assert again.body == msg.body
    assert (again.call_id, again.cseq, again.branch, again.from_tag, again.to_tag) == (
        msg.call_id, msg.cseq, msg.branch, msg.from_tag, msg.to_tag,
    )  # fmt: skip
    if isinstance(msg, Request):
        assert isinstance(again, Request)
        assert (again.method, again.uri) == (msg.method, msg.uri)
    else:
        assert isinstance(again, Response)
        assert (again.status, again.reason) == (msg.status, msg.reason)


def check_framer(data: bytes, chunk: int) -> None:
    framer = StreamFramer()
    try:
        for i in range(0, len(data), chunk):
            for frame in framer.feed(data[i : i + chunk]):
                check_parse(frame, stream=True)
    except SipParseError as e:
        assert e.reason.isascii() and e.reason.isprintable()


FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.binary(max_size=600))
def test_random_bytes_raise_only_sip_parse_error(data: bytes) -> None:
    check_parse(data)
    check_parse(data, stream=True)
    check_framer(data, 7)


@FUZZ
@given(st.sampled_from(CORPUS), st.lists(mutation, min_size=1, max_size=4), st.integers(1, 64))
def test_mutated_messages_raise_only_sip_parse_error(
    original: bytes, edits: list[tuple[str, float, int, bytes]], chunk: int
) -> None:
    data = mutate(original, edits)
    msg = check_parse(data)
    if msg is not None:
        check_round_trip(msg)
    check_framer(data + original, chunk)


@pytest.mark.parametrize("data", VALID)
def test_valid_messages_round_trip(data: bytes) -> None:
    msg = parse_message(data)
    check_round_trip(msg)
    # And to_bytes is a fixed point after one pass.
    assert parse_message(msg.to_bytes()).to_bytes() == msg.to_bytes()


@FUZZ
@given(
    st.lists(st.sampled_from(VALID), min_size=1, max_size=4),
    st.lists(st.integers(1, 300), min_size=1),
)
def test_framer_cuts_any_chunking_of_a_stream(messages: list[bytes], chunks: list[int]) -> None:
    # Normalized first: to_bytes always writes a Content-Length, so each can be framed.
    frames = [parse_message(m).to_bytes() for m in messages]
    stream = b"\r\n\r\n".join(frames)  # keep-alives between messages
    framer = StreamFramer()
    out: list[bytes] = []
    at = 0
    sizes = iter(chunks * (len(stream) // len(chunks) + 1))
    while at < len(stream):
        size = next(sizes)
        out += framer.feed(stream[at : at + size])
        at += size
    assert out == frames


@FUZZ
@given(st.text(max_size=80))
def test_field_parsers_raise_only_sip_parse_error(text: str) -> None:
    for parse in (parse_uri, parse_via, parse_name_addr):
        try:
            parse(text)
        except SipParseError as e:
            assert e.reason.isascii() and e.reason.isprintable()
