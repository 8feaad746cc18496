"""RFC 4028 session timers, one per leg of a call: negotiation and deadlines, sans-IO.

A B2BUA holds two dialogs, so it negotiates two session timers: as the UAS of the
caller's INVITE (section 9) and as the UAC of its own INVITE to the callee (section 7).
On each leg one side is the *refresher* and sends a re-INVITE or UPDATE every half
interval; the other side, if no refresh came, ends the session a little before the
interval is over (section 10: `interval - min(32, interval / 3)`). A party that
vanishes without a BYE therefore holds a call for one interval at most.

Who refreshes a leg:

- the caller said `Supported: timer`: what its Session-Expires asks, else the caller
  (its refreshes prove it is there);
- the caller did not: the switch (section 9: the UAS may use session timers alone,
  as the refresher), so that a phone that knows nothing of RFC 4028 still cannot
  hold a call forever;
- the callee's 2xx names the refresher; a 2xx without Session-Expires (a callee
  that does not support it) leaves the refreshes to the switch, as a proxy that
  inserted the header would (section 8.1).

`refresher=uac` and `uas` are relative to the transaction that carries them, so a
request we send says `uac` when we refresh, a response we send says `uas`.

Any successful re-INVITE or UPDATE on a leg restarts its interval, whoever sent it
and whether the switch relayed it or made it.
"""

from __future__ import annotations

from dataclasses import dataclass

from twinline.sip.errors import SipParseError
from twinline.sip.message import Message, parse_params
from twinline.timers import Timer

# RFC 4028 section 4: Min-SE is never below 90 s on the wire unless configured so.
RFC_MIN_SE = 90
# Section 10: the side that does not refresh gives up this much before the interval
# ends, at most (a third of the interval for short ones).
EXPIRY_MARGIN = 32


@dataclass(frozen=True, slots=True)
class SessionConfig:
    """`session_expires` 0 turns session timers off."""

    session_expires: int = 0
    min_se: int = RFC_MIN_SE

    @property
    def enabled(self) -> bool:
        return self.session_expires > 0


class IntervalTooSmall(Exception):
    """The peer asked for less than our Min-SE: 422 with `Min-SE: min_se` (section 9)."""

    def __init__(self, min_se: int) -> None:
        super().__init__(f"session interval below {min_se}")
        self.min_se = min_se


@dataclass(slots=True, eq=False)
class LegSession:
    """The session timer of one leg."""

    interval: int  # seconds
    we_refresh: bool
    peer_supports: bool  # the peer said Supported: timer
    use_update: bool  # the peer allows UPDATE: refresh with it, no SDP needed
    started: float = 0.0  # when the current interval began (the last refresh's 2xx)
    refresh_sent: bool = False
    timer: Timer | None = None

    def request_value(self) -> str:
        """Session-Expires for a request we send on this leg."""
        return f"{self.interval};refresher={'uac' if self.we_refresh else 'uas'}"

    def response_value(self) -> str:
        """Session-Expires for a 2xx we send on this leg."""
        return f"{self.interval};refresher={'uas' if self.we_refresh else 'uac'}"

    def response_headers(self) -> list[tuple[str, str]]:
        """The headers of a 2xx we send: with `Require: timer` when the peer must
        refresh (section 9)."""
        headers = [("Session-Expires", self.response_value())]
        if not self.we_refresh:
            headers.append(("Require", "timer"))
        return headers

    def next_deadline(self) -> float:
        """When to act next: refresh (half way), or give up (a refresher whose refresh
        did not succeed, at the end; the other side, a margin before it)."""
        if self.we_refresh:
            if not self.refresh_sent:
                return self.started + self.interval / 2
            return self.started + self.interval
        return self.started + self.interval - min(EXPIRY_MARGIN, self.interval / 3)

    def cancel(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


def parse_session_expires(value: str) -> tuple[int, str | None]:
    """`delta-seconds *(;se-params)`: the interval and the refresher, if given."""
    seconds, _, params = value.partition(";")
    seconds = seconds.strip()
    if not seconds.isascii() or not seconds.isdigit() or len(seconds) > 9:
        raise SipParseError("Bad Session-Expires header")
    refresher = (
        parse_params(";" + params, " in Session-Expires").get("refresher") if params else None
    )
    if refresher is not None:
        refresher = refresher.lower()
        if refresher not in ("uac", "uas"):
            raise SipParseError("Bad refresher in Session-Expires header")
    return int(seconds), refresher


def _min_se(msg: Message) -> int:
    value = msg.get("Min-SE")
    if value is None:
        return 0
    seconds = value.partition(";")[0].strip()
    if not seconds.isascii() or not seconds.isdigit() or len(seconds) > 9:
        raise SipParseError("Bad Min-SE header")
    return int(seconds)


def _tokens(msg: Message, name: str) -> set[str]:
    return {t.strip().lower() for v in msg.get_all(name) for t in v.split(",")}


def supports_timer(msg: Message) -> bool:
    return "timer" in _tokens(msg, "Supported") or "timer" in _tokens(msg, "Require")


def allows_update(msg: Message) -> bool:
    return "update" in _tokens(msg, "Allow")


def negotiate_as_uas(req: Message, config: SessionConfig) -> LegSession | None:
    """The session timer of the leg whose INVITE (or refresh) `req` is; None when
    session timers are off. Raises IntervalTooSmall (answer 422) or SipParseError."""
    if not config.enabled:
        return None
    supported = supports_timer(req)
    value = req.get("Session-Expires")
    asked, refresher = parse_session_expires(value) if value is not None else (0, None)
    floor = max(config.min_se, _min_se(req))
    if value is not None and asked < config.min_se:
        if supported:
            raise IntervalTooSmall(config.min_se)
        asked = config.min_se  # a proxy asked for it; the caller cannot retry (section 9)
    # We may shorten what was asked, never below anyone's minimum.
    interval = (
        max(min(asked, config.session_expires), floor)
        if asked
        else max(config.session_expires, floor)
    )
    if refresher is None:
        refresher = "uac" if supported else "uas"
    elif refresher == "uac" and not supported:
        refresher = "uas"  # a UAC that does not know the extension cannot refresh
    return LegSession(
        interval=interval,
        we_refresh=refresher == "uas",
        peer_supports=supported,
        use_update=allows_update(req),
    )


def request_headers(config: SessionConfig, asked: int = 0) -> list[tuple[str, str]]:
    """What our INVITE to the callee offers (`asked`, else the configured interval);
    the callee picks the refresher."""
    if not config.enabled:
        return []
    return [
        ("Supported", "timer"),
        ("Session-Expires", str(asked or config.session_expires)),
        ("Min-SE", str(config.min_se)),
    ]


def negotiate_as_uac(
    resp: Message, config: SessionConfig, asked: int, previous: LegSession | None = None
) -> LegSession | None:
    """The session timer of a leg from the 2xx to our INVITE (or refresh) there."""
    if not config.enabled:
        return None
    value = resp.get("Session-Expires")
    use_update = allows_update(resp) or (previous is not None and previous.use_update)
    if value is None:
        # The callee does not support session timers: we refresh, unilaterally.
        return LegSession(
            interval=asked, we_refresh=True, peer_supports=False, use_update=use_update
        )
    interval, refresher = parse_session_expires(value)
    return LegSession(
        interval=max(interval, 1),
        we_refresh=refresher != "uas",  # our request: uac is us (absent: we are)
        peer_supports=True,
        use_update=use_update,
    )
