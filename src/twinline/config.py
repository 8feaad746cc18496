"""The deployment's configuration: one TOML file that every process reads.

The schema is a tree of msgspec Structs. Loading converts the TOML document into it
strictly (unknown keys and wrong types are errors), then checks what types alone
cannot (addresses, ranges, references between sections). Every problem becomes one
`ConfigError` whose message names the key at fault, e.g.
``switch.listen[1]: 'udp:10.0.0.1' has no port``.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, NoReturn

import msgspec

Transport = Literal["udp", "tcp", "tls"]


class ConfigError(Exception):
    """The configuration is unusable; the message names the key and the problem."""


class _Section(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    pass


class Limits(_Section, frozen=True):
    """Bounds on what the switch accepts from the network (RFC 3261 leaves them to us)."""

    # A UDP datagram cannot exceed 65,535 bytes; a stream message gets the same bound
    # so one peer cannot make the switch buffer more than that per connection.
    max_message_size: int = 65535
    # Real phones send 10 to 25 headers; 100 leaves room for proxies' Via and Record-Route.
    max_headers: int = 100
    # The longest legitimate lines are Authorization and SDP-free Contact lists; 8 KiB fits.
    max_line_length: int = 8192


class Timers(_Section, frozen=True):
    """RFC 3261 timer base values, in seconds (section 17.1.1.1)."""

    t1: float = 0.5
    t2: float = 4.0
    t4: float = 5.0


class SipTls(_Section, frozen=True):
    """SIP over TLS: the switch's certificate for `tls:` listeners and for the TLS
    connections it opens (to `transport = "tls"` routes), PEM files."""

    certificate: str  # the switch's certificate, with its chain after it
    key: str  # its private key (unencrypted PEM)
    # CA certificates (PEM) that verify the peers the switch connects to; without it,
    # the system's trust store. With `verify_clients`, callers must show a
    # certificate this CA signed (phones rarely have one: off by default).
    ca: str | None = None
    verify_clients: bool = False


class Dns(_Section, frozen=True):
    """How long host names (targets, Contacts) stay resolved, in seconds. getaddrinfo
    gives no record TTL, so one TTL applies to every answer (docs/security.md)."""

    ttl: float = 60.0
    # A name that does not resolve is not looked up again for this long.
    negative_ttl: float = 10.0
    # A lookup without an answer by then counts as a failure.
    timeout: float = 5.0


class SwitchConfig(_Section, frozen=True):
    # Where the switch takes SIP: "udp:HOST:PORT", "tcp:HOST:PORT" or "tls:HOST:PORT"
    # (needs [switch.tls]); IPv6 as "udp:[::1]:5060".
    listen: list[str] = msgspec.field(default_factory=lambda: ["udp:127.0.0.1:5060"])
    # The host name or address the switch puts in Via, Contact and Record-Route;
    # by default the address of the listener that carries the message.
    advertise: str | None = None
    # The domain of users' addresses of record and the digest realm.
    domain: str = "twinline.local"
    # More live calls than this and new INVITEs get 503 with Retry-After.
    max_calls: int = 20000
    retry_after: int = 5
    # A B-leg that rings this long without an answer is cancelled; the caller gets 480.
    no_answer_timeout: float = 60.0
    # No answered call lasts longer (seconds): the switch sends BYE both ways, cause
    # "max-duration". 0: no limit but what a service's route gives.
    max_call_duration: float = 0.0
    # RFC 4028 session timers on both legs of every call: the interval (seconds) the
    # switch asks for and grants at most (0: off), and the shortest it accepts (Min-SE;
    # shorter asks get 422). A party gone without a BYE holds a call one interval at most.
    session_expires: int = 1800
    min_se: int = 90
    limits: Limits = msgspec.field(default_factory=Limits)
    timers: Timers = msgspec.field(default_factory=Timers)
    dns: Dns = msgspec.field(default_factory=Dns)
    # Where application servers connect their call tracking links ("HOST:PORT").
    link: str = "127.0.0.1:5062"
    # The status API (`twinline status`): "HOST:PORT".
    http: str = "127.0.0.1:8062"
    tls: SipTls | None = None
    # The bearer token that calls changing state (drain, handover) must carry; the
    # environment's TWINLINE_API_TOKEN is used when this is empty. Required when
    # `http` listens off this host.
    api_token: str = ""


class User(_Section, frozen=True):
    """A phone that registers and calls: its user name and digest secret.

    The secret is the password, or its digest hashes (HA1 = H(name:domain:password),
    lower-case hex) so that the file holds no password: one per algorithm of
    `access.digest_algorithms`."""

    name: str
    password: str = ""
    ha1_md5: str = ""
    ha1_sha256: str = ""
    # Calls this user may have up at once, and start per minute (0: no limit).
    max_calls: int = 8
    calls_per_minute: int = 30


class Trunk(_Section, frozen=True):
    """A carrier trunk or PBX: trusted by the addresses its requests come from."""

    name: str
    # Addresses or networks its calls come from ("10.0.0.5", "10.0.0.0/24",
    # "2001:db8::/32"): those calls are not challenged, may reach every route, and
    # are exempt from the flood limits.
    sources: list[str] = msgspec.field(default_factory=list)
    # Where routes naming this trunk send calls ("HOST:PORT"), and over what.
    target: str = ""
    transport: Transport = "udp"
    # Calls from this trunk up at once, and started per minute (0: no limit).
    max_calls: int = 0
    calls_per_minute: int = 0


class Access(_Section, frozen=True):
    """Who may call what, for callers that are neither a trunk nor an authenticated user."""

    # Local users may be called by anyone (as from the outside world to a phone).
    public_users: bool = True
    # Dialled-number prefixes open to anyone, e.g. toll-free numbers: ["800", "0800"].
    public_numbers: list[str] = msgspec.field(default_factory=list)
    # What such a caller gets for anything else: "challenge" (407: a local user may
    # still authenticate) or "reject" (403 at once).
    unknown_callers: Literal["challenge", "reject"] = "challenge"
    # Digest algorithms offered in challenges, most preferred first: "MD5", "SHA-256".
    digest_algorithms: list[str] = msgspec.field(default_factory=lambda: ["MD5"])
    # Seconds a nonce stays valid; past that, a phone is re-challenged (stale=true).
    nonce_lifetime: float = 300.0


class Flood(_Section, frozen=True):
    """Per-address rate limits and bans. Trunks' sources are exempt; 0 turns a limit off."""

    # More new SIP requests than this from one address within `window` seconds bans
    # it (retransmissions are not counted; ACKs and responses that match nothing are).
    max_requests: int = 200
    window: float = 2.0
    # More failed authentications (or refused calls) than this from one address
    # within `auth_window` seconds bans it ...
    max_auth_failures: int = 10
    # ... and more than this for one user, from any addresses, locks that user out.
    max_user_auth_failures: int = 30
    auth_window: float = 60.0
    # How long a banned address is ignored (its packets dropped unread), and a
    # locked user refused, in seconds.
    ban_seconds: float = 300.0


