"""The registrar and the location service (RFC 3261 section 10.3), sans-IO.

`Registrar.handle` takes a parsed REGISTER, the address it came from and the time, and
returns the response; `LocationService` holds the bindings the switch looks up to reach
a registered phone. Nothing here touches a socket or reads the clock.

An address of record is a user name of our single domain: ``sip:alice@anything``
names user ``alice``. The host part of the To URI is not checked, because phones are
as often configured with the switch's address as with the domain's name.

Choices RFC 3261 leaves open, made here:

- the To user is checked before authentication (404 for an unknown user) unless
  ``hide_unknown_users`` is set; then an unknown user is challenged like a known one
  and refused with 403, so that scanners cannot list the users by their answers;
- a digest response that does not match the password (or names an unknown user) gets
  403, not a new 401: the phone's password is wrong and retrying will not help; the
  digest check is the one calls use too (`twinline.switch.access.DigestGate`), which
  logs the failure for fail2ban and counts it against the address and the user;
- a REGISTER whose Call-ID matches a binding's and whose CSeq is not higher (step 7:
  out of order, or a replay past the transaction layer) fails with 500 and changes
  nothing; the phone's next refresh has a higher CSeq and succeeds;
- all the request's Contacts are checked before any binding changes, so a request
  either applies whole or not at all (step 7's "if and only if all succeed");
- a Require header naming any extension gets 420: the registrar implements none
  (neither Path, RFC 3327, nor outbound, RFC 5626);
- the 200 carries no Date header: ``now`` need not be the wall clock.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import unquote

from twinline.sip.digest import DigestAuthenticator
from twinline.sip.errors import SipParseError
from twinline.sip.ids import new_tag
from twinline.sip.message import (
    Request,
    Response,
    SipUri,
    parse_name_addr,
    parse_uri,
    response_to,
)
from twinline.switch.access import DigestGate, Failures, Refusal, Secret

__all__ = [
    "MAX_CONTACTS_PER_USER",
    "Binding",
    "LocationService",
    "Registrar",
    "contact_key",
]

_log = logging.getLogger(__name__)

# Phones register one to three contacts; ten leaves room for a user's desk phone, soft
# phones and a mobile client, and bounds what one set of credentials can make us hold.
MAX_CONTACTS_PER_USER = 10

# delta-seconds = 1*DIGIT; values above 2**32 - 1 mean 2**32 - 1 (RFC 3261 20.19).
_DELTA_SECONDS = re.compile(r"[0-9]{1,20}")
# qvalue = ("0" ["." 0*3DIGIT]) / ("1" ["." 0*3("0")]) (RFC 3261 20.10); longer
# fractions are tolerated, the range is not.
_QVALUE = re.compile(r"[01](\.[0-9]*)?")

Source = tuple[str, str, int]  # (transport, host, port) the REGISTER came from


@dataclass(frozen=True, slots=True)
class Binding:
    """One contact of one user.

    `contact` is the URI as the phone wrote it; `key` is its normalized form, which
    identifies the binding (see `contact_key`). `registered_at` is when it was last
    added or refreshed; `source` is where that REGISTER came from.
    """

    user: str
    contact: str
    key: str
    expires_at: float
    call_id: str
    cseq: int
    q: float
    source: Source
    registered_at: float

    def expires_in(self, now: float) -> int:
        """Whole seconds left, as the 200's ``expires`` parameter shows them (at least 1)."""
        # The epsilon absorbs float error: registered at t for 3600 s shows 3600 at t.
        return max(1, math.ceil(self.expires_at - now - 1e-6))


