"""A small SIP call generator for the demo: a caller (UAC) and a callee (UAS) on UDP.

Written on twinline.sip's message layer (`parse_message`, `Request`, `response_to`),
with just enough of RFC 3261 for a B2BUA on the same host to carry its calls: INVITE
retransmitted on timer A until a response, the 200 retransmitted by the callee until
its ACK, an ACK for every 2xx, BYE retransmitted on timer E until its 200. It is a
load generator for `twinline demo`, not a phone: no authentication, no media.

`Caller.place(n, rate, hold)` places n calls at `rate` per second, each answered call
held `hold` seconds and then hung up by the caller; `Caller.counts` tells how many
were placed, answered, completed (BYE answered 200) and failed, with each failure's
reason in `Caller.failures`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from dataclasses import dataclass, field

from twinline.sip.errors import SipParseError
from twinline.sip.ids import new_branch, new_call_id, new_tag
from twinline.sip.message import Request, Response, parse_message, parse_name_addr, response_to

log = logging.getLogger("twinline.demo")

T1 = 0.5
T2 = 4.0
GIVE_UP = 64 * T1  # timer B and F: a transaction with no answer in 32 s has failed

Address = tuple[str, int]


def _sdp(host: str, port: int, session: int) -> bytes:
    return (
        f"v=0\r\no=twinline-demo {session} {session} IN IP4 {host}\r\ns=-\r\n"
        f"c=IN IP4 {host}\r\nt=0 0\r\nm=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
    ).encode()


class _Endpoint(asyncio.DatagramProtocol):
    """A UDP socket that hands parsed messages to its owner; malformed input is dropped."""

    def __init__(self, owner: _Phone) -> None:
        self.owner = owner

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            msg = parse_message(data)
        except SipParseError:
            self.owner.malformed += 1
            return
        self.owner.received(msg, (addr[0], addr[1]))


class _Phone:
    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = 0
        self.malformed = 0
        self._transport: asyncio.DatagramTransport | None = None

    async def start(self, port: int = 0) -> int:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Endpoint(self), local_addr=(self.host, port)
        )
        self._transport = transport
        self.port = transport.get_extra_info("sockname")[1]
        return self.port

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def send(self, msg: Request | Response, to: Address) -> None:
        if self._transport is not None:
            self._transport.sendto(msg.to_bytes(), to)

    def received(self, msg: Request | Response, source: Address) -> None:
        raise NotImplementedError


class _Retransmit:
    """Re-send a message on RFC 3261's doubling timer until stopped or GIVE_UP."""

    def __init__(self, phone: _Phone, msg: Request | Response, to: Address, cap: float) -> None:
        self.phone, self.msg, self.to, self.cap = phone, msg, to, cap
        self.interval = T1
        loop = asyncio.get_running_loop()
        self.handle = loop.call_later(self.interval, self._fire)
        self.deadline = loop.time() + GIVE_UP

    def _fire(self) -> None:
        loop = asyncio.get_running_loop()
        if loop.time() >= self.deadline:
            return
        self.phone.send(self.msg, self.to)
        self.interval = min(self.interval * 2, self.cap)
        self.handle = loop.call_later(self.interval, self._fire)

    def stop(self) -> None:
        self.handle.cancel()


# --- the callee ----------------------------------------------------------------------------


