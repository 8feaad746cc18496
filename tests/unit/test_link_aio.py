"""The asyncio adapters over real loopback TCP (port 0), on asyncio's loop and uvloop's."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from twinline.link import messages as m
from twinline.link.aio import AioLink, connect, serve
from twinline.link.endpoint import (
    Closed,
    Established,
    HelloReceived,
    LinkEndpoint,
    LinkEvent,
    Received,
)
from twinline.link.framing import FrameDecoder, MessageDecoder, encode

SECRET = b"cluster-secret-0123456789abcdef"

LOOPS: list[Callable[[], asyncio.AbstractEventLoop]] = [asyncio.new_event_loop]
try:
    import uvloop

    LOOPS.append(uvloop.new_event_loop)
except ImportError:  # pragma: no cover - uvloop is not built for every platform
    pass


@pytest.fixture(params=LOOPS, ids=lambda f: f.__module__.split(".")[0])
def run(request: pytest.FixtureRequest) -> Callable[[Coroutine[Any, Any, None]], None]:
    def runner(coro: Coroutine[Any, Any, None]) -> None:
        with asyncio.Runner(loop_factory=request.param) as r:
            r.run(asyncio.wait_for(coro, 5))

    return runner


class Recorder:
    """An `on_event` that keeps the events and lets a test wait for one."""

    def __init__(self, live: list[m.LiveInstance] | None = None) -> None:
        self.events: list[LinkEvent] = []
        self.links: list[AioLink] = []
        self.live = live
        self._changed = asyncio.Event()

    def __call__(self, link: AioLink, event: LinkEvent) -> None:
        self.events.append(event)
        self.links.append(link)
        if isinstance(event, HelloReceived) and self.live is not None:
            link.accept(self.live)
        self._changed.set()

    async def wait_for(self, kind: type, count: int = 1) -> list[LinkEvent]:
        while len(found := [e for e in self.events if isinstance(e, kind)]) < count:
            self._changed.clear()
            await self._changed.wait()
        return found

    def received(self, kind: type) -> list[Any]:
        return [
            e.message for e in self.events if isinstance(e, Received) and type(e.message) is kind
        ]


def switch_endpoint(**kw: Any) -> LinkEndpoint:
    return LinkEndpoint(
        "acceptor", secret=SECRET, name="switch", incarnation=1, receives=m.CtlToSwitch, **kw
    )


def server_endpoint(secret: bytes = SECRET, **kw: Any) -> LinkEndpoint:
    return LinkEndpoint(
        "connector", secret=secret, name="as1", incarnation=9, receives=m.CtlToServer, **kw
    )


def port_of(server: asyncio.Server) -> int:
    return int(server.sockets[0].getsockname()[1])


def test_handshake_and_messages_over_tcp(run: Callable[..., None]) -> None:
    live = [m.LiveInstance("c-1", 4, "primary")]

    async def main() -> None:
        switch = Recorder(live=live)
        server = await serve(
            "127.0.0.1", 0, lambda: switch_endpoint(heartbeat_interval=0.02), switch
        )
        appserver = Recorder()
        link = await connect(
            "127.0.0.1", port_of(server), server_endpoint(heartbeat_interval=0.02), appserver
        )
        (established,) = await appserver.wait_for(Established)
        assert isinstance(established, Established)
        assert established.peer_name == "switch"
        assert isinstance(established.message, m.Welcome)
        assert established.message.live == live
        assert link.peer_name == "switch"

        commands = [
            m.Command(call="c-1", epoch=4, seq=n, action=m.Route(destinations=["2001"]))
            for n in range(1, 4)
        ]
        for cmd in commands:
            link.send(cmd)
        await switch.wait_for(Received, 3)
        assert switch.received(m.Command) == commands
        to_server = switch.links[-1]
        assert to_server.peer_name == "as1"
        event = m.Event(call="c-1", seq=1, kind="answered", at=1.0)
        to_server.send(event)
        while event not in appserver.received(m.Event):
            await appserver.wait_for(Received, len(appserver.events))

        # Heartbeats keep it up both ways (5 intervals, while 3 would kill it).
        await asyncio.sleep(0.1)
        assert link.endpoint.established and to_server.endpoint.established
        assert len(appserver.received(m.Heartbeat)) >= 2
        assert len(switch.received(m.Heartbeat)) >= 2

        link.close("shutting down")
        (closed,) = await switch.wait_for(Closed)
        assert closed == Closed("peer closed: shutting down")
        assert appserver.events[-1] == Closed("shutting down")
        server.close()
        await server.wait_closed()

    run(main())


def test_wrong_secret_the_server_closes_and_the_client_sees_it(
    run: Callable[..., None], caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        switch = Recorder(live=[])
        server = await serve("127.0.0.1", 0, switch_endpoint, switch)
        appserver = Recorder()
        link = await connect(
            "127.0.0.1",
            port_of(server),
            server_endpoint(b"wrong-secret-wrong-secret-wrong"),
            appserver,
        )
        (closed,) = await appserver.wait_for(Closed)
        assert closed == Closed("peer closed: authentication failed for 'as1'")
        assert link.closed
        (server_closed,) = await switch.wait_for(Closed)
        assert switch.events == [server_closed]  # no HelloReceived, nothing else
        link.send(m.Heartbeat(sent_at=0.0))  # dropped, no error
        server.close()
        await server.wait_closed()

    with caplog.at_level(logging.INFO, logger="twinline.link"):
        run(main())
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(
        "127.0.0.1:" in w and "closed: authentication failed for 'as1'" in w for w in warnings
    )


def test_a_silent_client_is_dropped_after_the_handshake_timeout(run: Callable[..., None]) -> None:
    async def main() -> None:
        switch = Recorder(live=[])
        server = await serve(
            "127.0.0.1", 0, lambda: switch_endpoint(handshake_timeout=0.05), switch
        )
        reader, writer = await asyncio.open_connection("127.0.0.1", port_of(server))
        data = await reader.read()  # until the server closes
        writer.close()
        decoder = MessageDecoder(m.CtlToServer, "any")
        sent = [decoder.decode(f) for f in FrameDecoder().feed(data)]
        assert [type(s) for s in sent] == [m.Challenge, m.Bye]
        assert switch.events == [Closed("handshake not completed in 0.05 s")]
        server.close()
        await server.wait_closed()

    run(main())


def test_a_client_that_skips_the_handshake_gets_nothing_through(run: Callable[..., None]) -> None:
    async def main() -> None:
        switch = Recorder(live=[])
        server = await serve("127.0.0.1", 0, switch_endpoint, switch)
        reader, writer = await asyncio.open_connection("127.0.0.1", port_of(server))
        writer.write(encode(m.Command(call="c", epoch=1, seq=1, action=m.Release())))
        await reader.read()
        writer.close()
        (closed,) = await switch.wait_for(Closed)
        assert isinstance(closed, Closed) and "Invalid value 'command'" in closed.reason
        assert switch.events == [closed]
        server.close()
        await server.wait_closed()

    run(main())


def test_connection_lost_without_bye(run: Callable[..., None]) -> None:
    async def main() -> None:
        switch = Recorder(live=[])
        server = await serve("127.0.0.1", 0, switch_endpoint, switch)
        appserver = Recorder()
        link = await connect("127.0.0.1", port_of(server), server_endpoint(), appserver)
        await switch.wait_for(Established)
        await appserver.wait_for(Established)
        assert link._transport is not None
        link._transport.abort()  # the process vanished: no Bye
        (closed,) = await switch.wait_for(Closed)
        assert isinstance(closed, Closed) and closed.reason.startswith("connection lost")
        server.close()
        await server.wait_closed()

    run(main())


def test_a_failing_handler_does_not_stop_the_link(
    run: Callable[..., None], caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        switch = Recorder(live=[])

        def on_event(link: AioLink, event: LinkEvent) -> None:
            switch(link, event)
            if isinstance(event, Received) and getattr(event.message, "seq", 0) == 1:
                raise RuntimeError("service bug")

        server = await serve("127.0.0.1", 0, switch_endpoint, on_event)
        appserver = Recorder()
        link = await connect("127.0.0.1", port_of(server), server_endpoint(), appserver)
        await appserver.wait_for(Established)
        link.send(m.Command(call="c", epoch=1, seq=1, action=m.Release()))
        link.send(m.Command(call="c", epoch=1, seq=2, action=m.Release()))
        await switch.wait_for(Received, 2)
        assert [c.seq for c in switch.received(m.Command)] == [1, 2]
        link.close("done")
        server.close()
        await server.wait_closed()

    run(main())
    assert any("handler failed on Received" in r.getMessage() for r in caplog.records)


class PipeTransport(asyncio.Transport):
    """One end of an in-memory pipe between two links: what it is given to write
    reaches the other link on the next turn of the loop, and each write is counted."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self.loop = loop
        self.peer: AioLink | None = None
        self.writes: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))
        assert self.peer is not None
        self.loop.call_soon(self.peer.data_received, bytes(data))

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 5062) if name == "peername" else default

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass


