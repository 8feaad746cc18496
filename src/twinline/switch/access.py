"""Who may call what: trusted sources, digest authentication of requests, and the
admission of new calls with their per-user and per-trunk limits. Sans-IO.

A new INVITE is decided in this order (`Admission.admit`):

1. its source address is one of a trunk's `sources`: the trunk's call, not
   challenged, free to reach any route;
2. it carries credentials for our realm (Proxy-Authorization): they must verify, and
   the authenticated user must be the From user (else 403 saying so);
3. no credentials, and From names a local user: challenged (407), since a local
   user's identity is never taken on its word;
4. anyone else may reach what the operator opened to the public (the local users
   when `access.public_users`, numbers starting with an `access.public_numbers`
   prefix) and gets, for anything else, a challenge or 403 (`access.unknown_callers`).

Then a user's or trunk's limits on calls up at once and started per minute.
An unknown user and a wrong password get the same answer (403); a stale nonce gets a
new challenge with stale=true. ACK and CANCEL never come here (RFC 3261 22.1).
"""

from __future__ import annotations

import ipaddress
import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from twinline.config import Config
from twinline.sip.digest import (
    AuthFailure,
    CredentialsError,
    DigestAuthenticator,
    Ha1,
    parse_credentials,
)
from twinline.sip.message import Request
from twinline.sip.transaction import Address
from twinline.switch.flood import block

__all__ = [
    "Admission",
    "Admitted",
    "CallLimits",
    "DigestGate",
    "Refusal",
    "TrustedSources",
    "secrets_of",
    "service_headers",
]

Secret = str | Ha1

# What services get from the caller's INVITE (CallInfo.headers). P-Asserted-Identity
# only from a trunk: from anyone else it is an unverified claim (RFC 3325 5).
SERVICE_HEADERS = ("P-Asserted-Identity", "Privacy", "Diversion", "History-Info", "Max-Forwards")
ASSERTED = frozenset(["P-Asserted-Identity"])


@dataclass(frozen=True, slots=True)
class Refusal:
    """A final response refusing a request."""

    status: int
    reason: str
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Admitted:
    """A call let in: who is calling, for the services and the limits."""

    user: str = ""  # the authenticated local user, or ""
    trunk: str = ""  # the trunk it came from, or ""


class Failures(Protocol):
    """Where refusals are counted and logged (`FloodGuard`)."""

    def failed(self, source: Address, user: str | None, what: str, now: float) -> None: ...

    def user_locked(self, user: str, now: float) -> bool: ...


class _LogOnly:
    def failed(self, source: Address, user: str | None, what: str, now: float) -> None:
        block(source, what)

    def user_locked(self, user: str, now: float) -> bool:
        return False


def secrets_of(config: Config) -> dict[str, Secret]:
    """Each user's password, or its HA1 hashes, as `DigestAuthenticator.verify` takes them."""
    out: dict[str, Secret] = {}
    for user in config.users:
        if user.password:
            out[user.name] = user.password
        else:
            hashes = {"MD5": user.ha1_md5, "SHA-256": user.ha1_sha256}
            out[user.name] = Ha1({k: v.lower() for k, v in hashes.items() if v})
    return out


class TrustedSources:
    """Which trunk, if any, an address belongs to (its `sources`)."""

    # Answers are cached per address string; the cache is dropped whole past this size.
    CACHE_SIZE = 4096

    def __init__(self, sources: Mapping[str, list[str]]) -> None:
        """`sources` maps a trunk's name to its addresses and networks."""
        self._networks: list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str]] = []
        for name, texts in sources.items():
            for text in texts:
                self._networks.append((ipaddress.ip_network(text), name))
        # Narrowest network first, so that a PBX inside a carrier's range is the PBX.
        self._networks.sort(key=lambda pair: -pair[0].prefixlen)
        self._cache: dict[str, str | None] = {}

    @classmethod
    def from_config(cls, config: Config) -> TrustedSources:
        return cls({t.name: t.sources for t in config.trunks})

    def trunk_of(self, host: str) -> str | None:
        cache = self._cache
        if host in cache:
            return cache[host]
        found = self._lookup(host)
        if len(cache) >= self.CACHE_SIZE:
            cache.clear()
        cache[host] = found
        return found

    def is_trusted(self, host: str) -> bool:
        return self.trunk_of(host) is not None

    def _lookup(self, host: str) -> str | None:
        if not self._networks:
            return None
        try:
            address = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return None
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        for network, name in self._networks:
            if address.version == network.version and address in network:
                return name
        return None


