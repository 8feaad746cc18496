"""Host names resolved off the event loop, cached by TTL, failures cached for a while."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from twinline.sip.message import Limits
from twinline.sip.resolver import Resolved, Resolver, getaddrinfo_lookup
from twinline.sip.transport import SipTransports

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
            r.run(asyncio.wait_for(coro, 10))

    return runner


class FakeDns:
    """A lookup the test answers by hand: each name waits until `answer` or `fail`."""

    def __init__(self) -> None:
        self.asked: list[str] = []
        self.pending: dict[str, asyncio.Future[list[str]]] = {}

    async def __call__(self, host: str) -> list[str]:
        self.asked.append(host)
        future: asyncio.Future[list[str]] = asyncio.get_running_loop().create_future()
        self.pending[host] = future
        return await future

    def answer(self, host: str, *addresses: str) -> None:
        self.pending.pop(host).set_result(list(addresses))

    def fail(self, host: str) -> None:
        self.pending.pop(host).set_exception(socket.gaierror(socket.EAI_NONAME, "unknown"))


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def until(condition: Callable[[], bool], within: float = 3.0) -> None:
    """Wait for `condition` (timers under a loaded machine fire late, never early)."""
    deadline = asyncio.get_running_loop().time() + within
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def collect() -> tuple[list[Resolved | None], Callable[[Resolved | None], None]]:
    got: list[Resolved | None] = []
    return got, got.append


def test_literals_are_known_at_once_without_a_lookup() -> None:
    dns = FakeDns()
    r = Resolver(dns)
    assert r.cached("127.0.0.1") == ("127.0.0.1", socket.AF_INET)
    assert r.cached("::1") == ("::1", socket.AF_INET6)
    assert r.cached("pbx.example") is None
    assert dns.asked == []


def test_waiters_share_one_lookup_and_are_answered_later(run) -> None:  # type: ignore[no-untyped-def]
    async def main() -> None:
        dns = FakeDns()
        r = Resolver(dns)
        got, then = collect()
        r.resolve("pbx.example", then)
        r.resolve("pbx.example", then)
        assert got == []  # never answered inside resolve()
        await settle()
        assert dns.asked == ["pbx.example"]
        dns.answer("pbx.example", "192.0.2.10")
        await settle()
        assert got == [("192.0.2.10", socket.AF_INET)] * 2
        assert r.cache["pbx.example"] == ("192.0.2.10", socket.AF_INET)
        r.resolve("pbx.example", then)  # cached: answered on the next loop turn
        assert len(got) == 2
        await settle()
        assert len(got) == 3 and dns.asked == ["pbx.example"]
        r.close()

    run(main())


def test_answers_expire_after_the_ttl(run) -> None:  # type: ignore[no-untyped-def]
    async def main() -> None:
        dns = FakeDns()
        r = Resolver(dns, ttl=0.05)
        got, then = collect()
        r.resolve("pbx.example", then)
        await settle()
        dns.answer("pbx.example", "2001:db8::5")
        await settle()
        assert got == [("2001:db8::5", socket.AF_INET6)]
        started = asyncio.get_running_loop().time()
        await until(lambda: "pbx.example" not in r.cache)
        assert asyncio.get_running_loop().time() - started >= 0.04
        r.resolve("pbx.example", then)
        await settle()
        assert dns.asked == ["pbx.example", "pbx.example"]
        dns.answer("pbx.example", "2001:db8::6")
        await settle()
        assert got[-1] == ("2001:db8::6", socket.AF_INET6)
        r.close()

    run(main())


def test_failures_are_cached_for_the_negative_ttl_only(run) -> None:  # type: ignore[no-untyped-def]
    async def main() -> None:
        dns = FakeDns()
        r = Resolver(dns, negative_ttl=0.5)
        got, then = collect()
        r.resolve("nowhere.example", then)
        await settle()
        dns.fail("nowhere.example")
        await settle()
        assert got == [None] and r.failures == 1
        r.resolve("nowhere.example", then)  # within the negative TTL: no new lookup
        await settle()
        assert got == [None, None] and dns.asked == ["nowhere.example"]
        await until(lambda: "nowhere.example" not in r.failed)
        r.resolve("nowhere.example", then)
        await settle()
        assert dns.asked == ["nowhere.example"] * 2
        dns.answer("nowhere.example", "192.0.2.1")
        await settle()
        assert got[-1] == ("192.0.2.1", socket.AF_INET)
        r.close()

    run(main())


def test_a_lookup_without_an_answer_fails_at_the_timeout(run) -> None:  # type: ignore[no-untyped-def]
    async def main() -> None:
        dns = FakeDns()
        r = Resolver(dns, timeout=0.05)
        got, then = collect()
        r.resolve("slow.example", then)
        await until(lambda: bool(got))
        assert got == [None]
        assert "slow.example" in r.failed
        r.close()

    run(main())


def test_the_system_resolver_runs_off_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    # asyncio's loop.getaddrinfo calls socket.getaddrinfo in a worker thread: a slow
    # resolver there must not stop the loop (it did when called from send()).
    real = socket.getaddrinfo

    def slow(*args: Any, **kwargs: Any) -> Any:
        time.sleep(0.3)
        return real("127.0.0.1", None, proto=socket.IPPROTO_UDP)

    monkeypatch.setattr(socket, "getaddrinfo", slow)

    async def main() -> None:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        task = asyncio.create_task(ticker())
        assert await getaddrinfo_lookup("pbx.example") == ["127.0.0.1"]
        task.cancel()
        # Blocked, the loop would not tick at all while the lookup sleeps.
        assert ticks >= 3

    asyncio.run(main())


def test_the_system_resolver_answers_localhost(run) -> None:  # type: ignore[no-untyped-def]
    async def main() -> None:
        addresses = await getaddrinfo_lookup("localhost")
        assert addresses and set(addresses) <= {"127.0.0.1", "::1"}

    run(main())


def test_a_send_to_a_name_waits_for_it_and_a_failure_is_reported_after_send(run) -> None:  # type: ignore[no-untyped-def]
    async def main() -> None:
        loop = asyncio.get_running_loop()
        received: asyncio.Queue[bytes] = asyncio.Queue()

        class Sink(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: Any) -> None:
                received.put_nowait(data)

        sink, _ = await loop.create_datagram_endpoint(Sink, local_addr=("127.0.0.1", 0))
        port = sink.get_extra_info("sockname")[1]
        dns = FakeDns()
        failed: list[tuple[str, str, int]] = []
        transports = SipTransports(
            lambda *a: None, failed.append, Limits(), resolver=Resolver(dns, negative_ttl=5)
        )
        await transports.listen("udp", "127.0.0.1", 0)
        transports.send(("udp", "pbx.example", port), b"first")
        transports.send(("udp", "pbx.example", port), b"second")
        await settle()
        assert received.empty() and dns.asked == ["pbx.example"]
        dns.answer("pbx.example", "127.0.0.1")
        assert await received.get() == b"first"
        assert await received.get() == b"second"
        transports.send(("udp", "pbx.example", port), b"third")  # cached: no new lookup
        assert await asyncio.wait_for(received.get(), 1) == b"third"
        assert dns.asked == ["pbx.example"]

        transports.send(("udp", "nowhere.example", 5060), b"lost")
        await settle()
        dns.fail("nowhere.example")
        await settle()
        assert failed == [("udp", "nowhere.example", 5060)]
        transports.send(("udp", "nowhere.example", 5060), b"lost again")
        assert failed == [("udp", "nowhere.example", 5060)]  # not inside send()
        await settle()
        assert failed == [("udp", "nowhere.example", 5060)] * 2
        assert dns.asked == ["pbx.example", "nowhere.example"]
        transports.close()
        sink.close()

    run(main())


@pytest.mark.parametrize("key", ["ttl", "negative_ttl", "timeout"])
@pytest.mark.parametrize("value", ["0", "-1", "1e9"])
def test_dns_settings_out_of_range_are_config_errors(key: str, value: str) -> None:
    from twinline.config import ConfigError, load_config_text

    with pytest.raises(ConfigError, match=rf"^switch\.dns\.{key}: "):
        load_config_text(f"[switch.dns]\n{key} = {value}\n")


def test_lookups_in_flight_are_bounded(run) -> None:  # type: ignore[no-untyped-def]
    async def main() -> None:
        dns = FakeDns()
        r = Resolver(dns, max_pending=2)
        got, then = collect()
        for name in ("a.example", "b.example", "c.example"):
            r.resolve(name, then)
        await settle()
        assert dns.asked == ["a.example", "b.example"]
        assert got == [None]  # the third name failed at once...
        assert "c.example" not in r.failed  # ...without being remembered as failed
        r.resolve("a.example", then)  # joins the lookup under way
        dns.answer("a.example", "192.0.2.1")
        await settle()
        assert got[1:] == [("192.0.2.1", socket.AF_INET)] * 2
        r.resolve("c.example", then)  # room again
        await settle()
        assert dns.asked == ["a.example", "b.example", "c.example"]
        r.close()

    run(main())


def test_a_name_resolves_to_an_address_of_a_family_the_switch_has(run) -> None:  # type: ignore[no-untyped-def]
    async def main() -> None:
        dns = FakeDns()
        r = Resolver(dns)
        r.families.add(socket.AF_INET)
        got, then = collect()
        r.resolve("trunk.example", then)
        r.resolve("v6only.example", then)
        await settle()
        dns.answer("trunk.example", "2001:db8::1", "192.0.2.1")
        dns.answer("v6only.example", "2001:db8::2")  # none of ours: the first, as before
        await settle()
        assert got == [("192.0.2.1", socket.AF_INET), ("2001:db8::2", socket.AF_INET6)]
        r.close()

    run(main())
