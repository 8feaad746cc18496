"""SIP messages (RFC 3261 section 7): parsing, the message model, serializing.

Sans-IO: `parse_message` takes the bytes of one datagram (or one frame cut by
`StreamFramer`) and returns a `Request` or a `Response`; `Message.to_bytes` goes back.

Header values are kept as text exactly as received (less the folding), and parsed
further only on demand (`parse_via`, `parse_name_addr`, `parse_uri`): a B2BUA passes
most headers through, so eager parsing would be wasted on the hot path. The few fields
every layer needs (Call-ID, CSeq, the top Via's branch, the From and To tags) are
pulled out once, at parse time, and kept as attributes.

Text is decoded as UTF-8 with ``surrogateescape`` so that any byte sequence survives a
parse/serialize round trip unchanged.

What is refused is what could be misread downstream or cannot be answered sensibly:
bare CR or LF and unquoted NUL in the head, non-ASCII or control characters in the
Request-URI, out-of-range numbers (never turned into huge ints), conflicting
Content-Length, duplicated single-value headers. What RFC 4475 lets a robust element
accept is accepted: LF-only line ends, extra SP in the Request-Line, LWS inside <...>,
a trailing ';', empty list elements. The tests in ``tests/unit/test_sip_torture.py``
record the decision for each RFC 4475 message.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

from twinline.sip.errors import SipParseError

# Compact forms (RFC 3261 7.3.3 and the extensions that registered one).
COMPACT_FORMS = {
    "a": "Accept-Contact",
    "b": "Referred-By",
    "c": "Content-Type",
    "d": "Request-Disposition",
    "e": "Content-Encoding",
    "f": "From",
    "i": "Call-ID",
    "j": "Reject-Contact",
    "k": "Supported",
    "l": "Content-Length",
    "m": "Contact",
    "n": "Identity-Info",
    "o": "Event",
    "r": "Refer-To",
    "s": "Subject",
    "t": "To",
    "u": "Allow-Events",
    "v": "Via",
    "x": "Session-Expires",
    "y": "Identity",
}

_CANONICAL_NAMES = [
    "Accept", "Accept-Contact", "Accept-Encoding", "Accept-Language", "Alert-Info", "Allow",
    "Allow-Events", "Authentication-Info", "Authorization", "Call-ID", "Call-Info", "Contact",
    "Content-Disposition", "Content-Encoding", "Content-Language", "Content-Length",
    "Content-Type", "CSeq", "Date", "Error-Info", "Event", "Expires", "From", "Identity",
    "Identity-Info", "In-Reply-To", "Max-Forwards", "Min-Expires", "MIME-Version",
    "Min-SE", "Organization", "P-Asserted-Identity", "Path", "Priority",
    "Proxy-Authenticate", "Proxy-Authorization", "Proxy-Require", "RAck", "Reason",
    "Record-Route", "Refer-To", "Referred-By", "Reject-Contact", "Reply-To",
    "Request-Disposition", "Require", "Retry-After", "Route", "RSeq", "Server",
    "Session-Expires", "Subject", "Supported", "Timestamp", "To", "Unsupported",
    "User-Agent", "Via", "Warning", "WWW-Authenticate",
]  # fmt: skip

# Lower-cased name (or compact form) -> the spelling used in code and on the wire.
CANONICAL: dict[str, str] = {n.lower(): n for n in _CANONICAL_NAMES}
CANONICAL.update(COMPACT_FORMS)

# Headers whose grammar is a comma-separated list (RFC 3261 7.3.1): stored one value
# per entry, so "Via: a, b" and two Via lines look the same to the rest of the code.
# Authorization-like headers are absent on purpose: their commas separate parameters.
LIST_HEADERS = frozenset(
    [
        "Accept", "Accept-Encoding", "Accept-Language", "Alert-Info", "Allow", "Allow-Events",
        "Call-Info", "Contact", "Content-Encoding", "Content-Language", "Error-Info",
        "In-Reply-To", "Path", "Proxy-Require", "Record-Route", "Require", "Route",
        "Supported", "Unsupported", "Via", "Warning",
    ]
)  # fmt: skip

_TOKEN_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~")

SIP_VERSION = "SIP/2.0"


def canonical_name(name: str) -> str:
    return CANONICAL.get(name.lower(), name)


def is_token(text: str) -> bool:
    if text.isascii() and text.replace("-", "").isalnum():  # fast path: most tokens
        return True
    return bool(text) and all(c in _TOKEN_CHARS for c in text)


# hostname / IPv4address (RFC 3261 25.1), ASCII only: str.isalnum() would let Unicode in.
_HOST_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._")
_IPV6_CHARS = frozenset("0123456789abcdefABCDEF:.")


def _is_host(host: str) -> bool:
    if host.isascii() and host.replace(".", "").replace("-", "").isalnum():  # fast path
        return True
    return bool(host) and all(c in _HOST_CHARS for c in host)


def _is_ipv6(host: str) -> bool:
    return ":" in host and all(c in _IPV6_CHARS for c in host)


def _decimal(text: str, limit: int) -> int:
    """The value of a string of ASCII digits, or -1 if it is not one.

    Values above `limit` come back as ``limit + 1`` without building the huge int a
    hostile peer asked for (int() refuses more than 4300 digits with a ValueError, and
    str.isdigit() alone accepts digits such as '²' that int() rejects).
    """
    if not text or not text.isascii() or not text.isdigit():
        return -1
    digits = text.lstrip("0")
    if len(digits) > len(str(limit)):
        return limit + 1
    return min(int(digits or "0"), limit + 1)


def _show(text: str, width: int = 32) -> str:
    """A short excerpt of input to name in a reason phrase (SipParseError sanitizes it)."""
    return text if len(text) <= width else text[:width] + "..."


@dataclass(frozen=True, slots=True)
class Limits:
    """What `parse_message` accepts; see `twinline.config.Limits` for the reasons."""

    max_message_size: int = 65535
    max_headers: int = 100
    max_line_length: int = 8192


DEFAULT_LIMITS = Limits()


class Message:
    """Headers and body, shared by requests and responses.

    `headers` is a list of ``(name, value)`` in wire order, names in canonical spelling
    for known headers (so lookups compare strings, no lower-casing per lookup).
    """

    __slots__ = (
        "body",
        "branch",
        "call_id",
        "cseq",
        "cseq_method",
        "from_tag",
        "headers",
        "to_tag",
    )

    def __init__(self, headers: list[tuple[str, str]], body: bytes = b"") -> None:
        self.headers = headers
        self.body = body
        # Filled by parse_message (and by the builders); see the module docstring.
        self.call_id = ""
        self.cseq = 0
        self.cseq_method = ""
        self.branch = ""
        self.from_tag = ""
        self.to_tag = ""

    def get(self, name: str) -> str | None:
        """The first value of a header, or None."""
        key = CANONICAL.get(name.lower(), name)
        for n, v in self.headers:
            if n == key:
                return v
        if key is name and name.lower() not in CANONICAL:
            low = name.lower()
            for n, v in self.headers:
                if n.lower() == low:
                    return v
        return None

    def get_all(self, name: str) -> list[str]:
        key = CANONICAL.get(name.lower(), name)
        low = key.lower()
        return [v for n, v in self.headers if n == key or n.lower() == low]

    def set(self, name: str, value: str) -> None:
        """Replace every value of a header by one, where the first one was (else at the end)."""
        key = canonical_name(name)
        low = key.lower()
        out: list[tuple[str, str]] = []
        placed = False
        for n, v in self.headers:
            if n == key or n.lower() == low:
                if not placed:
                    out.append((key, value))
                    placed = True
            else:
                out.append((n, v))
        if not placed:
            out.append((key, value))
        self.headers = out

    def add(self, name: str, value: str) -> None:
        self.headers.append((canonical_name(name), value))

    def prepend(self, name: str, value: str) -> None:
        self.headers.insert(0, (canonical_name(name), value))

    def remove(self, name: str) -> None:
        key = canonical_name(name)
        low = key.lower()
        self.headers = [(n, v) for n, v in self.headers if n != key and n.lower() != low]

    def _head_lines(self) -> list[str]:
        raise NotImplementedError

    def to_bytes(self) -> bytes:
        """Serialize; Content-Length is always written, from the body's real length."""
        lines = self._head_lines()
        for n, v in self.headers:
            if n != "Content-Length":
                lines.append(f"{n}: {v}")
        lines.append(f"Content-Length: {len(self.body)}")
        lines.append("")
        lines.append("")
        return "\r\n".join(lines).encode("utf-8", "surrogateescape") + self.body