class Route(_Section, frozen=True):
    """A static route: dialled numbers starting with `prefix` go to `target`, or to
    the target of the trunk named `trunk`."""

    prefix: str
    target: str = ""  # HOST:PORT of the PBX or trunk
    trunk: str = ""  # or the name of one of [[trunks]], whose target and transport it takes
    transport: Transport = "udp"
    strip: int = 0  # digits removed from the front of the number before sending it on
    add: str = ""  # digits put in front after stripping


# Good for links on loopback only: `_check` refuses it for any address off this host.
LAPTOP_SECRET = "twinline-laptop-secret"  # noqa: S105


class LinkTls(_Section, frozen=True):
    """TLS on the call tracking and peer links, mutual: every member shows its
    certificate and checks the other's against `ca` (and its host name or address
    against the address it dialled). PEM files."""

    certificate: str
    key: str
    ca: str


class Cluster(_Section, frozen=True):
    # Proven by every call tracking and peer link before anything else crosses it.
    # The default suits a laptop on loopback only; set your own for anything else.
    secret: str = LAPTOP_SECRET
    heartbeat_interval: float = 0.1  # seconds between heartbeats on every link
    dead_after: int = 3  # missed heartbeats before a link's peer is declared dead
    # With redundancy off, calls get no standby: checkpoints go to the database only.
    redundancy: bool = True
    # TLS on every call tracking and peer link (the secret is still proven inside).
    tls: LinkTls | None = None


