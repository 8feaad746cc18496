"""A caller over SIP over TLS, on Python's `ssl`: Debian's SIPp is built without TLS.

Just what a call needs: INVITE (with SDP), read the responses to the final one,
ACK a 2xx, BYE, read its 200. Blocking sockets with timeouts; every message
it reads is kept in `received` for the test to look at. The switch's
certificate is verified against the test CA and the name dialled.
"""

from __future__ import annotations

import contextlib
import hashlib
import socket
import ssl
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

SDP = (
    "v=0\r\no=tlsphone 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\n"
    "t=0 0\r\nm=audio 40000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
)


@dataclass
class Reply:
    status: int
    headers: dict[str, str]  # lower-cased name -> first value
    raw: str


@dataclass
class TlsPhone:
    host: str  # the name the switch's certificate must carry
    port: int
    ca: Path
    cert: Path | None = None  # a client certificate, for a switch that asks for one
    key: Path | None = None
    timeout: float = 10.0
    received: list[str] = field(default_factory=list)
    sock: ssl.SSLSocket | None = None
    _buffer: bytes = b""

    def connect(self) -> TlsPhone:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(self.ca))
        if self.cert is not None and self.key is not None:
            ctx.load_cert_chain(str(self.cert), str(self.key))
        raw = socket.create_connection((self.host, self.port), timeout=self.timeout)
        self.sock = ctx.wrap_socket(raw, server_hostname=self.host)
        return self

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()

    @property
    def local(self) -> tuple[str, int]:
        assert self.sock is not None
        host, port = self.sock.getsockname()[:2]
        return str(host), int(port)

    def send(self, lines: list[str], body: str = "") -> None:
        assert self.sock is not None
        head = "\r\n".join([*lines, f"Content-Length: {len(body.encode())}"])
        self.sock.sendall(f"{head}\r\n\r\n{body}".encode())

    def read(self) -> Reply:
        """The next message on the connection (keep-alive CRLFs skipped)."""
        assert self.sock is not None
        while True:
            self._buffer = self._buffer.lstrip(b"\r\n")
            end = self._buffer.find(b"\r\n\r\n")
            if end >= 0:
                head = self._buffer[:end].decode()
                headers: dict[str, str] = {}
                for line in head.split("\r\n")[1:]:
                    name, _, value = line.partition(":")
                    headers.setdefault(name.strip().lower(), value.strip())
                length = int(headers.get("content-length", headers.get("l", "0")))
                total = end + 4 + length
                if len(self._buffer) >= total:
                    raw = self._buffer[:total].decode()
                    self._buffer = self._buffer[total:]
                    self.received.append(raw)
                    first = head.split("\r\n", 1)[0]
                    status = int(first.split()[1]) if first.startswith("SIP/2.0") else 0
                    return Reply(status, headers, raw)
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("the switch closed the TLS connection")
            self._buffer += data

    def call(self, number: str, domain: str, *, hold: float = 0.5) -> list[Reply]:
        """One call: INVITE, the answer, ACK, `hold` seconds, BYE. The replies to
        the INVITE and the BYE, in order."""
        lhost, lport = self.local
        call_id = f"{uuid.uuid4().hex}@tlsphone"
        tag = uuid.uuid4().hex[:8]
        uri = f"sip:{number}@{domain}"
        via = f"Via: SIP/2.0/TLS {lhost}:{lport};branch=z9hG4bK{uuid.uuid4().hex};rport"
        common = [
            f"From: <sip:tlsphone@{domain}>;tag={tag}",
            f"Call-ID: {call_id}",
            "Max-Forwards: 70",
        ]
        self.send(
            [
                f"INVITE {uri} SIP/2.0", via, *common, f"To: <{uri}>", "CSeq: 1 INVITE",
                f"Contact: <sip:tlsphone@{lhost}:{lport};transport=tls>",
                "Content-Type: application/sdp",
            ],
            SDP,
        )  # fmt: skip
        replies = []
        while True:
            reply = self.read()
            if reply.status == 0:
                continue  # a request (none expected before the answer)
            replies.append(reply)
            if reply.status >= 200:
                break
        final = replies[-1]
        if final.status >= 300:
            return replies
        to = final.headers["to"]
        contact = final.headers["contact"].strip("<>").split(">")[0]
        ack_via = f"Via: SIP/2.0/TLS {lhost}:{lport};branch=z9hG4bK{uuid.uuid4().hex};rport"
        self.send([f"ACK {contact} SIP/2.0", ack_via, *common, f"To: {to}", "CSeq: 1 ACK"])
        time.sleep(hold)
        bye_via = f"Via: SIP/2.0/TLS {lhost}:{lport};branch=z9hG4bK{uuid.uuid4().hex};rport"
        self.send([f"BYE {contact} SIP/2.0", bye_via, *common, f"To: {to}", "CSeq: 2 BYE"])
        while True:
            reply = self.read()
            if reply.status:
                replies.append(reply)
                return replies


def _digest(challenge: str, user: str, password: str, method: str, uri: str) -> str:
    """An Authorization value for a digest challenge (RFC 2617/7616, MD5, qop=auth)."""
    params = dict(
        (k.strip(), v.strip().strip('"'))
        for k, _, v in (p.partition("=") for p in challenge.split(" ", 1)[1].split(","))
    )
    realm, nonce = params["realm"], params["nonce"]
    cnonce, nc = uuid.uuid4().hex[:16], "00000001"

    def md5(text: str) -> str:
        return hashlib.md5(text.encode()).hexdigest()  # noqa: S324 - the protocol's hash

    response = md5(
        f"{md5(f'{user}:{realm}:{password}')}:{nonce}:{nc}:{cnonce}:auth:{md5(f'{method}:{uri}')}"
    )
    value = (
        f'Digest username="{user}", realm="{realm}", nonce="{nonce}", uri="{uri}", '
        f'response="{response}", algorithm=MD5, qop=auth, nc={nc}, cnonce="{cnonce}"'
    )
    if "opaque" in params:
        value += f', opaque="{params["opaque"]}"'
    return value