class Request(Message):
    __slots__ = ("max_forwards", "method", "sent_by", "uri")

    def __init__(
        self, method: str, uri: str, headers: list[tuple[str, str]], body: bytes = b""
    ) -> None:
        super().__init__(headers, body)
        self.method = method
        self.uri = uri
        # Filled by parse_message: the top Via's sent-by as "host:port" (host lower-cased,
        # the transport's default port written out) for transaction matching (RFC 3261
        # 17.2.3), and Max-Forwards as a number (-1 when absent).
        self.sent_by = ""
        self.max_forwards = -1

    def _head_lines(self) -> list[str]:
        return [f"{self.method} {self.uri} {SIP_VERSION}"]

    def identity(self) -> Request:
        """The request line and the parsed identity fields (Call-ID, CSeq, branch, tags),
        without headers or body: what an INVITE transaction still needs once accepted."""
        req = Request(self.method, self.uri, [])
        req.call_id = self.call_id
        req.cseq = self.cseq
        req.cseq_method = self.cseq_method
        req.branch = self.branch
        req.from_tag = self.from_tag
        req.to_tag = self.to_tag
        req.sent_by = self.sent_by
        req.max_forwards = self.max_forwards
        return req

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.uri} call-id={self.call_id}>"


class Response(Message):
    __slots__ = ("reason", "status")

    def __init__(
        self, status: int, reason: str, headers: list[tuple[str, str]], body: bytes = b""
    ) -> None:
        super().__init__(headers, body)
        self.status = status
        self.reason = reason

    def _head_lines(self) -> list[str]:
        return [f"{SIP_VERSION} {self.status} {self.reason}"]

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.cseq_method} call-id={self.call_id}>"


