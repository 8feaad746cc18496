"""HTTP Digest authentication as SIP uses it, server side (RFC 3261 22, RFC 2617, RFC 8760).

Sans-IO: `DigestAuthenticator` takes the current time as ``now`` and keeps no sockets.

Nonces are stateless: a nonce is the time it was issued, a random salt and an HMAC of
both under the cluster's secret, so any process holding the secret can check a nonce
another one issued, and a restart forgets nothing that matters. For `now` to mean the
same thing in every process it must be the wall clock (``time.time()``) there.

The only state is the replay guard: for each (nonce, username) that authenticated, the
highest nonce count (``nc``) seen. It is bounded: entries of expired nonces are pruned,
and when the table is still full the oldest entry is dropped and every nonce issued no
later than it is treated as stale from then on, so dropping an entry never lets a replay
through (its client is asked to retry with a fresh nonce, without a new password prompt).

What is supported, and why not more:

- algorithms MD5 and SHA-256 (RFC 8760); the ``-sess`` variants and SHA-512-256 are
  refused as unsupported (no SIP phone we must serve needs them);
- ``qop=auth`` with ``nc`` and ``cnonce``, and the RFC 2069 form without qop (whose
  nonces are single use, since without ``nc`` a replay cannot be told from a retry);
  ``auth-int`` is refused;
- the digest-uri is not compared with the Request-URI: phones spell it differently
  (SIPp sends the Request-URI, others the domain), and the response hash covers it.
"""

from __future__ import annotations

import enum
import hashlib
import heapq
import hmac
import re
import secrets
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

__all__ = [
    "ALGORITHMS",
    "AuthFailure",
    "AuthResult",
    "Credentials",
    "CredentialsError",
    "DigestAuthenticator",
    "Ha1",
    "digest_response",
    "ha1_of",
    "parse_credentials",
]

# Hash functions by the algorithm's name in the header (RFC 8760 2.1), in order of
# preference: a challenge lists the offered ones in this order (RFC 8760 2.4).
_HASHES: dict[str, Callable[[bytes], hashlib._Hash]] = {
    "SHA-256": hashlib.sha256,
    "MD5": hashlib.md5,  # RFC 3261's default; kept for the phones that know nothing else
}
ALGORITHMS: tuple[str, ...] = tuple(_HASHES)

_WS = " \t\r\n"
_TOKEN_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~")
# nonce-count = "nc" EQUAL 8LHEX (RFC 3261 25.1); upper case is tolerated.
_NC_RE = re.compile(r"[0-9a-fA-F]{8}")
# Parameters a digest-response must carry (RFC 3261 25.1, RFC 2617 3.2.2).
_REQUIRED = ("username", "realm", "nonce", "uri", "response")


# --- Authorization header values -------------------------------------------------------


class CredentialsError(ValueError):
    """An Authorization (or Proxy-Authorization) header value we cannot read.

    `reason` is the reason phrase of the 400 that answers it; `detail` says what is
    wrong, for the log.
    """

    status = 400

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Credentials:
    """One credentials value: the scheme and its auth-params.

    Parameter names are lower-cased, values unquoted (backslash escapes undone). For a
    scheme other than Digest the parameters are not read (``params`` is empty).
    """

    scheme: str
    params: Mapping[str, str] = field(default_factory=dict)

    @property
    def is_digest(self) -> bool:
        return self.scheme.lower() == "digest"

    @property
    def username(self) -> str:
        return self.params.get("username", "")

    @property
    def realm(self) -> str:
        return self.params.get("realm", "")

    @property
    def nonce(self) -> str:
        return self.params.get("nonce", "")

    @property
    def uri(self) -> str:
        return self.params.get("uri", "")

    @property
    def response(self) -> str:
        return self.params.get("response", "")

    @property
    def algorithm(self) -> str | None:
        return self.params.get("algorithm")

    @property
    def qop(self) -> str | None:
        return self.params.get("qop")

    @property
    def nc(self) -> str:
        return self.params.get("nc", "")

    @property
    def cnonce(self) -> str:
        return self.params.get("cnonce", "")

    @property
    def opaque(self) -> str | None:
        return self.params.get("opaque")


