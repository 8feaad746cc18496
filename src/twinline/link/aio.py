"""asyncio adapters for the links: pump bytes between TCP (or TLS) and a `LinkEndpoint`.

`serve()` listens (the acceptor side: the switch, or a server for its peers) and builds
one endpoint per connection; `connect()` opens a connection for an endpoint (the
connector side). Either way the application gets an `AioLink` in every `on_event`
call and uses it to `send`, `accept`/`refuse` a Hello, or `close`.

Per connection: one `asyncio.Protocol`, one timer handle (re-armed only when the
endpoint's deadline moves earlier), and after every input one write of whatever the
endpoint queued. Closed links are logged here (logger "twinline.link") with the
peer's address: a close the application asked for at INFO, any other at WARNING.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Callable, Iterable

import msgspec

from twinline.link.endpoint import Closed, Established, LinkEndpoint, LinkEvent
from twinline.link.messages import LiveInstance

log = logging.getLogger("twinline.link")

OnEvent = Callable[["AioLink", LinkEvent], None]

# A peer that keeps its link alive but stops reading would make us buffer without end;
# past this much unsent data (far beyond a burst of call messages) the link is closed.
MAX_WRITE_BUFFER = 16 * 1024 * 1024

# How long a closed link may take to hand its last bytes (the Bye) to the peer.
CLOSE_GRACE = 1.0

# A TLS handshake that takes longer is given up (the connector retries): far above a
# handshake's few round trips, well under the time a server waits for its switch.
TLS_HANDSHAKE_TIMEOUT = 5.0


class AioLink(asyncio.Protocol):
    """One link over one TCP connection; what the application holds to talk on it."""

    def __init__(
        self, endpoint: LinkEndpoint, on_event: OnEvent, loop: asyncio.AbstractEventLoop
    ) -> None:
        self.endpoint = endpoint
        self.peer_address = "?"
        self._on_event = on_event
        self._loop = loop
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._paused = False
        self._local_close = False
        self._flush_soon = False

    # --- for the application ---

    @property
    def peer_name(self) -> str | None:
        return self.endpoint.peer_name

    @property
    def closed(self) -> bool:
        return self.endpoint.closed

    def send(self, msg: msgspec.Struct) -> None:
        """Sends `msg` (dropped if the link is closed; see `LinkEndpoint.send`). The
        messages sent in one turn of the event loop leave in one write, at its end:
        one system call (and one TLS record) for a burst rather than one per message."""
        self.endpoint.send(msg)
        if not self._flush_soon and self._transport is not None:
            self._flush_soon = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_soon = False
        data = self.endpoint.data_to_send()
        transport = self._transport
        if data and transport is not None:
            transport.write(data)
            if self._paused and transport.get_write_buffer_size() > MAX_WRITE_BUFFER:
                self._local_close = True
                self._handle(self.endpoint.close("peer not reading: send buffer full"))

    def accept(self, live: Iterable[LiveInstance] = ()) -> None:
        """After `HelloReceived`: welcome the peer."""
        self._handle(self.endpoint.accept(live, now=self._loop.time()))

    def refuse(self, reason: str) -> None:
        """After `HelloReceived`: turn the peer away."""
        self._local_close = True
        self._handle(self.endpoint.refuse(reason))

    def close(self, reason: str) -> None:
        self._local_close = True
        self._handle(self.endpoint.close(reason))

    # --- asyncio.Protocol ---

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer = transport.get_extra_info("peername")
        if peer:
            self.peer_address = f"{peer[0]}:{peer[1]}"
        self.endpoint.start(self._loop.time())
        self._handle([])

    def data_received(self, data: bytes) -> None:
        self._handle(self.endpoint.receive_data(data, self._loop.time()))

    def eof_received(self) -> bool | None:
        return None  # close our side too; connection_lost reports it

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._cancel_timer()
        reason = "connection lost" if exc is None else f"connection lost: {exc}"
        self._dispatch(self.endpoint.connection_lost(reason))

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False

    # --- internals ---

    def _handle(self, events: list[LinkEvent]) -> None:
        """After any input: write what the endpoint queued, then close or re-arm the
        timer, then hand the events to the application."""
        endpoint = self.endpoint
        data = endpoint.data_to_send()
        transport = self._transport
        if transport is not None:
            if data:
                transport.write(data)
            if endpoint.closed:
                self._transport = None
                self._cancel_timer()
                # close() sends what is buffered (the Bye) first; a peer that stopped
                # reading would keep the socket lingering on it, so it gets a deadline.
                transport.close()
                if transport.get_write_buffer_size():
                    self._loop.call_later(CLOSE_GRACE, transport.abort)
            else:
                self._arm()
        if events:
            self._dispatch(events)

    def _dispatch(self, events: list[LinkEvent]) -> None:
        for event in events:
            if type(event) is Closed:
                log.log(
                    logging.INFO if self._local_close else logging.WARNING,
                    "link with %s (%s) closed: %s",
                    self.peer_address,
                    self.endpoint.peer_name or "unauthenticated",
                    event.reason,
                )
            elif type(event) is Established:
                log.info("link with %s (%s) established", self.peer_address, event.peer_name)
            try:
                self._on_event(self, event)
            except Exception:
                # One message's handler failing must not stop the others on the link.
                log.exception(
                    "link with %s: handler failed on %s", self.peer_address, type(event).__name__
                )

    def _arm(self) -> None:
        deadline = self.endpoint.next_deadline()
        if deadline is None:
            self._cancel_timer()
        elif self._timer is None or deadline < self._timer_at:
            # A timer already due earlier stays: when it fires it re-arms for the rest.
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self._loop.call_at(deadline, self._on_timer)
            self._timer_at = deadline

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_timer(self) -> None:
        self._timer = None
        # The loop may run a callback a hair before its time; never tell the core less.
        now = max(self._loop.time(), self._timer_at)
        self._handle(self.endpoint.handle_timer(now))


async def serve(
    host: str,
    port: int,
    make_endpoint: Callable[[], LinkEndpoint],
    on_event: OnEvent,
    tls: ssl.SSLContext | None = None,
) -> asyncio.Server:
    """Listens for links: each connection gets `make_endpoint()` (an acceptor). With
    `tls`, every connection is TLS first; a failed handshake never reaches an endpoint."""
    loop = asyncio.get_running_loop()
    return await loop.create_server(
        lambda: AioLink(make_endpoint(), on_event, loop),
        host,
        port,
        ssl=tls,
        ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT if tls is not None else None,
    )


async def connect(
    host: str,
    port: int,
    endpoint: LinkEndpoint,
    on_event: OnEvent,
    tls: ssl.SSLContext | None = None,
) -> AioLink:
    """Opens a link for `endpoint` (a connector); OSError if the connection fails (a
    failed TLS handshake, `ssl.SSLError`, is one). With `tls`, the peer's certificate
    must name `host`."""
    loop = asyncio.get_running_loop()
    _, link = await loop.create_connection(
        lambda: AioLink(endpoint, on_event, loop),
        host,
        port,
        ssl=tls,
        server_hostname=host if tls is not None else None,
        ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT if tls is not None else None,
    )
    return link