# --- splitting helpers -------------------------------------------------------------


def split_quoted(value: str, sep: str) -> list[str]:
    """Split on `sep` outside double quotes (with backslash escapes) and angle brackets."""
    if sep not in value:
        return [value]
    if '"' not in value and "<" not in value:
        return value.split(sep)
    parts: list[str] = []
    start = 0
    quoted = False
    angle = False
    i = 0
    n = len(value)
    while i < n:
        c = value[i]
        if quoted:
            if c == "\\":
                i += 1
            elif c == '"':
                quoted = False
        elif c == '"':
            quoted = True
        elif c == "<":
            angle = True
        elif c == ">":
            angle = False
        elif c == sep and not angle:
            parts.append(value[start:i])
            start = i + 1
        i += 1
    parts.append(value[start:])
    return parts


def parse_params(text: str, where: str = "") -> dict[str, str | None]:
    """';name=value;flag' (leading ';' optional) -> {name (lower-cased): value or None}.

    An empty parameter (';;', or '=value' without a name) is an error: the grammar has
    none (RFC 3261 25.1 ``*( SEMI param )``, RFC 4475 3.1.2.1). One trailing ';' is
    tolerated, as some phones send it. Callers pass the text with its leading ';' so
    that "host;;" is told from "host;". `where` ends the reason phrase (" in Via header").
    """
    if not text.strip(" \t"):
        return {}
    params: dict[str, str | None] = {}
    parts = split_quoted(text, ";")
    if not parts[0].strip(" \t"):
        del parts[0]  # the leading ';'
    if parts and not parts[-1].strip(" \t"):
        del parts[-1]  # one trailing ';'
    for part in parts:
        name, eq, val = part.partition("=")
        name = name.strip(" \t")
        if not name:
            raise SipParseError(f"Empty parameter{where}")
        params[name.lower()] = val.strip(" \t") if eq else None
    return params


def format_params(params: dict[str, str | None]) -> str:
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params.items())


# --- URIs (RFC 3261 19.1) ----------------------------------------------------------------


@dataclass(slots=True)
class SipUri:
    scheme: str  # "sip", "sips" or "tel"
    user: str
    host: str
    port: int | None = None
    params: dict[str, str | None] = field(default_factory=dict)
    headers: str = ""  # the raw "?..." part, without the "?"
    password: str | None = None

    def __str__(self) -> str:
        if self.scheme == "tel":
            return f"tel:{self.user}{format_params(self.params)}"
        userinfo = ""
        if self.user:
            userinfo = self.user
            if self.password is not None:
                userinfo += ":" + self.password
            userinfo += "@"
        host = f"[{self.host}]" if ":" in self.host else self.host
        port = f":{self.port}" if self.port is not None else ""
        hdrs = f"?{self.headers}" if self.headers else ""
        return f"{self.scheme}:{userinfo}{host}{port}{format_params(self.params)}{hdrs}"

    @property
    def transport(self) -> str:
        t = self.params.get("transport")
        return t.lower() if t else ("tls" if self.scheme == "sips" else "udp")


_URI_SCHEMES = ("sip", "sips", "tel")


def parse_uri(text: str) -> SipUri:
    """Parse a sip:, sips: or tel: URI. Raises SipParseError (416 for other schemes)."""
    scheme, colon, rest = text.partition(":")
    scheme = scheme.lower()
    if not colon or not scheme or not is_token(scheme):
        raise SipParseError(f"Malformed URI {_show(text)}")
    if scheme not in _URI_SCHEMES:
        raise SipParseError(f"Unsupported URI scheme {_show(scheme)}", status=416)
    if " " in rest or "\t" in rest:
        raise SipParseError("Whitespace inside URI")
    # Everything else outside printable ASCII must be %-escaped (RFC 3261 19.1.2).
    if not (rest.isascii() and rest.isprintable()):
        raise SipParseError("Invalid character in URI")
    if scheme == "tel":
        number, semi, ptext = rest.partition(";")
        if not number:
            raise SipParseError("Empty tel URI")
        return SipUri("tel", number, "", None, parse_params(semi + ptext, " in URI"))
    user = ""
    password: str | None = None
    # userinfo ends at the first '@': user and password may hold ';', '?', '/' and ','
    # (user-unreserved, RFC 4475 3.1.1.2) but never an unescaped '@'.
    at = rest.find("@")
    if at >= 0:
        userinfo, rest = rest[:at], rest[at + 1 :]
        user, pcolon, pw = userinfo.partition(":")
        password = pw if pcolon else None
        if not user:
            raise SipParseError("Empty user part in URI")
    rest, _, hdrs = rest.partition("?")
    hostport, semi, ptext = rest.partition(";")
    port: int | None = None
    if hostport.startswith("["):
        end = hostport.find("]")
        if end < 0:
            raise SipParseError("Malformed IPv6 reference in URI")
        host = hostport[1:end]
        if not _is_ipv6(host):
            raise SipParseError("Malformed IPv6 reference in URI")
        tail = hostport[end + 1 :]
        if tail:
            if not tail.startswith(":"):
                raise SipParseError("Malformed host in URI")
            port = _parse_port(tail[1:])
    else:
        host, pcolon, ptext_port = hostport.partition(":")
        if pcolon:
            port = _parse_port(ptext_port)
        if not _is_host(host):
            raise SipParseError("Malformed host in URI")
    return SipUri(scheme, user, host, port, parse_params(semi + ptext, " in URI"), hdrs, password)