class DigestGate:
    """Digest authentication of one request against the users' secrets (RFC 3261 22):
    REGISTER with Authorization and 401, other requests with Proxy-Authorization and
    407. The registrar and the admission of calls share it, and its nonces."""

    def __init__(
        self,
        authenticator: DigestAuthenticator,
        secrets: Mapping[str, Secret],
        failures: Failures | None = None,
    ) -> None:
        self.authenticator = authenticator
        self.secrets = secrets
        self.failures: Failures = failures if failures is not None else _LogOnly()

    def check(self, req: Request, source: Address, now: float, *, proxy: bool) -> str | Refusal:
        """The authenticated user name, or the response refusing the request: a
        challenge (401 or 407), 403 for wrong credentials, 400 for unreadable ones."""
        header = "Proxy-Authorization" if proxy else "Authorization"
        realm = self.authenticator.realm
        ours = None
        for value in req.get_all(header):
            try:
                creds = parse_credentials(value, header=header)
            except CredentialsError as e:
                return Refusal(400, e.reason)
            # Credentials for other realms (or schemes) are someone else's (22.3, 22.4).
            if ours is None and creds.is_digest and creds.realm == realm:
                ours = creds
        if ours is None:
            return self.challenge(now, proxy=proxy)
        user = ours.username
        known = user in self.secrets
        if known and self.failures.user_locked(user, now):
            self.failures.failed(
                source, None, f"{req.method} authentication of {user!r} refused: user locked", now
            )
            return Refusal(403, "Forbidden")
        result = self.authenticator.verify(req.method, ours, self.secrets.get, now)
        if result.ok:
            return result.username
        if result.failure in (AuthFailure.WRONG_RESPONSE, AuthFailure.NO_SUCH_USER):
            # The same answer for both, so that the answers do not list the users.
            what = f"{req.method} authentication of {user!r} failed"
            self.failures.failed(source, user if known else None, what, now)
            return Refusal(403, "Forbidden")
        # Stale or replayed nonce: stale=true; a nonce not ours, or an algorithm or qop
        # we do not do: a fresh challenge that says what we do.
        return self.challenge(now, proxy=proxy, stale=result.stale)

    def challenge(self, now: float, *, proxy: bool, stale: bool = False) -> Refusal:
        values = self.authenticator.challenge(now, stale=stale)
        if proxy:
            return Refusal(
                407,
                "Proxy Authentication Required",
                tuple(("Proxy-Authenticate", v) for v in values),
            )
        return Refusal(401, "Unauthorized", tuple(("WWW-Authenticate", v) for v in values))


@dataclass(frozen=True, slots=True)
class Limit:
    max_calls: int  # up at once; 0: none
    per_minute: int  # started in any 60 s; 0: none
    status: int  # the answer to a call past `max_calls`: 403 (a user) or 503 (a trunk)
    key: str  # the configuration key, for the log


@dataclass(slots=True)
class _Usage:
    up: int = 0
    started: deque[float] | None = None  # start times within the last minute


class CallLimits:
    """Calls up at once and started per minute, per user and per trunk."""

    def __init__(self, limits: Mapping[str, Limit]) -> None:
        """`limits` is keyed "user:NAME" and "trunk:NAME"."""
        self.limits = limits
        self._usage: dict[str, _Usage] = {}

    @classmethod
    def from_config(cls, config: Config) -> CallLimits:
        limits: dict[str, Limit] = {}
        for i, u in enumerate(config.users):
            limits[f"user:{u.name}"] = Limit(u.max_calls, u.calls_per_minute, 403, f"users[{i}]")
        for i, t in enumerate(config.trunks):
            limits[f"trunk:{t.name}"] = Limit(t.max_calls, t.calls_per_minute, 503, f"trunks[{i}]")
        return cls(limits)

    def start(self, key: str, now: float) -> tuple[Refusal, str] | None:
        """Count a call starting for `key`, or refuse it: (the response, why)."""
        limit = self.limits.get(key)
        if limit is None:
            return None
        usage = self._usage.get(key)
        if usage is None:
            usage = self._usage[key] = _Usage()
        if limit.max_calls and usage.up >= limit.max_calls:
            why = f"{usage.up} calls up ({limit.key}.max_calls)"
            if limit.status == 503:
                return Refusal(503, "Too Many Calls", (("Retry-After", "5"),)), why
            return Refusal(403, "Too Many Calls"), why
        if limit.per_minute:
            started = usage.started
            if started is None:
                started = usage.started = deque()
            while started and started[0] <= now - 60.0:
                started.popleft()
            if len(started) >= limit.per_minute:
                wait = max(1, math.ceil(started[0] + 60.0 - now))
                why = f"{len(started)} calls in the last minute ({limit.key}.calls_per_minute)"
                return Refusal(503, "Call Rate Too High", (("Retry-After", str(wait)),)), why
            started.append(now)
        usage.up += 1
        return None

    def end(self, key: str) -> None:
        usage = self._usage.get(key)
        if usage is None:
            return
        usage.up -= 1
        if usage.up <= 0 and not usage.started:
            del self._usage[key]

    def up(self, key: str) -> int:
        usage = self._usage.get(key)
        return usage.up if usage is not None else 0