def contact_key(uri: SipUri) -> str:
    """The identity of a contact URI for binding matches (after RFC 3261 19.1.4).

    Scheme and host compare case-insensitively, the user part after undoing
    %-escapes; parameters compare by name and value without case, in any order. This
    is stricter than 19.1.4 for parameters present on one side only, which does not
    matter for a phone refreshing the very Contact it registered.
    """
    params = ";".join(
        k.lower() if v is None else f"{k.lower()}={v.lower()}"
        for k, v in sorted(uri.params.items())
    )
    password = f":{unquote(uri.password)}" if uri.password is not None else ""
    port = f":{uri.port}" if uri.port is not None else ""
    headers = f"?{uri.headers}" if uri.headers else ""
    return f"{uri.scheme}:{unquote(uri.user)}{password}@{uri.host.lower()}{port};{params}{headers}"


class LocationService:
    """The bindings of every user, in memory.

    Expired bindings are dropped lazily (by `lookup` and by updates) and by `expire`,
    which an adapter calls at `next_expiry()`. Memory is bounded by the configured
    users times `max_contacts_per_user`: only authenticated users of our own list can
    add bindings.
    """

    def __init__(self, max_contacts_per_user: int = MAX_CONTACTS_PER_USER) -> None:
        if max_contacts_per_user < 1:
            raise ValueError("max_contacts_per_user must be at least 1")
        self.max_contacts_per_user = max_contacts_per_user
        self._by_user: dict[str, dict[str, Binding]] = {}

    def _live(self, user: str, now: float) -> dict[str, Binding]:
        bindings = self._by_user.get(user)
        if bindings is None:
            return {}
        dead = [k for k, b in bindings.items() if b.expires_at <= now]
        for k in dead:
            del bindings[k]
        if not bindings:
            del self._by_user[user]
            return {}
        return bindings

    def lookup(self, user: str, now: float) -> list[Binding]:
        """Live bindings of `user`: highest q first, then the most recently registered."""
        return sorted(self._live(user, now).values(), key=lambda b: (-b.q, -b.registered_at))

    def get(self, user: str, key: str, now: float) -> Binding | None:
        return self._live(user, now).get(key)

    def bind(self, binding: Binding, now: float) -> Binding | None:
        """Add or replace the binding of ``(binding.user, binding.key)``.

        When the user already has `max_contacts_per_user` other live bindings, the
        oldest one (least recently registered) is replaced rather than the new one
        refused: a phone that re-registers from a new address after a restart must not
        be locked out by its own stale contacts. Returns the binding evicted, if any.
        """
        bindings = self._live(binding.user, now)
        evicted: Binding | None = None
        if binding.key not in bindings and len(bindings) >= self.max_contacts_per_user:
            oldest = min(bindings.values(), key=lambda b: b.registered_at)
            evicted = bindings.pop(oldest.key)
        self._by_user.setdefault(binding.user, bindings)[binding.key] = binding
        return evicted

    def unbind(self, user: str, key: str) -> Binding | None:
        bindings = self._by_user.get(user)
        if bindings is None:
            return None
        removed = bindings.pop(key, None)
        if not bindings:
            del self._by_user[user]
        return removed

    def unbind_all(self, user: str) -> list[Binding]:
        return list(self._by_user.pop(user, {}).values())

    def expire(self, now: float) -> list[Binding]:
        """Remove every binding expired at `now`; returns them (for the log)."""
        removed: list[Binding] = []
        for user in list(self._by_user):
            bindings = self._by_user[user]
            for key in [k for k, b in bindings.items() if b.expires_at <= now]:
                removed.append(bindings.pop(key))
            if not bindings:
                del self._by_user[user]
        return removed

    def count(self, now: float) -> int:
        """Live bindings of every user (for the metrics: a scrape, not a call's path)."""
        return sum(1 for b in self._by_user.values() for x in b.values() if x.expires_at > now)

    def next_expiry(self) -> float | None:
        """When the next binding expires (the adapter's timer for `expire`), or None."""
        return min(
            (b.expires_at for bs in self._by_user.values() for b in bs.values()),
            default=None,
        )

    def users(self) -> list[str]:
        """Users holding at least one binding (live or not yet expired away)."""
        return list(self._by_user)

    def __len__(self) -> int:
        return sum(len(bs) for bs in self._by_user.values())