def _parse_port(text: str) -> int:
    port = _decimal(text, 65535)
    if port <= 0 or port > 65535:
        raise SipParseError("Invalid port in URI")
    return port


# --- name-addr (From, To, Contact, Route, Record-Route) ---------------------------------


@dataclass(slots=True)
class NameAddr:
    display: str  # as written, quotes included; "" when absent
    uri: str
    params: dict[str, str | None] = field(default_factory=dict)

    def __str__(self) -> str:
        display = f"{self.display} " if self.display else ""
        return f"{display}<{self.uri}>{format_params(self.params)}"

    @property
    def tag(self) -> str:
        return self.params.get("tag") or ""


def parse_name_addr(value: str) -> NameAddr:
    """Parse `name-addr` or `addr-spec` with header parameters (RFC 3261 20.10, 20.20)."""
    value = value.strip(" \t")
    # Find the '<' that is not inside a quoted display name.
    i = 0
    n = len(value)
    lt = -1
    quote_end = -1  # where the first quoted string closes
    while i < n:
        c = value[i]
        if c == '"':
            i += 1
            while i < n and value[i] != '"':
                if value[i] == "\\":
                    i += 1
                i += 1
            if i >= n:
                raise SipParseError("Unterminated quoted string")
            if quote_end < 0:
                quote_end = i
        elif c == "<":
            lt = i
            break
        i += 1
    if lt >= 0:
        gt = value.find(">", lt)
        if gt < 0:
            raise SipParseError("Missing '>' in address")
        display = value[:lt].rstrip(" \t")
        if display and not _is_display_name(display, quote_end):
            raise SipParseError("Malformed display name")
        ptext = value[gt + 1 :]
        if ptext.strip(" \t") and ptext.lstrip(" \t")[0] != ";":
            raise SipParseError("Junk after address")
        # LWS inside the brackets is tolerated (RFC 4475 3.1.2.14 allows that liberty).
        uri = value[lt + 1 : gt].strip(" \t")
        if not uri:
            raise SipParseError("Empty URI in address")
        return NameAddr(display, uri, parse_params(ptext))
    # addr-spec: parameters after the URI belong to the header (RFC 3261 20.10), and a
    # URI with ',', '?' or ';' of its own must be in name-addr form (RFC 4475 3.1.2.13).
    uri, semi, ptext = value.partition(";")
    uri = uri.rstrip(" \t")
    if not uri or " " in uri or "\t" in uri or '"' in uri:
        raise SipParseError("Malformed address")
    if "?" in uri or "," in uri:
        raise SipParseError("URI with headers not in angle brackets")
    return NameAddr("", uri, parse_params(semi + ptext))


def readable_party(value: str | None, fallback: str, tag: str) -> str:
    """A response's To (or From) as the next request of its dialog may carry it.

    A response's addresses are not parsed as addresses on the way in (a B2BUA needs only
    their tags, and a full parse on every response costs), so one that does not read as
    an address gives way to `fallback` (the address as we sent it) with the response's
    `tag`, rather than going out again in a request no parser would take.
    """
    if value:
        try:
            parse_name_addr(value)
        except SipParseError:
            pass
        else:
            return value
    return f"{fallback};tag={tag}" if tag and is_token(tag) else fallback


def _is_display_name(display: str, quote_end: int) -> bool:
    """``display-name = *(token LWS) / quoted-string`` (RFC 3261 25.1).

    `quote_end` is where the first quoted string closed (display has no leading LWS).
    Unquoted non-ASCII (UTF-8) is tolerated, as phones send it, but not the ASCII
    separators that change how the header reads (',', ';', '@', ...; RFC 4475 3.1.2.15).
    """
    if display[0] == '"':
        return quote_end == len(display) - 1
    return all(c in _TOKEN_CHARS or c in " \t" or c > "\x7f" for c in display)