class AppServer(_Section, frozen=True):
    name: str
    peer: str  # "HOST:PORT" where this server takes its peers' links
    capacity: int = 10000  # the calls it may be primary for; placement uses the ratio
    # Where this server reaches the switch's call tracking links, when not at
    # `switch.link` (a NAT, another interface, a proxy): "HOST:PORT".
    ctl: str | None = None
    # Where this server serves its Prometheus metrics (`GET /metrics`): "HOST:PORT".
    # By default the peer address's host, on the peer port + METRICS_PORT_OFFSET.
    metrics: str | None = None

    def metrics_address(self) -> tuple[str, int]:
        """(host, port) of the metrics endpoint. Raises ValueError."""
        if self.metrics is not None:
            return parse_hostport(self.metrics)
        host, port = parse_hostport(self.peer)
        if port + METRICS_PORT_OFFSET > 65535:
            raise ValueError(
                f"the default (peer port {port} + {METRICS_PORT_OFFSET}) is past 65535: "
                'set metrics = "HOST:PORT"'
            )
        return host, port + METRICS_PORT_OFFSET


# An application server's metrics port when its `metrics` key is not set: peer + this.
METRICS_PORT_OFFSET = 1000


class Database(_Section, frozen=True):
    # "sqlite:///path/file.db" (relative to the working directory) or "postgresql://..."
    # (libpq's URL; several hosts with target_session_attrs=read-write follow a failover).
    # No password in it: $TWINLINE_DATABASE_PASSWORD, `password_file` or $PGPASSWORD.
    url: str = "sqlite:///twinline.db"
    # PostgreSQL only:
    pool_size: int = 4  # connections for reads (the writer has one of its own)
    connect_timeout: float = 5.0  # seconds per host tried
    statement_timeout: float = 30.0  # seconds; a statement running longer is cancelled
    sslmode: str | None = None  # libpq's: disable, ..., require, verify-ca, verify-full
    password_file: str | None = None  # a file whose first line is the password


class PlanEntry(_Section, frozen=True):
    """Which service handles a call: the longest matching number prefix wins, then
    the longest matching caller prefix."""

    # One service's name, or several in the order they handle the call (a chain:
    # ["screening", "forwarding", "basic"]; see docs/writing-a-service.md).
    service: str | list[str]
    number: str = ""  # dialled-number (or user name) prefix; "" matches all
    caller: str = ""  # caller prefix; "" matches all

    @property
    def services(self) -> list[str]:
        return [self.service] if isinstance(self.service, str) else list(self.service)


class Config(_Section, frozen=True):
    switch: SwitchConfig = msgspec.field(default_factory=SwitchConfig)
    cluster: Cluster = msgspec.field(default_factory=Cluster)
    database: Database = msgspec.field(default_factory=Database)
    appservers: list[AppServer] = msgspec.field(default_factory=list)
    plan: list[PlanEntry] = msgspec.field(default_factory=list)
    users: list[User] = msgspec.field(default_factory=list)
    routes: list[Route] = msgspec.field(default_factory=list)
    # Each service's own settings, `[services.NAME]` (NAME: the service's `name`),
    # checked at start against its `Config` (twinline.services.registry).
    services: dict[str, Any] = msgspec.field(default_factory=dict)
    trunks: list[Trunk] = msgspec.field(default_factory=list)
    access: Access = msgspec.field(default_factory=Access)
    flood: Flood = msgspec.field(default_factory=Flood)

    def appserver(self, name: str) -> AppServer:
        for server in self.appservers:
            if server.name == name:
                return server
        known = ", ".join(s.name for s in self.appservers) or "none"
        raise ConfigError(f"appservers: no application server named {name!r} (known: {known})")