class Callee(_Phone):
    """Answers every INVITE at once (180, then 200 with an SDP answer); 200 to BYE."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        super().__init__(host)
        self.answered = 0
        self.byes = 0
        # By Call-ID: the 200 being retransmitted until its ACK, and the last response.
        self._unacked: dict[str, _Retransmit] = {}
        self._last: dict[tuple[str, int, str], Response] = {}

    def received(self, msg: Request | Response, source: Address) -> None:
        if not isinstance(msg, Request):
            return
        key = (msg.call_id, msg.cseq, msg.method)
        if msg.method == "ACK":
            pending = self._unacked.pop(msg.call_id, None)
            if pending is not None:
                pending.stop()
            return
        if key in self._last:  # a retransmission: the same answer again
            self.send(self._last[key], source)
            return
        if msg.method == "INVITE":
            tag = new_tag()
            contact = [("Contact", f"<sip:callee@{self.host}:{self.port}>")]
            self.send(response_to(msg, 180, "Ringing", to_tag=tag), source)
            ok = response_to(
                msg, 200, "OK", to_tag=tag,
                headers=[*contact, ("Content-Type", "application/sdp")],
                body=_sdp(self.host, 40000, msg.cseq),
            )  # fmt: skip
            self._remember(key, ok)
            self.send(ok, source)
            self._unacked[msg.call_id] = _Retransmit(self, ok, source, T2)
            self.answered += 1
        elif msg.method == "BYE":
            ok = response_to(msg, 200, "OK")
            self._remember(key, ok)
            self.send(ok, source)
            self.byes += 1
        elif msg.method in ("OPTIONS", "UPDATE", "INFO"):
            self.send(response_to(msg, 200, "OK"), source)
        elif msg.method != "CANCEL":
            self.send(response_to(msg, 405, "Method Not Allowed"), source)

    def _remember(self, key: tuple[str, int, str], resp: Response) -> None:
        self._last[key] = resp
        if len(self._last) > 20000:  # a bounded memory of answers for retransmissions
            for old in list(self._last)[:10000]:
                del self._last[old]


# --- the caller ----------------------------------------------------------------------------


@dataclass
class _Call:
    call_id: str
    from_tag: str
    invite: Request
    retransmit: _Retransmit | None = None
    to_tag: str = ""
    target: str = ""
    answered: bool = False
    hung_up: bool = False  # the network sent BYE while the call was held
    done: asyncio.Future[str] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class Caller(_Phone):
    def __init__(self, switch: Address, number: str = "1000", host: str = "127.0.0.1") -> None:
        super().__init__(host)
        self.switch = switch
        self.number = number
        self.counts: Counter[str] = Counter()
        self.failures: Counter[str] = Counter()
        self._calls: dict[str, _Call] = {}

    @property
    def in_progress(self) -> int:
        return len(self._calls)

    async def place(self, calls: int, rate: float, hold: float) -> None:
        """Place `calls` calls at `rate` per second; returns when every call is over."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        tasks = []
        for n in range(calls):
            delay = start + n / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(loop.create_task(self._one(n, hold)))
        await asyncio.gather(*tasks)

    async def _one(self, n: int, hold: float) -> None:
        self.counts["placed"] += 1
        call = self._invite(n)
        try:
            result = await asyncio.wait_for(call.done, GIVE_UP + 1)
        except TimeoutError:
            result = "no final response"
        if result != "answered":
            self._fail(call, result)
            return
        self.counts["answered"] += 1
        await asyncio.sleep(hold)
        if call.hung_up:
            return
        call.done = asyncio.get_running_loop().create_future()
        self._bye(call)
        try:
            result = await asyncio.wait_for(call.done, GIVE_UP + 1)
        except TimeoutError:
            result = "no answer to BYE"
        if result == "completed":
            self.counts["completed"] += 1
            self._calls.pop(call.call_id, None)
        else:
            self._fail(call, result)

    def _fail(self, call: _Call, reason: str) -> None:
        self.counts["failed"] += 1
        self.failures[reason] += 1
        if call.retransmit is not None:
            call.retransmit.stop()
        self._calls.pop(call.call_id, None)

    def _headers(
        self, call_id: str, from_tag: str, cseq: int, method: str
    ) -> list[tuple[str, str]]:
        host, port = self.switch
        return [
            ("Via", f"SIP/2.0/UDP {self.host}:{self.port};branch={new_branch()};rport"),
            ("Max-Forwards", "70"),
            ("From", f"<sip:demo@{self.host}>;tag={from_tag}"),
            ("To", f"<sip:{self.number}@{host}:{port}>"),
            ("Call-ID", call_id),
            ("CSeq", f"{cseq} {method}"),
        ]

    def _invite(self, n: int) -> _Call:
        host, port = self.switch
        call_id, tag = new_call_id(self.host), new_tag()
        headers = self._headers(call_id, tag, 1, "INVITE")
        headers += [
            ("Contact", f"<sip:demo@{self.host}:{self.port}>"),
            ("Content-Type", "application/sdp"),
        ]
        invite = Request(
            "INVITE", f"sip:{self.number}@{host}:{port}", headers, _sdp(self.host, 30000, n)
        )
        call = _Call(call_id, tag, invite)
        self._calls[call_id] = call
        self.send(invite, self.switch)
        call.retransmit = _Retransmit(self, invite, self.switch, cap=GIVE_UP)  # timer A
        return call

    def _bye(self, call: _Call) -> None:
        headers = self._headers(call.call_id, call.from_tag, 2, "BYE")
        headers[3] = ("To", f"{headers[3][1]};tag={call.to_tag}")
        bye = Request("BYE", call.target, headers)
        self.send(bye, self.switch)
        call.retransmit = _Retransmit(self, bye, self.switch, cap=T2)  # timer E

    def received(self, msg: Request | Response, source: Address) -> None:
        if isinstance(msg, Request):
            self._request(msg, source)
            return
        call = self._calls.get(msg.call_id)
        if call is None:
            return
        if msg.cseq_method == "INVITE":
            if call.retransmit is not None and not call.answered:
                call.retransmit.stop()  # any response stops timer A
                call.retransmit = None
            if msg.status < 200:
                return
            if msg.status >= 300:
                # The switch's transaction layer ACKs non-2xx hop by hop; we only report.
                self._ack(call, msg)
                if not call.done.done():
                    call.done.set_result(f"{msg.status} {msg.reason}")
                return
            call.to_tag = msg.to_tag
            contact = msg.get("Contact")
            if contact and not call.target:
                with contextlib.suppress(SipParseError):
                    call.target = parse_name_addr(contact).uri
            call.target = call.target or call.invite.uri
            self._ack(call, msg)  # every 2xx, retransmissions too
            call.answered = True
            if not call.done.done():
                call.done.set_result("answered")
        elif msg.cseq_method == "BYE" and msg.status >= 200:
            if call.retransmit is not None:
                call.retransmit.stop()
            if not call.done.done():
                call.done.set_result("completed" if msg.status < 300 else f"BYE {msg.status}")

    def _ack(self, call: _Call, resp: Response) -> None:
        headers = self._headers(call.call_id, call.from_tag, 1, "ACK")
        headers[3] = ("To", resp.get("To") or headers[3][1])
        if resp.status >= 300:  # part of the INVITE transaction: the INVITE's branch
            headers[0] = ("Via", call.invite.get("Via") or headers[0][1])
        uri = call.target if resp.status < 300 and call.target else call.invite.uri
        self.send(Request("ACK", uri, headers), self.switch)

    def _request(self, req: Request, source: Address) -> None:
        call = self._calls.get(req.call_id)
        if req.method == "BYE" and call is not None:
            # The far end (the switch, for a call it had to end) hung up first.
            self.send(response_to(req, 200, "OK"), source)
            if not call.done.done():
                call.done.set_result("hung up by the network")
            elif not call.hung_up:
                call.hung_up = True
                self._fail(call, "hung up by the network")
        elif req.method != "ACK":
            if call is None:
                self.send(response_to(req, 481, "Call/Transaction Does Not Exist"), source)
            else:
                self.send(response_to(req, 200, "OK"), source)