# --- Via (RFC 3261 20.42) -----------------------------------------------------------------


@dataclass(slots=True)
class Via:
    transport: str  # upper case: "UDP", "TCP"
    host: str
    port: int | None
    params: dict[str, str | None] = field(default_factory=dict)

    @property
    def branch(self) -> str:
        return self.params.get("branch") or ""

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        port = f":{self.port}" if self.port is not None else ""
        return f"SIP/2.0/{self.transport} {host}{port}{format_params(self.params)}"


def parse_via(value: str) -> Via:
    """Parse one via-parm (RFC 3261 20.42); list splitting happened at parse time."""
    proto, semi, rest = value.partition(";")
    proto = proto.strip(" \t")
    # sent-protocol allows LWS around the slashes: "SIP / 2.0 / UDP host"
    slash2 = proto.rfind("/")
    if slash2 < 0:
        raise SipParseError("Malformed Via header")
    tail = proto[slash2 + 1 :].lstrip(" \t")
    head = proto[:slash2]
    parts = [p.strip(" \t") for p in head.split("/")]
    transport, _, sent_by = tail.replace("\t", " ").partition(" ")
    sent_by = sent_by.strip(" \t")
    if (
        len(parts) != 2
        or parts[0].upper() != "SIP"
        or not is_token(parts[1])
        or not is_token(transport)
        or not sent_by
    ):
        raise SipParseError("Malformed Via header")
    port: int | None = None
    if sent_by.startswith("["):
        end = sent_by.find("]")
        host = sent_by[1:end]
        if end < 0 or not _is_ipv6(host):
            raise SipParseError("Malformed Via host")
        tail_port = sent_by[end + 1 :].lstrip(" \t")
        if tail_port:
            if tail_port[0] != ":":
                raise SipParseError("Malformed Via host")
            port = _via_port(tail_port[1:])
    else:
        host, colon, port_text = sent_by.partition(":")
        host = host.rstrip(" \t")
        if colon:
            port = _via_port(port_text)
        if not _is_host(host):
            raise SipParseError("Malformed Via host")
    return Via(transport.upper(), host, port, parse_params(semi + rest, " in Via header"))


def _sent_by(via: Via) -> str:
    """The sent-by of a Via as compared for transaction matching: "host:port", the host
    lower-cased (host names are case-insensitive) and bracketed when IPv6, the port of
    the transport written out when absent (RFC 3261 18.1.1: 5060, 5061 for TLS)."""
    host = via.host.lower()
    if ":" in host:
        host = f"[{host}]"
    port = via.port
    if port is None:
        port = 5061 if via.transport == "TLS" else 5060
    return f"{host}:{port}"


def _via_port(text: str) -> int:
    port = _decimal(text.strip(" \t"), 65535)
    if port <= 0 or port > 65535:
        raise SipParseError("Invalid port in Via header")
    return port


def _param(value: str, name: str) -> str:
    """The value of header parameter `name` (lower case) in From, To or Via.

    Fast path for tags and branches: a plain search for ';name=' after the '>' that
    closes a bracketed URI (a URI may carry a ';tag=' parameter of its own), past a
    quoted display name without escapes. Other quotes, or whitespace around ';' and '='
    (SEMI and EQUAL allow SWS), take the slow path that splits outside quotes and <>.
    """
    key = f";{name}="
    after = 0
    if value[:1] == '"':
        after = value.find('"', 1) + 1
        if not after or "\\" in value[:after]:
            return _param_slow(value, name)
    if value.find('"', after) >= 0:
        return _param_slow(value, name)
    after = value.find(">", after) + 1 or after
    i = value.find(key, after)
    if i < 0:
        i = value.lower().find(key, after)
        if i < 0:
            return _param_slow(value, name)
    start = i + len(key)
    end = start
    n = len(value)
    while end < n and value[end] not in "; \t,>":
        end += 1
    return value[start:end]


def _param_slow(value: str, name: str) -> str:
    for part in split_quoted(value, ";")[1:]:
        k, eq, v = part.partition("=")
        if eq and k.strip(" \t").lower() == name:
            return v.strip(" \t")
    return ""


# --- parsing -----------------------------------------------------------------------------