def test_the_messages_of_one_loop_turn_leave_in_one_write() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        switch, appserver = Recorder(live=[]), Recorder()
        to_server, to_switch = PipeTransport(loop), PipeTransport(loop)
        switch_link = AioLink(switch_endpoint(), switch, loop)
        link = AioLink(server_endpoint(), appserver, loop)
        to_server.peer, to_switch.peer = link, switch_link
        switch_link.connection_made(to_server)
        link.connection_made(to_switch)
        await appserver.wait_for(Established)
        before = len(to_switch.writes)
        commands = [
            m.Command(call=f"c-{n}", epoch=1, seq=n, action=m.Route(destinations=["2001"]))
            for n in range(10)
        ]
        for cmd in commands:
            link.send(cmd)
        assert len(to_switch.writes) == before  # nothing yet: the burst is still being made
        while len(switch.received(m.Command)) < 10:
            seen = sum(isinstance(e, Received) for e in switch.events)
            await switch.wait_for(Received, seen + 1)
        # Then all ten in one write (a heartbeat may have gone on its own meanwhile).
        commands_writes = [w for w in to_switch.writes[before:] if len(w) > 100]
        assert len(commands_writes) == 1, to_switch.writes[before:]
        assert switch.received(m.Command) == commands

    asyncio.run(main())
