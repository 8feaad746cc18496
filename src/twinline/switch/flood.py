"""Flood defence, sans-IO: request rates and failed authentications per address, bans.

`FloodGuard.admit` runs for every datagram and stream message before it is parsed: a
banned address costs one dict lookup and its message is dropped unread.

`FloodGuard.count` runs for each *new* request (one that starts a transaction, and an
ACK or response that belongs to nothing): a counter per address in a fixed window
(cleared whole when the window turns, so the table holds only the addresses heard in
one window). An address with more than `max_requests` in a window is banned for
`ban_seconds`, unless it is trusted (a trunk's source): the check of trust runs only
when the limit is crossed. Retransmissions are not counted: a caller whose requests
the switch is slow to answer (under a flood from elsewhere, say) retransmits them,
and must not be banned for it.

Failed authentications and refused calls (`failed`) count per address and per user in
their own window: too many from one address bans it; too many for one user locks that
user (its credentials are refused whatever they are) for `ban_seconds`, which stops a
password guessed from many addresses at the cost of the user's own calls meanwhile.

Every block writes one WARNING line to the ``twinline.security`` logger, of the form
``blocked HOST port PORT: WHAT``, for fail2ban (see docs/security.md). Dropping the
packets of a banned address writes nothing: the ban's own line said it all.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twinline.sip.transaction import Address

__all__ = ["BLOCK_FORMAT", "FloodGuard", "FloodStats", "block"]

log = logging.getLogger("twinline.security")

# One line per block; docs/security.md gives fail2ban's failregex for it.
BLOCK_FORMAT = "blocked %s port %d: %s"

# Bans are bounded: past this many live ones, a new ban is not recorded (and counted).
MAX_BANNED = 65536
# A count that cannot reach any limit again this window (a trusted source's).
_EXEMPT = -(1 << 62)


def block(source: Address, what: str) -> None:
    """Write the one log line of a block."""
    log.warning(BLOCK_FORMAT, source[1], source[2], what)


@dataclass(slots=True)
class FloodStats:
    """Counters for `twinline status` (and metrics)."""

    dropped: int = 0  # messages from banned addresses, dropped before parsing
    rate_bans: int = 0  # addresses banned for their request rate
    auth_bans: int = 0  # addresses banned for failed authentications or refused calls
    users_locked: int = 0  # users locked for failed authentications
    auth_failures: int = 0  # failed authentications and refused calls, all sources
    ban_table_full: int = 0  # bans not recorded: MAX_BANNED live bans already


class FloodGuard:
    def __init__(
        self,
        *,
        max_requests: int,
        window: float,
        max_auth_failures: int,
        max_user_auth_failures: int,
        auth_window: float,
        ban_seconds: float,
        is_trusted: Callable[[str], bool],
        max_banned: int = MAX_BANNED,
    ) -> None:
        self.max_requests = max_requests
        self.window = window
        self.max_auth_failures = max_auth_failures
        self.max_user_auth_failures = max_user_auth_failures
        self.auth_window = auth_window
        self.ban_seconds = ban_seconds
        self.is_trusted = is_trusted
        self.max_banned = max_banned
        # Called with the host of each new ban (the process closes its connections).
        self.on_ban: Callable[[str], object] | None = None
        self.stats = FloodStats()
        self._banned: dict[str, float] = {}  # host -> banned until
        self._counts: dict[str, int] = {}  # host -> new requests in this window
        self._window_end = 0.0
        self._failures: dict[str, int] = {}  # host -> failures in this auth window
        self._user_failures: dict[str, int] = {}
        self._auth_window_end = 0.0
        self._locked: dict[str, float] = {}  # user -> locked until

    # --- the hot path ---------------------------------------------------------------
    def admit(self, source: Address, now: float) -> bool:
        """Whether to handle a message from `source`; False drops it unread."""
        banned = self._banned
        if banned:
            host = source[1]
            until = banned.get(host)
            if until is not None:
                if now < until:
                    self.stats.dropped += 1
                    return False
                del banned[host]
        return True

    def count(self, source: Address, now: float) -> bool:
        """Count a new request from `source`; False: it crossed the limit, the address
        is banned from now on, and the request is to be dropped unanswered."""
        if not self.max_requests:
            return True
        host = source[1]
        if now >= self._window_end:
            self._counts.clear()
            self._window_end = now + self.window
        n = self._counts.get(host, 0) + 1
        self._counts[host] = n
        if n <= self.max_requests:
            return True
        if self.is_trusted(host):
            self._counts[host] = _EXEMPT
            return True
        self.stats.rate_bans += 1
        self.stats.dropped += 1
        self._ban(source, now, f"{n} requests in {self.window:g} s")
        return False

    # --- failures -------------------------------------------------------------------
    def failed(self, source: Address, user: str | None, what: str, now: float) -> None:
        """A request refused for its credentials or its destination: log the block
        and count it against the address and (when it names a local user) the user."""
        self.stats.auth_failures += 1
        block(source, what)
        host = source[1]
        if now >= self._auth_window_end:
            self._failures.clear()
            self._user_failures.clear()
            self._auth_window_end = now + self.auth_window
        if self.max_auth_failures and not self.is_trusted(host):
            n = self._failures.get(host, 0) + 1
            self._failures[host] = n
            if n > self.max_auth_failures and host not in self._banned:
                self.stats.auth_bans += 1
                self._ban(
                    source, now, f"{n} failed authentications or refused calls in "
                    f"{self.auth_window:g} s",
                )  # fmt: skip
        if user is not None and self.max_user_auth_failures:
            n = self._user_failures.get(user, 0) + 1
            self._user_failures[user] = n
            if n > self.max_user_auth_failures and not self.user_locked(user, now):
                self._locked[user] = now + self.ban_seconds
                self.stats.users_locked += 1
                block(
                    source,
                    f"user {user!r} locked for {self.ban_seconds:g} s: {n} failed "
                    f"authentications in {self.auth_window:g} s",
                )

    def user_locked(self, user: str, now: float) -> bool:
        until = self._locked.get(user)
        if until is None:
            return False
        if now < until:
            return True
        del self._locked[user]
        return False

    def _ban(self, source: Address, now: float, why: str) -> None:
        banned = self._banned
        if len(banned) >= self.max_banned:
            for host in [h for h, until in banned.items() if until <= now]:
                del banned[host]
            if len(banned) >= self.max_banned:
                self.stats.ban_table_full += 1
                return
        banned[source[1]] = now + self.ban_seconds
        block(source, f"banned for {self.ban_seconds:g} s: {why}")
        if self.on_ban is not None:
            self.on_ban(source[1])

    # --- for operators ------------------------------------------------------------------
    def banned_now(self, now: float) -> int:
        return sum(1 for until in self._banned.values() if until > now)

    def status(self, now: float, *, listed: int = 50) -> dict[str, Any]:
        """Counters, and the live bans (the `listed` longest-running)."""
        live = sorted((until, host) for host, until in self._banned.items() if until > now)
        return {
            "banned": len(live),
            "bans": [
                {"address": host, "seconds_left": round(until - now, 1)}
                for until, host in live[:listed]
            ],
            "locked_users": sorted(u for u, until in self._locked.items() if until > now),
            "dropped": self.stats.dropped,
            "rate_bans": self.stats.rate_bans,
            "auth_bans": self.stats.auth_bans,
            "users_locked": self.stats.users_locked,
            "auth_failures": self.stats.auth_failures,
            "ban_table_full": self.stats.ban_table_full,
        }