_PATH_RE = re.compile(r"^\$\.?")


def parse_hostport(text: str, *, default_port: int | None = None) -> tuple[str, int]:
    """Split "host:port", "[v6]:port" or "host" (with a default port). Raises ValueError."""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"{text!r} has an unclosed '['")
        host, rest = text[1:end], text[end + 1 :]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv6 address") from None
        if not rest:
            port_text = None
        elif rest.startswith(":"):
            port_text = rest[1:]
        else:
            raise ValueError(f"{text!r} has text after ']'")
    else:
        if text.count(":") > 1:
            raise ValueError(f"{text!r}: write an IPv6 address in brackets, as [::1]:5060")
        host, _, port_text_ = text.partition(":")
        port_text = port_text_ if _ else None
        if not host or not re.fullmatch(r"[A-Za-z0-9.\-]+", host):
            raise ValueError(f"{text!r} has no valid host")
    if port_text is None:
        if default_port is None:
            raise ValueError(f"{text!r} has no port")
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"{text!r} has an invalid port (1 to 65535)")
    return host, int(port_text)


def parse_listen(text: str) -> tuple[Transport, str, int]:
    """Split "udp:HOST:PORT" into its parts. Raises ValueError."""
    transport, sep, rest = text.partition(":")
    if not sep or transport not in ("udp", "tcp", "tls"):
        raise ValueError(f"{text!r} must start with 'udp:', 'tcp:' or 'tls:'")
    host, port = parse_hostport(rest)
    return transport, host, port  # type: ignore[return-value]


