"""A caller over SIP over TLS, on Python's `ssl`: Debian's SIPp is built without TLS.

Just what a call needs: INVITE (with SDP), read the responses to the final one,
ACK a 2xx, BYE, read its 200. Blocking sockets with timeouts; every message
it reads is kept in `received` for the test to look at. The switch's
certificate is verified against the test CA and the name dialled.
"""

from __future__ import annotations

import socket
import ssl
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