def parse_credentials(value: str, *, header: str = "Authorization") -> Credentials:
    """Parse an Authorization or Proxy-Authorization header value (RFC 3261 25.1).

    ::

        credentials     = ("Digest" LWS digest-response) / other-response
        digest-response = dig-resp *(COMMA dig-resp)
        auth-param      = auth-param-name EQUAL ( token / quoted-string )

    Whitespace (including line breaks left by folding) is allowed around the commas and
    the equals signs, and empty list elements are skipped (RFC 7230 7). A Digest value
    must carry username, realm, nonce, uri and response (their values may be empty, as
    in the first REGISTER of some phones), and cnonce and an 8-hex-digit nc with a qop.
    Raises `CredentialsError` (reason "Malformed <header> header").
    """
    reason = f"Malformed {header} header"

    def fail(detail: str) -> CredentialsError:
        return CredentialsError(reason, detail)

    text = value.strip(_WS)
    i = 0
    n = len(text)
    while i < n and text[i] not in _WS:
        i += 1
    scheme = text[:i]
    if not scheme or not all(c in _TOKEN_CHARS for c in scheme):
        raise fail("no authentication scheme")
    if scheme.lower() != "digest":
        # Other schemes (Basic's token68, for one) have another grammar; the caller
        # refuses them by scheme, so their parameters are not read.
        return Credentials(scheme)

    params: dict[str, str] = {}
    while True:
        # Skip whitespace and empty list elements.
        while i < n and (text[i] in _WS or text[i] == ","):
            i += 1
        if i >= n:
            break
        start = i
        while i < n and text[i] in _TOKEN_CHARS:
            i += 1
        name = text[start:i].lower()
        if not name:
            raise fail(f"unexpected {text[i]!r} where a parameter name should be")
        while i < n and text[i] in _WS:
            i += 1
        if i >= n or text[i] != "=":
            raise fail(f"parameter {name!r} has no value")
        i += 1
        while i < n and text[i] in _WS:
            i += 1
        if i < n and text[i] == '"':
            i += 1
            chars: list[str] = []
            while True:
                if i >= n:
                    raise fail(f"unterminated quoted value of {name!r}")
                c = text[i]
                if c == "\\":
                    if i + 1 >= n:
                        raise fail(f"unterminated quoted value of {name!r}")
                    chars.append(text[i + 1])
                    i += 2
                elif c == '"':
                    i += 1
                    break
                else:
                    chars.append(c)
                    i += 1
            val = "".join(chars)
        else:
            # A token; tolerate the other printable characters some phones leave
            # unquoted (base64 nonces with '/', '+' and '=').
            start = i
            while i < n and text[i] not in _WS and text[i] not in ',"':
                i += 1
            val = text[start:i]
            if not val:
                raise fail(f"parameter {name!r} has no value")
        while i < n and text[i] in _WS:
            i += 1
        if i < n and text[i] != ",":
            raise fail(f"unexpected {text[i]!r} after the value of {name!r}")
        if name in params:
            raise fail(f"parameter {name!r} appears twice")
        params[name] = val

    if not params:
        raise fail("no parameters")
    for name in _REQUIRED:
        if name not in params:
            raise fail(f"no {name} parameter")
    if "qop" in params:
        if "cnonce" not in params:
            raise fail("qop without cnonce")
        if not _NC_RE.fullmatch(params.get("nc", "")):
            raise fail("qop without a valid nc (8 hex digits)")
    return Credentials(scheme, params)


# --- the digest itself ------------------------------------------------------------------


def _canonical_algorithm(name: str) -> str | None:
    for known in _HASHES:
        if known.lower() == name.lower():
            return known
    return None


@dataclass(frozen=True, slots=True)
class Ha1:
    """A user's secret stored as its hashes, not its password: ``H(username:realm:
    password)`` in lower-case hex, by algorithm name ("MD5", "SHA-256"). Only the
    algorithms present can be verified."""

    by_algorithm: Mapping[str, str]