def _check(config: Config) -> None:
    def fail(key: str, problem: str) -> NoReturn:
        raise ConfigError(f"{key}: {problem}")

    sw = config.switch
    if not sw.listen:
        fail("switch.listen", "needs at least one address, as 'udp:127.0.0.1:5060'")
    for i, text in enumerate(sw.listen):
        try:
            transport, host, _ = parse_listen(text)
        except ValueError as e:
            fail(f"switch.listen[{i}]", str(e))
        if transport == "tls" and sw.tls is None:
            fail(f"switch.listen[{i}]", f"{text!r} needs [switch.tls] (certificate and key)")
        if host in ("0.0.0.0", "::") and not sw.advertise:  # noqa: S104 - detecting it
            fail(
                "switch.advertise",
                f"needed with the wildcard listen address {text!r}: the address phones "
                "should use to reach the switch (it goes in Via and Contact)",
            )
    for key, value, low, high in (
        ("switch.limits.max_message_size", sw.limits.max_message_size, 1024, 1 << 20),
        ("switch.limits.max_headers", sw.limits.max_headers, 10, 1000),
        ("switch.limits.max_line_length", sw.limits.max_line_length, 256, 65535),
        ("switch.max_calls", sw.max_calls, 1, 10_000_000),
        ("switch.retry_after", sw.retry_after, 1, 3600),
    ):
        if not low <= value <= high:
            fail(key, f"{value} is out of range ({low} to {high})")
    for key, fvalue in (
        ("switch.no_answer_timeout", sw.no_answer_timeout),
        ("switch.timers.t1", sw.timers.t1),
        ("switch.timers.t2", sw.timers.t2),
        ("switch.timers.t4", sw.timers.t4),
    ):
        if not fvalue > 0:
            fail(key, f"{fvalue} must be greater than 0")
    if not 1 <= sw.min_se <= 86400:
        fail("switch.min_se", f"{sw.min_se} is out of range (1 to 86400; RFC 4028 says 90)")
    if sw.session_expires and not sw.min_se <= sw.session_expires <= 86400:
        fail(
            "switch.session_expires",
            f"{sw.session_expires} is out of range (min_se {sw.min_se} to 86400; 0: off)",
        )
    if sw.max_call_duration < 0:
        fail("switch.max_call_duration", f"{sw.max_call_duration} must not be negative (0: none)")
    for key, fvalue, fhigh in (
        ("switch.dns.ttl", sw.dns.ttl, 86400.0),
        ("switch.dns.negative_ttl", sw.dns.negative_ttl, 3600.0),
        ("switch.dns.timeout", sw.dns.timeout, 60.0),
    ):
        if not 0 < fvalue <= fhigh:
            fail(key, f"{fvalue} is out of range (more than 0, at most {fhigh:g})")
    if sw.timers.t2 < sw.timers.t1:
        fail("switch.timers.t2", f"{sw.timers.t2} must not be less than t1 ({sw.timers.t1})")
    _check_access(config, fail)
    _check_users(config, fail)
    trunks = _check_trunks(config, fail)
    for i, route in enumerate(config.routes):
        if not re.fullmatch(r"[0-9*#+]*", route.prefix):
            fail(f"routes[{i}].prefix", f"{route.prefix!r} may hold only digits, *, # and +")
        if route.trunk:
            if route.target:
                fail(f"routes[{i}].trunk", "give target or trunk, not both")
            trunk = trunks.get(route.trunk)
            if trunk is None:
                known = ", ".join(trunks) or "none"
                fail(f"routes[{i}].trunk", f"no trunk named {route.trunk!r} (known: {known})")
            elif not trunk.target:
                fail(f"routes[{i}].trunk", f"trunk {route.trunk!r} has no target to send calls to")
        elif not route.target:
            fail(f"routes[{i}].target", "missing (give target = 'HOST:PORT', or trunk = 'NAME')")
        else:
            try:
                parse_hostport(route.target)
            except ValueError as e:
                fail(f"routes[{i}].target", str(e))
        if route.strip < 0:
            fail(f"routes[{i}].strip", "must not be negative")
    if sw.tls is not None and sw.tls.verify_clients and sw.tls.ca is None:
        fail("switch.tls.verify_clients", "needs switch.tls.ca, the CA to verify callers with")
    _check_flood(config.flood, fail)
    for key, text in (("switch.link", sw.link), ("switch.http", sw.http)):
        try:
            parse_hostport(text)
        except ValueError as e:
            fail(key, str(e))
    if not _is_loopback(parse_hostport(sw.http)[0]) and not api_token(config):
        fail(
            "switch.api_token",
            f"needed: switch.http {sw.http!r} listens off this host, and drain and "
            "handover must not be open to it (or set TWINLINE_API_TOKEN)",
        )
    cl = config.cluster
    if not cl.secret:
        fail("cluster.secret", "must not be empty")
    if cl.secret == LAPTOP_SECRET:
        link_hosts = [parse_hostport(sw.link)[0]]
        link_hosts += [parse_hostport(a.peer)[0] for a in config.appservers if _hostport_ok(a.peer)]
        if not all(_is_loopback(h) for h in link_hosts):
            fail("cluster.secret", "set a secret of your own: the links leave this host")
    if not cl.heartbeat_interval > 0:
        fail("cluster.heartbeat_interval", f"{cl.heartbeat_interval} must be greater than 0")
    if not 1 <= cl.dead_after <= 100:
        fail("cluster.dead_after", f"{cl.dead_after} is out of range (1 to 100)")
    names: set[str] = set()
    for i, server in enumerate(config.appservers):
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,32}", server.name) or server.name == "switch":
            fail(f"appservers[{i}].name", f"{server.name!r}: use 1 to 32 letters, digits, _ or -")
        if server.name in names:
            fail(f"appservers[{i}].name", f"{server.name!r} appears twice")
        names.add(server.name)
        try:
            parse_hostport(server.peer)
        except ValueError as e:
            fail(f"appservers[{i}].peer", str(e))
        if server.ctl is not None:
            try:
                parse_hostport(server.ctl)
            except ValueError as e:
                fail(f"appservers[{i}].ctl", str(e))
        try:
            server.metrics_address()
        except ValueError as e:
            fail(f"appservers[{i}].metrics", str(e))
        if server.capacity < 1:
            fail(f"appservers[{i}].capacity", "must be at least 1")
    _check_database(config.database)
    from twinline.services.registry import check_services  # noqa: PLC0415 - it imports config

    check_services(config)


_SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")


def _check_database(db: Database) -> None:
    def fail(key: str, problem: str) -> None:
        raise ConfigError(f"{key}: {problem}")

    if not db.url.startswith(("sqlite:///", "postgresql://", "postgres://")):
        fail("database.url", f"{db.url!r}: use sqlite:///FILE or postgresql://...")
    userinfo = db.url.partition("://")[2].partition("/")[0].rpartition("@")[0]
    if ":" in userinfo:
        fail(
            "database.url",
            "holds a password: put it in $TWINLINE_DATABASE_PASSWORD, database.password_file"
            " or $PGPASSWORD instead",
        )
    if not 1 <= db.pool_size <= 100:
        fail("database.pool_size", f"{db.pool_size} is out of range (1 to 100)")
    for key, value in (
        ("database.connect_timeout", db.connect_timeout),
        ("database.statement_timeout", db.statement_timeout),
    ):
        if not value > 0:
            fail(key, f"{value} must be greater than 0")
    if db.sslmode is not None and db.sslmode not in _SSLMODES:
        fail("database.sslmode", f"{db.sslmode!r}: use one of {', '.join(_SSLMODES)}")


def api_token(config: Config) -> str:
    """The HTTP API's bearer token: `switch.api_token`, else TWINLINE_API_TOKEN, else ""."""
    return config.switch.api_token or os.environ.get("TWINLINE_API_TOKEN", "")


_Fail = Callable[[str, str], NoReturn]
_HA1_KEYS = {"MD5": ("ha1_md5", 32), "SHA-256": ("ha1_sha256", 64)}


def _check_access(config: Config, fail: _Fail) -> None:
    access = config.access
    if not access.digest_algorithms:
        fail("access.digest_algorithms", "must offer at least one: 'MD5' or 'SHA-256'")
    for i, name in enumerate(access.digest_algorithms):
        if name.upper() not in _HA1_KEYS:
            fail(f"access.digest_algorithms[{i}]", f"{name!r}: use 'MD5' or 'SHA-256'")
    for i, prefix in enumerate(access.public_numbers):
        if not prefix:
            fail(
                f"access.public_numbers[{i}]",
                "'' would open every number and route to anyone: list the prefixes you mean",
            )
        if not re.fullmatch(r"[0-9*#+]+", prefix):
            fail(f"access.public_numbers[{i}]", f"{prefix!r} may hold only digits, *, # and +")
    if not 10 <= access.nonce_lifetime <= 86400:
        fail("access.nonce_lifetime", f"{access.nonce_lifetime} is out of range (10 to 86400)")


def _check_users(config: Config, fail: _Fail) -> None:
    offered = [a.upper() for a in config.access.digest_algorithms]
    seen: set[str] = set()
    for i, user in enumerate(config.users):
        if not re.fullmatch(r"[A-Za-z0-9_.!~*'()&=+$,;?/%-]+", user.name):
            fail(f"users[{i}].name", f"{user.name!r} is not a valid SIP user name")
        if user.name in seen:
            fail(f"users[{i}].name", f"{user.name!r} appears twice")
        seen.add(user.name)
        hashes = {"ha1_md5": user.ha1_md5, "ha1_sha256": user.ha1_sha256}
        if user.password and any(hashes.values()):
            fail(f"users[{i}].password", "give a password or ha1 hashes, not both")
        if not user.password:
            if not any(hashes.values()):
                fail(f"users[{i}].password", "missing (give password, or ha1_md5 / ha1_sha256)")
            for algorithm in offered:
                key, _ = _HA1_KEYS[algorithm]
                if not hashes[key]:
                    fail(
                        f"users[{i}].{key}", f"needed: access.digest_algorithms offers {algorithm}"
                    )
        for key, length in _HA1_KEYS.values():
            if hashes[key] and not re.fullmatch(rf"[0-9a-fA-F]{{{length}}}", hashes[key]):
                fail(f"users[{i}].{key}", f"must be {length} hexadecimal digits")
        for key, value in (
            ("max_calls", user.max_calls),
            ("calls_per_minute", user.calls_per_minute),
        ):
            if value < 0:
                fail(f"users[{i}].{key}", "must not be negative (0: no limit)")


