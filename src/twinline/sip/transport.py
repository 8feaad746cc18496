"""asyncio transports for SIP: UDP endpoints, TCP and TLS listeners and connections.

The thin edge between sockets and a sans-IO core. Inbound, every datagram or framed
stream message goes to `deliver(data, source, stream)`; outbound, `send(address,
data)` picks the UDP socket of the address's family or the TCP or TLS connection to
that address (opening one when there is none, queueing until it is up). A connection
that cannot be opened, secured or framed, or a host name that cannot be resolved, is
reported to `failed(address)`, always after `send` returned. Host names are resolved off
the event loop by a `Resolver`; a message to a name not yet resolved waits for the answer.

TLS is asyncio's, over the same stream framing as TCP: a "tls" address is a stream
whose connection was opened (or accepted) with the `tls_client` (or `tls_server`)
context, the peer's certificate checked against the host the address names.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import ssl
from collections.abc import Callable

from twinline.sip.errors import SipParseError
from twinline.sip.message import Limits, StreamFramer
from twinline.sip.resolver import Resolved, Resolver
from twinline.sip.transaction import Address

log = logging.getLogger("twinline.sip.transport")

Deliver = Callable[[bytes, Address, bool], None]
Failed = Callable[[Address], None]

# Room for bursts of datagrams while the loop is busy: at 100 calls/s a call's 7
# messages per leg arrive well within the default, but a load test's bursts do not.
UDP_BUFFER_BYTES = 4 * 1024 * 1024


# Far above a handshake's few round trips; a peer that stalls it holds nothing longer.
TLS_HANDSHAKE_TIMEOUT = 5.0


def _family(host: str) -> int:
    try:
        return socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        return socket.AF_INET


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, owner: SipTransports) -> None:
        self.owner = owner
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's UDP transport is not a subclass of asyncio's, only alike.
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                with contextlib.suppress(OSError):  # capped by the kernel's limits
                    sock.setsockopt(socket.SOL_SOCKET, opt, UDP_BUFFER_BYTES)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self.owner.deliver(data, ("udp", str(addr[0]), int(addr[1])), False)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable and the like; the transaction timers handle the loss.
        self.owner.udp_errors += 1


class _Tcp(asyncio.Protocol):
    """One stream connection, TCP or TLS (`kind`): the framing is the same."""

    def __init__(
        self, owner: SipTransports, remote: tuple[str, int] | None = None, kind: str = "tcp"
    ) -> None:
        self.owner = owner
        self.framer = StreamFramer(owner.limits)
        self.transport: asyncio.Transport | None = None
        self.remote = remote
        self.kind = kind

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if self.remote is None:
            peer = transport.get_extra_info("peername")
            self.remote = (str(peer[0]), int(peer[1]))
        self.owner.tcp[self.remote] = self

    def data_received(self, data: bytes) -> None:
        try:
            frames = self.framer.feed(data)
        except SipParseError as e:
            # The stream cannot be cut into messages any more: nothing after this
            # point can be trusted, so the connection goes.
            log.warning(
                "closing %s connection from %s: %s", self.kind.upper(), self.remote, e.reason
            )
            assert self.transport is not None
            self.transport.close()
            return
        assert self.remote is not None
        source = (self.kind, self.remote[0], self.remote[1])
        for frame in frames:
            self.owner.deliver(frame, source, True)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.remote is not None and self.owner.tcp.get(self.remote) is self:
            del self.owner.tcp[self.remote]

    def send(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)


class SipTransports:
    def __init__(
        self,
        deliver: Deliver,
        failed: Failed,
        limits: Limits,
        *,
        tls_server: ssl.SSLContext | None = None,
        tls_client: ssl.SSLContext | None = None,
        resolver: Resolver | None = None,
    ) -> None:
        self.deliver = deliver
        self.failed = failed
        self.limits = limits
        self.tls_server = tls_server
        self.tls_client = tls_client
        self.udp: dict[int, _Udp] = {}  # by address family
        self.tcp: dict[tuple[str, int], _Tcp] = {}  # by remote address
        self.servers: list[asyncio.Server] = []
        self._connecting: dict[tuple[str, int], list[bytes]] = {}
        self.resolver = resolver or Resolver()
        self._resolved = self.resolver.cache  # the fast path: one dict lookup per send
        self.udp_errors = 0

    async def listen(self, transport: str, host: str, port: int) -> tuple[str, int]:
        """Start a listener; returns the address it is bound to (port 0 picks one)."""
        loop = asyncio.get_running_loop()
        if transport == "udp":
            transport_, proto = await loop.create_datagram_endpoint(
                lambda: _Udp(self), local_addr=(host, port), family=_family(host)
            )
            proto.transport = transport_
            bound = transport_.get_extra_info("sockname")
            self.udp.setdefault(_family(host), proto)
            self.resolver.families.add(_family(host))
        else:
            tls = self.tls_server if transport == "tls" else None
            if transport == "tls" and tls is None:
                raise ValueError("a tls listener needs the server's TLS context")
            server = await loop.create_server(
                lambda: _Tcp(self, kind=transport),
                host=host,
                port=port,
                family=_family(host),
                reuse_address=True,
                ssl=tls,
                ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT if tls is not None else None,
            )
            self.servers.append(server)
            bound = server.sockets[0].getsockname()
        return str(bound[0]), int(bound[1])

    def send(self, address: Address, data: bytes) -> None:
        transport, name, port = address
        host = name
        resolved = self._resolved.get(host)
        if resolved is None:
            resolved = self.resolver.cached(host)
            if resolved is None:
                # A name not resolved yet: this message waits for the lookup.
                self.resolver.resolve(host, lambda found: self._send_resolved(address, data, found))
                return
        host, family = resolved
        if transport == "udp":
            udp = self.udp.get(family)
            if udp is None or udp.transport is None:
                self.failed(address)
                return
            udp.transport.sendto(data, (host, port))
            return
        conn = self.tcp.get((host, port))
        if conn is not None and conn.transport is not None and not conn.transport.is_closing():
            conn.send(data)
            return
        pending = self._connecting.get((host, port))
        if pending is not None:
            pending.append(data)
            return
        self._connecting[(host, port)] = [data]
        asyncio.get_running_loop().create_task(self._connect(address, host, port, name))

    def _send_resolved(self, address: Address, data: bytes, resolved: Resolved | None) -> None:
        if resolved is None:
            self.failed(address)
        else:
            self.send(address, data)  # the name is in the cache now

    async def _connect(self, address: Address, host: str, port: int, name: str) -> None:
        """Open the stream for `address` to `host` (resolved from `name`, which a TLS
        peer's certificate must carry)."""
        loop = asyncio.get_running_loop()
        kind = address[0]
        tls = self.tls_client if kind == "tls" else None
        try:
            if kind == "tls" and tls is None:
                raise OSError("no TLS context for outgoing connections")
            _, proto = await asyncio.wait_for(
                loop.create_connection(
                    lambda: _Tcp(self, (host, port), kind),
                    host,
                    port,
                    ssl=tls,
                    server_hostname=name if tls is not None else None,
                ),
                timeout=5.0,
            )
        except (OSError, TimeoutError) as e:
            log.warning("cannot connect to %s:%s over %s: %s", host, port, kind.upper(), e)
            self._connecting.pop((host, port), None)
            self.failed(address)
            return
        for data in self._connecting.pop((host, port), []):
            proto.send(data)

    def disconnect(self, host: str) -> int:
        """Close every stream connection (TCP, TLS) with `host`, e.g. a banned address;
        returns how many."""
        closing = [c for remote, c in self.tcp.items() if remote[0] == host]
        for conn in closing:
            if conn.transport is not None:
                conn.transport.close()
        return len(closing)

    def close(self) -> None:
        self.resolver.close()
        for udp in self.udp.values():
            if udp.transport is not None:
                udp.transport.close()
        for server in self.servers:
            server.close()
        for conn in list(self.tcp.values()):
            if conn.transport is not None:
                conn.transport.close()