def _split_head(
    head: str, limits: Limits
) -> tuple[str, list[tuple[str, str]], SipParseError | None]:
    """Start line and header fields, folding undone, list headers split.

    A bad header line does not stop the scan: it is skipped and the first such error
    is returned with the headers that could be read, so that a request can still be
    answered with 400 (RFC 3261 8.2.6: the response copies Via, From, To, Call-ID, CSeq).
    """
    error: SipParseError | None = None
    if "\r\n" in head:
        lines = head.split("\r\n")
        bare = head.count("\n") != len(lines) - 1 or head.count("\r") != len(lines) - 1
    else:
        lines = head.split("\n")  # tolerated: LF-only line ends
        bare = "\r" in head
    if bare:
        # A lone CR or LF would survive into a header value and be forwarded, where a
        # lenient parser downstream takes it for a line end: header injection.
        error = SipParseError("Bare CR or LF in header")
        if "\r" in lines[0] or "\n" in lines[0]:
            raise error
        lines = [line for line in lines if "\r" not in line and "\n" not in line]
    start_line = lines[0]
    max_line = limits.max_line_length
    if len(start_line) > max_line:
        raise SipParseError("Start line too long")
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        if len(line) > max_line:
            error = error or SipParseError("Header line too long")
            continue
        if not line:
            continue
        if line[0] in " \t":  # folded continuation of the previous header (RFC 3261 7.3.1)
            more = line.strip(" \t")
            if not headers:
                error = error or SipParseError("Continuation line before any header")
            elif more:
                n, v = headers[-1]
                headers[-1] = (n, f"{v} {more}" if v else more)
            continue
        name, colon, value = line.partition(":")
        name = name.rstrip(" \t")
        canonical = CANONICAL.get(name.lower())
        if not colon or (canonical is None and not is_token(name)):
            error = error or SipParseError(f"Malformed header line {_show(line)}")
            continue
        headers.append((canonical or name, value.strip(" \t")))
    # Split comma-separated list headers into one entry per value. Empty elements
    # ("a,,b", a trailing ',') are dropped: harmless, and some phones send them.
    if any(n in LIST_HEADERS and "," in v for n, v in headers):
        split: list[tuple[str, str]] = []
        for n, v in headers:
            if n in LIST_HEADERS and "," in v:
                split.extend((n, p.strip(" \t")) for p in split_quoted(v, ",") if p.strip(" \t"))
            else:
                split.append((n, v))
        headers = split
    if len(headers) > limits.max_headers:
        error = error or SipParseError(f"Too many headers (limit {limits.max_headers})")
    return start_line, headers, error


def parse_message(
    data: bytes, limits: Limits = DEFAULT_LIMITS, *, stream: bool = False
) -> Request | Response:
    """Parse one message.

    Raises `SipParseError`. When the error is in a request whose Via, From, To, Call-ID
    and CSeq could be read, `error.request` holds it so that the caller can answer
    with `error.status`; otherwise the message cannot be answered and is dropped.

    `stream` says the bytes were framed by Content-Length already (TCP), so a body
    shorter than Content-Length cannot happen and a longer one is not truncated.
    """
    if len(data) > limits.max_message_size:
        raise SipParseError("Message Too Large", status=513)
    if data[:1] in (b"\r", b"\n"):
        data = data.lstrip(b"\r\n")  # CRLFs before the start line are ignored (RFC 3261 7.5)
    # The head ends at the first empty line; LF-only line ends are tolerated.
    sep = data.find(b"\r\n\r\n")
    lf = data.find(b"\n\n", 0, sep if sep >= 0 else len(data))
    if lf >= 0:
        head_bytes, body = data[:lf], data[lf + 2 :]
    elif sep >= 0:
        head_bytes, body = data[:sep], data[sep + 4 :]
    else:
        head_bytes, body = data.rstrip(b"\r\n"), b""
    if not head_bytes:
        raise SipParseError("Empty message")
    nul_error = None
    if b"\x00" in head_bytes and not _nuls_quoted(head_bytes):
        nul_error = SipParseError("NUL character in header")
    head = head_bytes.decode("utf-8", "surrogateescape")
    start_line, headers, head_error = _split_head(head, limits)
    head_error = nul_error or head_error

    if start_line.startswith(SIP_VERSION + " ") or start_line.upper().startswith("SIP/"):
        msg: Request | Response = _response_from(start_line, headers, body)
    else:
        msg = _request_from(start_line, headers, body)
    try:
        if head_error is not None:
            if isinstance(msg, Request):
                _try_fill(msg)
            raise head_error
        _fill_common(msg, stream)
    except SipParseError as e:
        if isinstance(msg, Request) and e.request is None and _answerable(msg):
            e.request = msg
        raise
    return msg


def _nuls_quoted(head: bytes) -> bool:
    """Is every NUL in the head part of a quoted-pair (RFC 3261 25.1, RFC 4475 3.1.1.2)?

    Anywhere else a NUL is refused: C code downstream would cut the value there.
    """
    i = head.find(b"\x00")
    while i >= 0:
        if i == 0 or head[i - 1] != 0x5C:  # backslash
            return False
        i = head.find(b"\x00", i + 1)
    return True