@dataclass(frozen=True, slots=True)
class _Contact:
    uri: str
    key: str
    expires: int
    q: float


class _RefusedError(Exception):
    """A response other than 200, raised from a step of `Registrar.handle`."""

    def __init__(
        self, status: int, reason: str, headers: list[tuple[str, str]] | None = None
    ) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason
        self.headers = headers or []


class Registrar:
    """Handles REGISTER requests (RFC 3261 10.3) for the users in `passwords` (each a
    password or its `Ha1` hashes)."""

    def __init__(
        self,
        domain: str,
        passwords: Mapping[str, Secret],
        authenticator: DigestAuthenticator,
        location: LocationService,
        *,
        min_expires: int = 60,
        max_expires: int = 7200,
        default_expires: int = 3600,
        hide_unknown_users: bool = False,
        failures: Failures | None = None,
    ) -> None:
        if not 0 < min_expires <= default_expires <= max_expires:
            raise ValueError(
                "expiry bounds must satisfy 0 < min_expires <= default_expires <= max_expires"
            )
        self.domain = domain
        self.passwords = passwords
        self.authenticator = authenticator
        self.gate = DigestGate(authenticator, passwords, failures)
        self.location = location
        self.min_expires = min_expires
        self.max_expires = max_expires
        self.default_expires = default_expires
        self.hide_unknown_users = hide_unknown_users

    def handle(self, req: Request, source: Source, now: float) -> Response:
        """Answer one REGISTER (its server transaction absorbs the retransmissions)."""
        if req.method != "REGISTER":
            raise ValueError(f"Registrar.handle got a {req.method} request")
        tag = new_tag()
        try:
            headers = self._register(req, source, now)
        except _RefusedError as r:
            if r.status not in (401, 403):  # those were logged with their cause
                _log.info(
                    "REGISTER refused: %d %s (call-id %s, from %s:%s)",
                    r.status,
                    r.reason,
                    req.call_id,
                    source[1],
                    source[2],
                )
            return response_to(req, r.status, r.reason, to_tag=tag, headers=r.headers)
        return response_to(req, 200, "OK", to_tag=tag, headers=headers)

    # --- the steps of RFC 3261 10.3 ---

    def _register(self, req: Request, source: Source, now: float) -> list[tuple[str, str]]:
        # Step 2: extensions the request requires (8.2.2.3); we support none.
        required = [r.strip() for r in req.get_all("Require") if r.strip()]
        if required:
            raise _RefusedError(420, "Bad Extension", [("Unsupported", ", ".join(required))])

        # Step 5, first (see the module docstring): the address of record.
        user = self._aor_user(req)
        known = user in self.passwords
        if not known and not self.hide_unknown_users:
            raise _RefusedError(404, "Not Found")

        # Steps 3 and 4: authenticate; the authenticated user may change only its own.
        authenticated = self.gate.check(req, source, now, proxy=False)
        if isinstance(authenticated, Refusal):
            raise _RefusedError(
                authenticated.status, authenticated.reason, list(authenticated.headers)
            )
        if authenticated != user or not known:
            self.gate.failures.failed(
                source, None,
                f"REGISTER for {user!r} by authenticated user {authenticated!r} refused", now,
            )  # fmt: skip
            raise _RefusedError(403, "Forbidden")

        # Steps 6 and 7: the contacts.
        expires_header = self._expires_header(req)
        values = req.get_all("Contact")
        if not values:
            return self._bindings_listing(user, now)  # a query
        if any(v.strip(" \t") == "*" for v in values):
            self._remove_all(req, user, values, expires_header, now)
            return self._bindings_listing(user, now)

        contacts = [self._parse_contact(v, expires_header) for v in values]
        too_brief = [c for c in contacts if 0 < c.expires < self.min_expires]
        if too_brief:
            raise _RefusedError(423, "Interval Too Brief", [("Min-Expires", str(self.min_expires))])
        for c in contacts:
            existing = self.location.get(user, c.key, now)
            if existing and existing.call_id == req.call_id and req.cseq <= existing.cseq:
                raise _RefusedError(500, "CSeq Out of Order")
        for c in contacts:
            if c.expires == 0:
                if self.location.unbind(user, c.key) is not None:
                    _log.debug("unregistered %s at %s", user, c.uri)
                continue
            evicted = self.location.bind(
                Binding(
                    user=user,
                    contact=c.uri,
                    key=c.key,
                    expires_at=now + c.expires,
                    call_id=req.call_id,
                    cseq=req.cseq,
                    q=c.q,
                    source=source,
                    registered_at=now,
                ),
                now,
            )
            if evicted is not None:
                _log.info(
                    "user %s has %d contacts: dropped the oldest, %s",
                    user,
                    self.location.max_contacts_per_user,
                    evicted.contact,
                )
            _log.debug("registered %s at %s for %d s", user, c.uri, c.expires)
        return self._bindings_listing(user, now)

    def _aor_user(self, req: Request) -> str:
        try:
            uri = parse_uri(parse_name_addr(req.get("To") or "").uri)
        except SipParseError:
            raise _RefusedError(400, "Malformed To header") from None
        if uri.scheme not in ("sip", "sips") or not uri.user:
            raise _RefusedError(404, "Not Found")
        return unquote(uri.user)

    def _expires_header(self, req: Request) -> int | None:
        value = req.get("Expires")
        if value is None:
            return None
        value = value.strip(" \t")
        if not _DELTA_SECONDS.fullmatch(value):
            raise _RefusedError(400, "Malformed Expires header")
        return int(value)

    def _parse_contact(self, value: str, expires_header: int | None) -> _Contact:
        try:
            addr = parse_name_addr(value)
            uri = parse_uri(addr.uri)
        except SipParseError:
            raise _RefusedError(400, "Malformed Contact header") from None
        if uri.scheme not in ("sip", "sips"):
            raise _RefusedError(400, "Unsupported URI scheme in Contact header")
        if "expires" in addr.params:
            expires_text = addr.params["expires"]
            if expires_text is None or not _DELTA_SECONDS.fullmatch(expires_text):
                raise _RefusedError(400, "Malformed Contact header")
            expires = int(expires_text)
        elif expires_header is not None:
            expires = expires_header
        else:
            expires = self.default_expires
        q = 1.0
        if "q" in addr.params:
            q_text = addr.params["q"]
            if q_text is None or not _QVALUE.fullmatch(q_text) or float(q_text) > 1.0:
                raise _RefusedError(400, "Malformed Contact header")
            q = float(q_text)
        # The registrar may shorten an interval (10.3 step 7); we cap it.
        return _Contact(addr.uri, contact_key(uri), min(expires, self.max_expires), q)

    def _remove_all(
        self,
        req: Request,
        user: str,
        values: list[str],
        expires_header: int | None,
        now: float,
    ) -> None:
        """Step 6: ``Contact: *`` with ``Expires: 0`` removes every binding of the user."""
        if len(values) != 1 or expires_header != 0:
            raise _RefusedError(400, "Contact * needs Expires: 0 and no other Contact")
        bindings = self.location.lookup(user, now)
        for b in bindings:
            if b.call_id == req.call_id and req.cseq <= b.cseq:
                raise _RefusedError(500, "CSeq Out of Order")
        self.location.unbind_all(user)
        if bindings:
            _log.debug("unregistered all %d contacts of %s", len(bindings), user)

    def _bindings_listing(self, user: str, now: float) -> list[tuple[str, str]]:
        """Step 8: the 200 lists every current binding with the seconds it has left."""
        out: list[tuple[str, str]] = []
        for b in self.location.lookup(user, now):
            q = f";q={b.q:g}" if b.q != 1.0 else ""
            out.append(("Contact", f"<{b.contact}>;expires={b.expires_in(now)}{q}"))
        return out
