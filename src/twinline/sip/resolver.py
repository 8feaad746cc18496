"""Host names to addresses, off the event loop, cached for a time.

Targets, trunks and Contacts may name hosts. `socket.getaddrinfo` blocks for as long as
the system's resolver takes (seconds when a DNS server is down), and on the event loop
that stalls every call, so names are looked up with `loop.getaddrinfo` (a worker
thread; libuv's pool under uvloop) and the answer kept in `cache`, which the transport
reads directly: a send to a known host costs one dict lookup, as before.

getaddrinfo does not return the record's TTL, so an answer is kept for a configured
time (`switch.dns.ttl`, 60 s by default: short enough to follow a trunk that moves,
long enough that lookups stay rare) and then dropped, so the next send looks the name
up again. A failure (no such name, no answer within `switch.dns.timeout`) is kept for
`switch.dns.negative_ttl` (10 s by default), during which sends to that name fail at
once instead of piling up lookups. Address literals are parsed once and kept until the
cache is full (they never change). Entries expire by loop timers, not by a time check
on each send.

At most `max_pending` names are looked up at once: a lookup that hangs holds a worker
thread until the system resolver gives up (it cannot be cancelled), so a peer that
makes the switch look up many names that never answer (Contacts in registrations, say)
could otherwise tie up the pool that every other lookup needs. Past the bound, a new
name fails at once (without being remembered as failed) until lookups finish.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import Awaitable, Callable, Sequence

log = logging.getLogger("twinline.sip.resolver")

# (address, socket family)
Resolved = tuple[str, int]
Lookup = Callable[[str], Awaitable[Sequence[str]]]
Then = Callable[[Resolved | None], None]

DEFAULT_TTL = 60.0
DEFAULT_NEGATIVE_TTL = 10.0
DEFAULT_TIMEOUT = 5.0
CACHE_SIZE = 65536
# Well under the default thread pool's workers times the lookups each finishes per
# timeout; far above the few names a switch's routes and phones use.
MAX_PENDING = 64


def family_of(address: str) -> int:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def literal(host: str) -> Resolved | None:
    """An IPv4 or IPv6 address written out, or None for a name."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    return str(address), socket.AF_INET6 if address.version == 6 else socket.AF_INET


async def getaddrinfo_lookup(host: str) -> list[str]:
    """The addresses the system resolver gives for `host`, in its order, from a worker
    thread."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, None, proto=socket.IPPROTO_UDP)
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if not addresses:
        raise OSError(f"no address for {host}")
    return addresses


class Resolver:
    """Resolves names once per TTL, shares one lookup among the sends waiting for it."""

    def __init__(
        self,
        lookup: Lookup = getaddrinfo_lookup,
        *,
        ttl: float = DEFAULT_TTL,
        negative_ttl: float = DEFAULT_NEGATIVE_TTL,
        timeout: float = DEFAULT_TIMEOUT,
        max_entries: int = CACHE_SIZE,
        max_pending: int = MAX_PENDING,
    ) -> None:
        self.lookup = lookup
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self.timeout = timeout
        self.max_entries = max_entries
        self.max_pending = max_pending
        # Read by the transport on every send; never rebound, only changed in place.
        self.cache: dict[str, Resolved] = {}
        self.failed: set[str] = set()
        self._expiry: dict[str, asyncio.TimerHandle] = {}
        self._waiting: dict[str, list[Then]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        # The address families the switch has sockets for (the transport adds them as
        # it listens): a name's first address of one of these is taken, so a trunk whose
        # name gives IPv6 first is still reached from a switch that listens on IPv4 only.
        self.families: set[int] = set()
        self.lookups = 0
        self.failures = 0

    def cached(self, host: str) -> Resolved | None:
        """The address of `host` if it is known now (a literal is learnt on the spot)."""
        resolved = self.cache.get(host)
        if resolved is None:
            resolved = literal(host)
            if resolved is not None:
                self._store(host, resolved, None)
        return resolved

    def resolve(self, host: str, then: Then) -> None:
        """Call `then` with the address of `host`, or None if it cannot be resolved;
        never before returning (the caller may be in the middle of a transaction)."""
        loop = asyncio.get_running_loop()
        resolved = self.cached(host)
        if resolved is not None or host in self.failed:
            loop.call_soon(then, resolved)
            return
        waiting = self._waiting.get(host)
        if waiting is not None:
            waiting.append(then)
            return
        if len(self._waiting) >= self.max_pending:
            self.failures += 1
            loop.call_soon(then, None)
            return
        self._waiting[host] = [then]
        task = loop.create_task(self._lookup(host))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _lookup(self, host: str) -> None:
        self.lookups += 1
        resolved: Resolved | None = None
        try:
            addresses = await asyncio.wait_for(self.lookup(host), self.timeout)
            if not addresses:
                raise OSError(f"no address for {host}")
            usable = [a for a in addresses if family_of(a) in self.families]
            address = (usable or addresses)[0]
            resolved = (address, family_of(address))
        except (OSError, TimeoutError, UnicodeError, ValueError) as e:
            # UnicodeError: a name the IDNA codec refuses (a label over 63 characters).
            self.failures += 1
            log.warning("cannot resolve %s: %s", host, e or type(e).__name__)
        if resolved is not None:
            self._store(host, resolved, self.ttl)
        else:
            self._fail(host)
        for then in self._waiting.pop(host, []):
            then(resolved)

    def _store(self, host: str, resolved: Resolved, ttl: float | None) -> None:
        if len(self.cache) >= self.max_entries:
            self.clear()  # one entry per peer host: bounded, rebuilt on demand
        self.cache[host] = resolved
        if ttl is not None:
            self._expire_after(host, ttl)

    def _fail(self, host: str) -> None:
        if len(self.failed) >= self.max_entries:
            self.clear()
        self.failed.add(host)
        self._expire_after(host, self.negative_ttl)

    def _expire_after(self, host: str, delay: float) -> None:
        old = self._expiry.pop(host, None)
        if old is not None:
            old.cancel()
        self._expiry[host] = asyncio.get_running_loop().call_later(delay, self._expire, host)

    def _expire(self, host: str) -> None:
        self._expiry.pop(host, None)
        self.cache.pop(host, None)
        self.failed.discard(host)

    def clear(self) -> None:
        for handle in self._expiry.values():
            handle.cancel()
        self._expiry.clear()
        self.cache.clear()
        self.failed.clear()

    def close(self) -> None:
        self.clear()
        for task in self._tasks:
            task.cancel()
        self._waiting.clear()