@dataclass(slots=True)
class AccessStats:
    trunk_calls: int = 0  # admitted from a trunk's source
    user_calls: int = 0  # admitted with a local user's credentials
    public_calls: int = 0  # admitted unauthenticated to a public destination
    challenged: int = 0  # answered 407
    refused: int = 0  # answered 403 or 400 (credentials, From, destination)
    limited: int = 0  # refused by a user's or trunk's limits


class Admission:
    """The decision on each new INVITE (see the module docstring)."""

    def __init__(
        self,
        config: Config,
        gate: DigestGate,
        trusted: TrustedSources,
        limits: CallLimits,
    ) -> None:
        access = config.access
        self.gate = gate
        self.trusted = trusted
        self.limits = limits
        self.users = frozenset(u.name for u in config.users)
        self.public_users = access.public_users
        self.public_numbers = tuple(access.public_numbers)
        self.challenge_unknown = access.unknown_callers == "challenge"
        self.stats = AccessStats()

    def admit(
        self, req: Request, source: Address, dialled: str, from_user: str, now: float
    ) -> Admitted | Refusal:
        """Let a new call in, or refuse it. `from_user` is the From URI's user part,
        %-escapes undone. An admitted call must be given back to `ended`."""
        trunk = self.trusted.trunk_of(source[1])
        if trunk is not None:
            return self._limited(Admitted(trunk=trunk), f"trunk:{trunk}", source, now)
        stats = self.stats
        if req.get("Proxy-Authorization") is not None:
            outcome = self.gate.check(req, source, now, proxy=True)
            if isinstance(outcome, Refusal):
                self._count(outcome)
                return outcome
            if outcome != from_user:
                stats.refused += 1
                self.gate.failures.failed(
                    source, None,
                    f"INVITE from {from_user!r} by authenticated user {outcome!r} refused", now,
                )  # fmt: skip
                return Refusal(403, "From Does Not Match Authenticated User")
            return self._limited(Admitted(user=outcome), f"user:{outcome}", source, now)
        if from_user in self.users:
            stats.challenged += 1
            return self.gate.challenge(now, proxy=True)
        if (self.public_users and dialled in self.users) or (
            self.public_numbers and dialled.startswith(self.public_numbers)
        ):
            stats.public_calls += 1
            return Admitted()
        if self.challenge_unknown:
            stats.challenged += 1
            return self.gate.challenge(now, proxy=True)
        stats.refused += 1
        self.gate.failures.failed(
            source, None, f"INVITE to {dialled!r} refused: not public, caller unknown", now
        )
        return Refusal(403, "Forbidden")

    def _count(self, refusal: Refusal) -> None:
        if refusal.status == 407:
            self.stats.challenged += 1
        else:
            self.stats.refused += 1

    def _limited(
        self, admitted: Admitted, key: str, source: Address, now: float
    ) -> Admitted | Refusal:
        refused = self.limits.start(key, now)
        if refused is None:
            if admitted.trunk:
                self.stats.trunk_calls += 1
            else:
                self.stats.user_calls += 1
            return admitted
        refusal, why = refused
        self.stats.limited += 1
        block(source, f"INVITE of {key} refused ({refusal.status}): {why}")
        return refusal

    def ended(self, user: str, trunk: str) -> None:
        """A call let in by `admit` (as `user` or from `trunk`) is over."""
        if trunk:
            self.limits.end(f"trunk:{trunk}")
        elif user:
            self.limits.end(f"user:{user}")


def service_headers(req: Request, *, trusted: bool) -> dict[str, str]:
    """The caller's headers services may need (CallInfo.headers); a header's several
    values are joined with ", " in their order."""
    out: dict[str, str] = {}
    for name in SERVICE_HEADERS:
        if name in ASSERTED and not trusted:
            continue
        values = req.get_all(name)
        if values:
            out[name] = ", ".join(values)
    return out