def _request_from(start_line: str, headers: list[tuple[str, str]], body: bytes) -> Request:
    parts = start_line.split(" ")
    if len(parts) != 3 or not all(parts):
        # Extra SP between the elements or after the version is tolerated (RFC 4475
        # 3.1.2.9 and 3.1.2.10 allow it); to_bytes writes the line back clean.
        parts = [p for p in parts if p]
    if len(parts) != 3:
        # Still build the request so that the error can be answered if possible.
        method = parts[0] if parts and is_token(parts[0]) else ""
        req = Request(method, "", headers, body)
        err = SipParseError("Malformed Request-Line")
        if method:
            _try_fill(req)
            if _answerable(req):
                err.request = req
        raise err
    method, uri, version = parts
    if not is_token(method):
        raise SipParseError("Malformed method")
    req = Request(method, uri, headers, body)
    if version != SIP_VERSION:
        err = SipParseError("Version Not Supported", status=505)
        if version.upper().startswith("SIP/"):
            _try_fill(req)
            if _answerable(req):
                err.request = req
        raise err
    return req


def _response_from(start_line: str, headers: list[tuple[str, str]], body: bytes) -> Response:
    version, _, rest = start_line.partition(" ")
    code, _, reason = rest.partition(" ")
    if version != SIP_VERSION:
        raise SipParseError("Unsupported SIP version in response")
    status = _decimal(code, 699) if len(code) == 3 else -1
    if not 100 <= status <= 699:
        raise SipParseError("Malformed status code")
    return Response(status, reason, headers, body)


def _answerable(req: Request) -> bool:
    """Can a response be built (RFC 3261 8.2.6.2 copies these)?

    Without CSeq the client transaction could not match the answer (RFC 3261 17.1.3).
    """
    get = req.get
    return bool(get("Via") and get("From") and get("To") and get("Call-ID") and get("CSeq"))


def _try_fill(req: Request) -> None:
    with contextlib.suppress(SipParseError):
        _fill_common(req, False)


def _fill_common(msg: Request | Response, stream: bool) -> None:
    call_id = cseq_text = from_v = to_v = via_v = max_forwards = None
    clen_values: list[str] = []
    duplicate = ""
    for n, v in msg.headers:
        if n == "Via":
            if via_v is None:
                via_v = v
        elif n == "From":
            if from_v is None:
                from_v = v
            else:
                duplicate = duplicate or n
        elif n == "To":
            if to_v is None:
                to_v = v
            else:
                duplicate = duplicate or n
        elif n == "Call-ID":
            if call_id is None:
                call_id = v
            elif v != call_id:
                duplicate = duplicate or n
        elif n == "CSeq":
            if cseq_text is None:
                cseq_text = v
            elif v != cseq_text:
                duplicate = duplicate or n
        elif n == "Content-Length":
            clen_values.append(v)
        elif n == "Max-Forwards" and max_forwards is None:
            max_forwards = v
    # What responses and transactions key on is read before any check can fail, so that
    # a 400 answering a bad request carries the request's To tag (or gets a fresh one).
    if call_id is not None:
        msg.call_id = call_id
    if from_v is not None:
        msg.from_tag = _param(from_v, "tag")
    if to_v is not None:
        msg.to_tag = _param(to_v, "tag")
    if via_v is not None:
        msg.branch = _param(via_v, "branch")
    if duplicate:  # RFC 4475 3.3.8
        raise SipParseError(f"More than one {duplicate} header")
    if via_v is None:
        raise SipParseError("Missing Via header")
    if from_v is None:
        raise SipParseError("Missing From header")
    if to_v is None:
        raise SipParseError("Missing To header")
    if not call_id:
        raise SipParseError("Missing Call-ID header")
    if cseq_text is None:
        raise SipParseError("Missing CSeq header")
    # callid = word ["@" word]: printable ASCII without whitespace. '=' and '#', outside
    # `word` but common in real Call-IDs, are let through.
    if not (call_id.isascii() and call_id.isprintable()) or " " in call_id:
        raise SipParseError("Invalid Call-ID")
    num, _, method = cseq_text.replace("\t", " ").partition(" ")
    method = method.strip(" ")
    cseq = _decimal(num, 2**31 - 1)  # RFC 3261 8.1.1.5: less than 2**31
    if cseq < 0 or cseq > 2**31 - 1:
        raise SipParseError("Invalid CSeq number")
    if not is_token(method):
        raise SipParseError("Invalid CSeq method")
    msg.cseq = cseq
    msg.cseq_method = method
    if isinstance(msg, Request):
        if method != msg.method:
            raise SipParseError("CSeq method does not match the request method")
        if not msg.uri:
            raise SipParseError("Missing Request-URI")
        if parse_uri(msg.uri).headers:  # validates; 416 for unknown schemes
            # RFC 3261 19.1.1 allows headers in no Request-URI (RFC 4475 3.1.2.11).
            raise SipParseError("Headers not allowed in Request-URI")
        if max_forwards is not None:
            hops = _decimal(max_forwards, 255)  # "00" is zero; no sign, no spaces inside
            if not 0 <= hops <= 255:
                raise SipParseError("Invalid Max-Forwards")
            msg.max_forwards = hops
        # The addresses must be readable for a dialog to be built on them.
        _check_address(from_v, "From")
        _check_address(to_v, "To")
        msg.sent_by = _sent_by(parse_via(via_v))
    if clen_values:
        lengths = {_decimal(v, 2**31) for v in clen_values}
        if min(lengths) < 0:
            raise SipParseError("Invalid Content-Length")
        if len(lengths) > 1:  # RFC 4475 3.3.9
            raise SipParseError("Conflicting Content-Length headers")
        length = lengths.pop()
        if length > len(msg.body):
            raise SipParseError("Content-Length larger than the message body")
        if length < len(msg.body) and not stream:
            # RFC 3261 18.3: on a datagram, octets past Content-Length are discarded.
            msg.body = msg.body[:length]
    elif stream:
        raise SipParseError("Missing Content-Length on a stream transport")