def _check_trunks(config: Config, fail: _Fail) -> dict[str, Trunk]:
    trunks: dict[str, Trunk] = {}
    for i, trunk in enumerate(config.trunks):
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", trunk.name):
            fail(f"trunks[{i}].name", f"{trunk.name!r}: use 1 to 64 letters, digits, _, . or -")
        if trunk.name in trunks:
            fail(f"trunks[{i}].name", f"{trunk.name!r} appears twice")
        trunks[trunk.name] = trunk
        for j, source in enumerate(trunk.sources):
            try:
                ipaddress.ip_network(source)
            except ValueError as e:
                fail(f"trunks[{i}].sources[{j}]", f"{source!r} is not an address or network ({e})")
        if trunk.target:
            try:
                parse_hostport(trunk.target)
            except ValueError as e:
                fail(f"trunks[{i}].target", str(e))
        elif not trunk.sources:
            fail(f"trunks[{i}]", "give sources (where its calls come from), a target, or both")
        for key, value in (
            ("max_calls", trunk.max_calls),
            ("calls_per_minute", trunk.calls_per_minute),
        ):
            if value < 0:
                fail(f"trunks[{i}].{key}", "must not be negative (0: no limit)")
    return trunks


def _check_flood(flood: Flood, fail: _Fail) -> None:
    for key, value in (
        ("max_requests", flood.max_requests),
        ("max_auth_failures", flood.max_auth_failures),
        ("max_user_auth_failures", flood.max_user_auth_failures),
    ):
        if value < 0:
            fail(f"flood.{key}", "must not be negative (0: no limit)")
    for key, fvalue in (
        ("window", flood.window),
        ("auth_window", flood.auth_window),
        ("ban_seconds", flood.ban_seconds),
    ):
        if not 0 < fvalue <= 86400:
            fail(f"flood.{key}", f"{fvalue} is out of range (more than 0, up to 86400)")


def _hostport_ok(text: str) -> bool:
    try:
        parse_hostport(text)
    except ValueError:
        return False
    return True


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def load_config_text(text: str, *, source: str = "<config>") -> Config:
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{source}: not valid TOML: {e}") from None
    try:
        config = msgspec.convert(document, Config)
    except msgspec.ValidationError as e:
        raise validation_error(e) from None
    _check(config)
    return config


def validation_error(e: msgspec.ValidationError, section: str = "") -> ConfigError:
    """msgspec's complaint about a section, as a ConfigError naming the key."""
    message, _, path = str(e).rpartition(" - at `")
    if not message:
        message, path = str(e), ""
    key = _PATH_RE.sub("", path.rstrip("`"))
    unknown = re.fullmatch(r"Object contains unknown field `(.*)`", message)
    missing = re.fullmatch(r"Object missing required field `(.*)`", message)
    if unknown:
        key = f"{key}.{unknown[1]}" if key else unknown[1]
        message = "unknown key (check its spelling and section)"
    elif missing:
        key = f"{key}.{missing[1]}" if key else missing[1]
        message = "missing (this key is required)"
    if section:
        key = f"{section}.{key}" if key else section
    return ConfigError(f"{key or '(top level)'}: {message}")


def load_config(path: str | Path | None) -> Config:
    """Read and validate a configuration file; None gives the embedded defaults."""
    if path is None:
        return Config()
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{p}: cannot read the configuration file: {e.strerror}") from None
    return load_config_text(text, source=str(p))