def ha1_of(algorithm: str, username: str, realm: str, password: str) -> str:
    """The HA1 of RFC 2617 3.2.2.2 (RFC 8760), what an operator stores as `Ha1`."""
    canon = _canonical_algorithm(algorithm)
    if canon is None:
        raise ValueError(f"unsupported digest algorithm {algorithm!r}")
    text = f"{username}:{realm}:{password}"
    return _HASHES[canon](text.encode("utf-8", "surrogateescape")).hexdigest()


def digest_response(
    *,
    algorithm: str,
    username: str,
    realm: str,
    password: str = "",
    method: str,
    uri: str,
    nonce: str,
    qop: str | None = None,
    nc: str = "",
    cnonce: str = "",
    ha1: str | None = None,
) -> str:
    """The request-digest of RFC 2617 3.2.2.1 (RFC 8760 for SHA-256), lower-case hex.

    ``qop=None`` gives the RFC 2069 form ``H(HA1:nonce:HA2)``; ``qop="auth"`` gives
    ``H(HA1:nonce:nc:cnonce:qop:HA2)``. Text is hashed as UTF-8 (RFC 7616 4). A given
    `ha1` is used instead of hashing the password.
    Raises ValueError for an algorithm other than MD5 or SHA-256, or for auth-int.
    """
    canon = _canonical_algorithm(algorithm)
    if canon is None:
        raise ValueError(f"unsupported digest algorithm {algorithm!r}")
    if qop is not None and qop.lower() != "auth":
        raise ValueError(f"unsupported qop {qop!r}")
    hash_fn = _HASHES[canon]

    def h(text: str) -> str:
        return hash_fn(text.encode("utf-8", "surrogateescape")).hexdigest()

    ha1 = h(f"{username}:{realm}:{password}") if ha1 is None else ha1.lower()
    ha2 = h(f"{method}:{uri}")
    if qop is None:
        return h(f"{ha1}:{nonce}:{ha2}")
    return h(f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")


# --- verification -----------------------------------------------------------------------


class AuthFailure(enum.Enum):
    """Why credentials were not accepted; the value is a phrase for logs."""

    UNSUPPORTED_SCHEME = "not Digest"
    UNSUPPORTED_ALGORITHM = "unsupported algorithm"
    UNSUPPORTED_QOP = "unsupported qop"
    WRONG_REALM = "wrong realm"
    BAD_NONCE = "nonce not issued here"
    NO_SUCH_USER = "no such user"
    WRONG_RESPONSE = "wrong response (password)"
    STALE_NONCE = "stale nonce"
    NC_REPLAY = "nonce count replayed"


@dataclass(frozen=True, slots=True)
class AuthResult:
    """The outcome of `DigestAuthenticator.verify`.

    `username` is the one the credentials name, also on failure (for the log).
    """

    ok: bool
    username: str
    failure: AuthFailure | None = None

    # Failures of a request whose digest was right but whose nonce can no longer be
    # used: the answer is a new challenge with stale=true (RFC 2617 3.2.1), so that the
    # client retries without asking its user for the password again.
    _STALE: ClassVar[frozenset[AuthFailure]] = frozenset(
        {AuthFailure.STALE_NONCE, AuthFailure.NC_REPLAY}
    )

    @property
    def stale(self) -> bool:
        return self.failure in self._STALE


# Nonce layout, before hex: issued-at in milliseconds (signed 64-bit big-endian), a
# random salt (two clients challenged in the same millisecond get different nonces, so
# their nonce counts do not collide), and the first 16 bytes of HMAC-SHA256 over both.
_NONCE_TIME = struct.Struct(">q")
_SALT_LEN = 8
_MAC_LEN = 16
_NONCE_HEX_LEN = 2 * (_NONCE_TIME.size + _SALT_LEN + _MAC_LEN)
_NONCE_RE = re.compile(rf"[0-9a-f]{{{_NONCE_HEX_LEN}}}")
# A no-qop (RFC 2069) use is recorded as a count above any 8-hex-digit nc: single use.
_USED_WITHOUT_QOP = 1 << 32


class DigestAuthenticator:
    """Issues Digest challenges and checks the answers, for one realm.

    `secret` is shared by every process that must accept the others' nonces (the
    cluster secret, or a key derived from it). `algorithms` are the ones offered and
    accepted: MD5 and SHA-256. The default is MD5 alone because clients that know only
    MD5 often answer the first challenge whatever it is: SIPp 3.6.1 (Debian's) gives
    up on a 401 whose first WWW-Authenticate says SHA-256, and RFC 8760 puts it first.
    `max_tracked` bounds the replay guard (see the module docstring).
    """

    def __init__(
        self,
        realm: str,
        secret: bytes,
        nonce_lifetime: float = 300.0,
        algorithms: Sequence[str] = ("MD5",),
        *,
        max_tracked: int = 65536,
    ) -> None:
        if not realm:
            raise ValueError("the realm must not be empty")
        if len(secret) < 16:
            raise ValueError("the nonce secret must be at least 16 bytes")
        if not nonce_lifetime > 0:
            raise ValueError("nonce_lifetime must be greater than 0")
        if max_tracked < 1:
            raise ValueError("max_tracked must be at least 1")
        offered: set[str] = set()
        for name in algorithms:
            canon = _canonical_algorithm(name)
            if canon is None:
                raise ValueError(f"unsupported digest algorithm {name!r} (use MD5 or SHA-256)")
            offered.add(canon)
        if not offered:
            raise ValueError("at least one digest algorithm must be offered")
        self.realm = realm
        self.nonce_lifetime = nonce_lifetime
        # Most preferred first (RFC 8760 2.4: SHA-256 before MD5).
        self.algorithms: tuple[str, ...] = tuple(a for a in _HASHES if a in offered)
        self._key = hashlib.sha256(b"twinline digest nonce\x00" + secret).digest()
        self._realm_bytes = realm.encode("utf-8", "surrogateescape")
        self._max_tracked = max_tracked
        # (nonce, username) -> highest nc accepted; heap of (issued_ms, key) to prune.
        self._seen: dict[tuple[str, str], int] = {}
        self._by_age: list[tuple[int, tuple[str, str]]] = []
        # Nonces issued at or before this millisecond are stale (see the module doc).
        self._stale_floor_ms: int | None = None

    # --- nonces ---

    def _mac(self, stamp: bytes) -> bytes:
        return hmac.new(self._key, self._realm_bytes + b"\x00" + stamp, "sha256").digest()[
            :_MAC_LEN
        ]

    def new_nonce(self, now: float) -> str:
        stamp = _NONCE_TIME.pack(_millis(now)) + secrets.token_bytes(_SALT_LEN)
        return (stamp + self._mac(stamp)).hex()

    def _nonce_issued_ms(self, nonce: str) -> int | None:
        """When we issued `nonce`, or None if we did not (garbage, forged, other realm)."""
        if not _NONCE_RE.fullmatch(nonce):
            return None
        raw = bytes.fromhex(nonce)
        stamp, mac = raw[:-_MAC_LEN], raw[-_MAC_LEN:]
        if not hmac.compare_digest(mac, self._mac(stamp)):
            return None
        issued_ms: int = _NONCE_TIME.unpack_from(stamp)[0]
        return issued_ms

    # --- challenges ---

    def challenge(self, now: float, *, stale: bool = False) -> list[str]:
        """WWW-Authenticate (or Proxy-Authenticate) values: one per algorithm offered."""
        nonce = self.new_nonce(now)
        realm = _quote(self.realm)
        tail = ", stale=true" if stale else ""
        return [
            f'Digest realm="{realm}", nonce="{nonce}", algorithm={alg}, qop="auth"{tail}'
            for alg in self.algorithms
        ]

    # --- verification ---

    def verify(
        self,
        method: str,
        credentials: Credentials,
        password_of: Callable[[str], str | Ha1 | None],
        now: float,
    ) -> AuthResult:
        """Check credentials answering one of our challenges. `password_of` gives a
        user's password, or its `Ha1` hashes, or None for no such user.

        Order of the checks: what we cannot compute (scheme, algorithm, qop, realm),
        then the nonce's origin, the user, the response, and only then the nonce's age
        and count, because stale=true is for a client that knows the password
        (RFC 2617 3.2.1). A successful check records the nonce count.
        """
        c = credentials
        user = c.username

        def fail(kind: AuthFailure) -> AuthResult:
            return AuthResult(False, user, kind)

        if not c.is_digest:
            return fail(AuthFailure.UNSUPPORTED_SCHEME)
        algorithm = _canonical_algorithm(c.algorithm or "MD5")  # RFC 2617: MD5 if absent
        if algorithm is None or algorithm not in self.algorithms:
            return fail(AuthFailure.UNSUPPORTED_ALGORITHM)
        qop = c.qop
        if qop is not None and qop.lower() != "auth":
            return fail(AuthFailure.UNSUPPORTED_QOP)
        if c.realm != self.realm:
            return fail(AuthFailure.WRONG_REALM)
        issued_ms = self._nonce_issued_ms(c.nonce)
        if issued_ms is None:
            return fail(AuthFailure.BAD_NONCE)
        secret = password_of(user)
        if secret is None:
            return fail(AuthFailure.NO_SUCH_USER)
        password, ha1 = (secret, None) if isinstance(secret, str) else ("", None)
        if not isinstance(secret, str):
            ha1 = secret.by_algorithm.get(algorithm)
            if ha1 is None:
                return fail(AuthFailure.UNSUPPORTED_ALGORITHM)
        if qop is not None and not (_NC_RE.fullmatch(c.nc) and c.cnonce):
            return fail(AuthFailure.WRONG_RESPONSE)  # cannot be right without them
        expected = digest_response(
            algorithm=algorithm,
            username=user,
            realm=c.realm,
            password=password,
            method=method,
            uri=c.uri,
            nonce=c.nonce,
            qop=qop,
            nc=c.nc,
            cnonce=c.cnonce,
            ha1=ha1,
        )
        given = c.response.lower().encode("utf-8", "surrogateescape")
        if not hmac.compare_digest(expected.encode("ascii"), given):
            return fail(AuthFailure.WRONG_RESPONSE)

        now_ms = _millis(now)
        self._prune(now_ms)
        if self._is_stale(issued_ms, now_ms):
            return fail(AuthFailure.STALE_NONCE)
        count = int(c.nc, 16) if qop is not None else _USED_WITHOUT_QOP
        key = (c.nonce, user)
        last = self._seen.get(key)
        if last is not None:
            if qop is None or count <= last:
                return fail(AuthFailure.NC_REPLAY)
            self._seen[key] = count
        else:
            self._track(key, issued_ms, count)
        return AuthResult(True, user)

    def _is_stale(self, issued_ms: int, now_ms: int) -> bool:
        if self._stale_floor_ms is not None and issued_ms <= self._stale_floor_ms:
            return True
        return now_ms - issued_ms > self.nonce_lifetime * 1000

    def _prune(self, now_ms: int) -> None:
        """Forget the counts of expired nonces: those are refused as stale anyway."""
        heap = self._by_age
        limit = self.nonce_lifetime * 1000
        while heap and now_ms - heap[0][0] > limit:
            _, key = heapq.heappop(heap)
            del self._seen[key]

    def _track(self, key: tuple[str, str], issued_ms: int, count: int) -> None:
        heap = self._by_age
        while len(self._seen) >= self._max_tracked:
            # Full of live nonces: drop the oldest, and make every nonce up to its age
            # stale, so that forgetting its count cannot let a replay through.
            old_ms, old_key = heapq.heappop(heap)
            del self._seen[old_key]
            if self._stale_floor_ms is None or old_ms > self._stale_floor_ms:
                self._stale_floor_ms = old_ms
        if self._stale_floor_ms is not None and issued_ms <= self._stale_floor_ms:
            return  # stale from now on: nothing to remember
        self._seen[key] = count
        heapq.heappush(heap, (issued_ms, key))

    @property
    def tracked(self) -> int:
        """How many (nonce, user) counts the replay guard holds now."""
        return len(self._seen)


def _millis(now: float) -> int:
    return int(now * 1000)


def _quote(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')