def _check_address(value: str, header: str) -> None:
    try:
        parse_name_addr(value)
    except SipParseError as e:
        raise SipParseError(f"{e.reason} in {header} header", e.status) from None


# --- stream framing (RFC 3261 18.3) ------------------------------------------------------


class StreamFramer:
    """Cut a TCP byte stream into messages by Content-Length.

    `feed` returns complete frames (bytes of one message each). A header block that
    outgrows `limits.max_message_size` without ending, or a frame whose headers give no
    usable Content-Length (missing, not a number, or two different values: RFC 4475
    3.1.2.3 and 3.3.9), raises SipParseError: the stream can no longer be framed and
    the connection must be closed.

    The search for the end of a header block resumes where the last feed left it, and a
    frame's length is read once, so a peer sending a byte at a time costs no rescans.
    """

    __slots__ = ("_buf", "_limits", "_need", "_scanned")

    def __init__(self, limits: Limits = DEFAULT_LIMITS) -> None:
        self._buf = bytearray()
        self._limits = limits
        self._scanned = 0  # bytes of _buf known to hold no CRLFCRLF
        self._need = 0  # the size of the frame at the head of _buf, once known

    def feed(self, data: bytes) -> list[bytes]:
        buf = self._buf
        buf += data
        frames: list[bytes] = []
        max_size = self._limits.max_message_size
        while buf:
            if not self._need:
                # Keep-alive CRLFs between messages (RFC 5626 4.4.1) are skipped.
                if buf[0] in (13, 10):
                    stripped = buf.lstrip(b"\r\n")
                    del buf[: len(buf) - len(stripped)]
                    continue
                end = buf.find(b"\r\n\r\n", max(0, self._scanned - 3))
                if end < 0:
                    self._scanned = len(buf)
                    if len(buf) > max_size:
                        raise SipParseError("Message Too Large", status=513)
                    break
                self._scanned = 0
                self._need = end + 4 + _content_length(bytes(buf[:end]), max_size)
                if self._need > max_size:
                    raise SipParseError("Message Too Large", status=513)
            if len(buf) < self._need:
                break
            frames.append(bytes(buf[: self._need]))
            del buf[: self._need]
            self._need = 0
        return frames


def _content_length(head: bytes, limit: int) -> int:
    """The Content-Length of a header block (compact form and folding understood)."""
    found = -2
    lines = head.split(b"\r\n")
    for i in range(1, len(lines)):
        name, colon, value = lines[i].partition(b":")
        if not colon or name.rstrip(b" \t").lower() not in (b"content-length", b"l"):
            continue
        j = i + 1
        while j < len(lines) and lines[j][:1] in (b" ", b"\t"):  # folded value
            value += b" " + lines[j]
            j += 1
        length = _decimal(value.strip(b" \t").decode("latin-1"), limit)
        if length < 0:
            raise SipParseError("Invalid Content-Length")
        if found not in (-2, length):
            raise SipParseError("Conflicting Content-Length headers")
        found = length
    if found == -2:
        raise SipParseError("Missing Content-Length on a stream transport")
    return found


# --- building messages --------------------------------------------------------------------


def response_to(
    req: Request,
    status: int,
    reason: str,
    *,
    to_tag: str = "",
    headers: list[tuple[str, str]] | None = None,
    body: bytes = b"",
) -> Response:
    """A response to `req` (RFC 3261 8.2.6.2): Via, From, To, Call-ID and CSeq copied."""
    copied: list[tuple[str, str]] = []
    for n, v in req.headers:
        if n in ("Via", "From", "Call-ID", "CSeq"):
            copied.append((n, v))
        elif n == "To":
            tagged = to_tag and not req.to_tag and status != 100
            copied.append((n, f"{v};tag={to_tag}" if tagged else v))
    if headers:
        copied.extend(headers)
    resp = Response(status, reason, copied, body)
    resp.call_id = req.call_id
    resp.cseq = req.cseq
    resp.cseq_method = req.cseq_method
    resp.branch = req.branch
    resp.from_tag = req.from_tag
    resp.to_tag = req.to_tag or (to_tag if status != 100 else "")
    return resp
