"""The switch process before its core exists: the listeners open first (the core needs
their addresses), and a datagram that arrives in that instant must not crash it."""

from __future__ import annotations

from twinline.config import Config
from twinline.switch.server import SwitchServer

INVITE = b"INVITE sip:1000@127.0.0.1 SIP/2.0\r\nContent-Length: 0\r\n\r\n"


def test_a_message_before_the_core_exists_is_dropped_not_a_crash() -> None:
    switch = SwitchServer(Config())
    assert switch.core is None
    switch._deliver(INVITE, ("udp", "127.0.0.1", 5070), False)
    switch._failed(("udp", "127.0.0.1", 5070))
