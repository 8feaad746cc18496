"""A banned address's stream connections are closed (SipTransports.disconnect)."""

from __future__ import annotations

import asyncio

from twinline.sip.message import Limits
from twinline.sip.transport import SipTransports


def test_disconnect_closes_the_hosts_stream_connections_only() -> None:
    async def go() -> tuple[int, bytes, int]:
        transports = SipTransports(lambda *a: None, lambda a: None, Limits())
        _, port = await transports.listen("tcp", "127.0.0.1", 0)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(100):
            if transports.tcp:
                break
            await asyncio.sleep(0.01)
        none = transports.disconnect("198.51.100.7")
        closed = transports.disconnect("127.0.0.1")
        data = await asyncio.wait_for(reader.read(100), timeout=5)  # b"": closed by the switch
        writer.close()
        transports.close()
        return none, data, closed

    none, data, closed = asyncio.run(go())
    assert (none, data, closed) == (0, b"", 1)