def register(phone: TlsPhone, user: str, password: str, domain: str) -> Reply:
    """REGISTER `user` with its Contact on this TLS connection, answering the
    digest challenge; the final reply."""
    lhost, lport = phone.local
    call_id = f"{uuid.uuid4().hex}@tlsphone"
    uri = f"sip:{domain}"
    authorization: list[str] = []
    for cseq in (1, 2):
        via = f"Via: SIP/2.0/TLS {lhost}:{lport};branch=z9hG4bK{uuid.uuid4().hex};rport"
        phone.send(
            [
                f"REGISTER {uri} SIP/2.0", via, "Max-Forwards: 70",
                f"From: <sip:{user}@{domain}>;tag=reg{cseq}", f"To: <sip:{user}@{domain}>",
                f"Call-ID: {call_id}", f"CSeq: {cseq} REGISTER",
                f"Contact: <sip:{user}@{lhost}:{lport};transport=tls>", "Expires: 300",
                *authorization,
            ]
        )  # fmt: skip
        reply = phone.read()
        if reply.status != 401:
            return reply
        challenge = reply.headers["www-authenticate"]
        authorization = [f"Authorization: {_digest(challenge, user, password, 'REGISTER', uri)}"]
    return reply


def answer_one_call(phone: TlsPhone) -> list[str]:
    """Take one call on the phone's connection: 200 (with SDP) to the INVITE, then
    wait for the ACK and the BYE (answered 200). The methods it received, in order."""
    methods: list[str] = []
    while True:
        message = phone.read()
        if message.status:
            continue
        method = message.raw.split(" ", 1)[0]
        methods.append(method)
        if method == "ACK":
            continue
        h = message.headers
        lhost, lport = phone.local
        copied = [f"Via: {v}" for v in _all(message.raw, "via")] + [
            f"From: {h['from']}",
            f"Call-ID: {h['call-id']}",
            f"CSeq: {h['cseq']}",
        ]
        to = h["to"] if ";tag=" in h["to"] else f"{h['to']};tag=phone1"
        if method == "INVITE":
            phone.send(
                ["SIP/2.0 200 OK", *copied, f"To: {to}",
                 f"Contact: <sip:alice@{lhost}:{lport};transport=tls>",
                 "Content-Type: application/sdp"],
                SDP,
            )  # fmt: skip
        else:
            phone.send(["SIP/2.0 200 OK", *copied, f"To: {to}"])
            if method == "BYE":
                return methods


@dataclass
class TlsCallee:
    """A callee (a trunk, say) on SIP over TLS, in a thread: it takes connections on
    127.0.0.1 with `cert`/`key`, answers every INVITE 200 with SDP, takes the ACK, and
    answers BYE 200. `requests` holds the method of every request it read, in order;
    `handshake_errors` counts connections whose TLS handshake failed."""

    cert: Path
    key: Path
    port: int = 0
    requests: list[str] = field(default_factory=list)
    received: list[str] = field(default_factory=list)
    handshake_errors: int = 0
    _server: socket.socket | None = None
    _thread: threading.Thread | None = None
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> TlsCallee:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(self.cert), str(self.key))
        server = socket.create_server(("127.0.0.1", self.port))
        server.settimeout(0.2)
        self.port = server.getsockname()[1]
        self._server = server
        self._thread = threading.Thread(target=self._serve, args=(ctx,), daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._server is not None:
            self._server.close()

    def _serve(self, ctx: ssl.SSLContext) -> None:
        assert self._server is not None
        while not self._stop.is_set():
            try:
                raw, _ = self._server.accept()
            except TimeoutError:
                continue
            raw.settimeout(10)
            try:
                conn = ctx.wrap_socket(raw, server_side=True)
            except (ssl.SSLError, OSError):
                self.handshake_errors += 1
                raw.close()
                continue
            threading.Thread(target=self._talk, args=(conn,), daemon=True).start()

    def _talk(self, conn: ssl.SSLSocket) -> None:
        peer = TlsPhone("127.0.0.1", self.port, Path(), sock=conn, received=self.received)
        with contextlib.suppress(OSError, ConnectionError, ValueError):
            while not self._stop.is_set():
                message = peer.read()
                if message.status:
                    continue
                method = message.raw.split(" ", 1)[0]
                self.requests.append(method)
                if method == "ACK":
                    continue
                h = message.headers
                copied = [f"Via: {v}" for v in _all(message.raw, "via")] + [
                    f"From: {h['from']}",
                    f"Call-ID: {h['call-id']}",
                    f"CSeq: {h['cseq']}",
                ]
                to = h["to"] if ";tag=" in h["to"] else f"{h['to']};tag=trunk1"
                if method == "INVITE":
                    peer.send(
                        ["SIP/2.0 200 OK", *copied, f"To: {to}",
                         f"Contact: <sip:trunk@127.0.0.1:{self.port};transport=tls>",
                         "Content-Type: application/sdp"],
                        SDP,
                    )  # fmt: skip
                else:
                    peer.send(["SIP/2.0 200 OK", *copied, f"To: {to}"])
        conn.close()


def _all(raw: str, name: str) -> list[str]:
    head = raw.split("\r\n\r\n", 1)[0]
    values = []
    for line in head.split("\r\n")[1:]:
        key, _, value = line.partition(":")
        if key.strip().lower() == name:
            values.append(value.strip())
    return values
