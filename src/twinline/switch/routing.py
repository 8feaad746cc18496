"""The routing plan: what a dialled number or user name reaches.

A destination is resolved to a list of `Target`s that the switch tries in turn: the
live contacts of a registered user (best first), or the one PBX or trunk whose static
route has the longest matching prefix. Resolution is pure (no I/O); the location
service is read, not written.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from twinline.config import Config, Route, parse_hostport
from twinline.sip.errors import SipParseError
from twinline.sip.message import parse_uri
from twinline.sip.transaction import Address


@dataclass(frozen=True, slots=True)
class DestinationOptions:
    """How the switch calls a destination (a service's route options)."""

    ring_timeout: float = 0.0  # seconds before it moves on; 0: the switch's no-answer timeout
    caller_id: str = ""  # the user part presented in From and P-Asserted-Identity
    caller_name: str = ""  # the display name presented with it
    diversion: str = ""  # an RFC 5806 reason: the call is being forwarded
    diverted_from: str = ""  # the diverting party's user part; "": the number dialled
    history_info: bool = False  # History-Info (RFC 7044) rather than Diversion


NO_OPTIONS = DestinationOptions()


@dataclass(frozen=True, slots=True)
class Target:
    uri: str  # the B-leg's Request-URI
    address: Address  # where the B-leg INVITE is sent
    label: str  # what it is, for logs and CDRs: "user:alice", "route:1"
    destination: str = ""  # the user name or number it was resolved from
    options: DestinationOptions = NO_OPTIONS


class Binding(Protocol):
    @property
    def contact(self) -> str: ...

    @property
    def source(self) -> tuple[str, str, int]: ...


class Location(Protocol):
    def lookup(self, user: str, now: float) -> Sequence[Binding]: ...


class NoRoute(Exception):
    """The destination cannot be reached; `status` and `reason` answer the caller."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason


def format_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def address_of_uri(uri: str) -> Address:
    """Where a request for `uri` goes (RFC 3263 without DNS: host, port, transport)."""
    parsed = parse_uri(uri)
    transport = parsed.transport
    if transport not in ("udp", "tcp", "tls"):
        raise SipParseError(f"Unsupported transport {transport}", status=416)
    return (transport, parsed.host, parsed.port or (5061 if transport == "tls" else 5060))


class RoutingPlan:
    def __init__(self, config: Config, location: Location) -> None:
        self.users = {u.name for u in config.users}
        self.location = location
        # Longest prefix first, so the first match wins.
        self.routes: list[Route] = sorted(config.routes, key=lambda r: -len(r.prefix))
        trunks = {t.name: t for t in config.trunks}
        # A route naming a trunk takes the trunk's target and transport.
        self._route_targets: dict[int, Address] = {}
        for r in self.routes:
            transport, target = (
                (trunks[r.trunk].transport, trunks[r.trunk].target)
                if r.trunk
                else (r.transport, r.target)
            )
            port = 5061 if transport == "tls" else 5060
            self._route_targets[id(r)] = (transport, *parse_hostport(target, default_port=port))

    def resolve(
        self, dialled: str, now: float, options: DestinationOptions = NO_OPTIONS
    ) -> list[Target]:
        """Targets for a dialled user or number, best first. Raises NoRoute."""
        if dialled in self.users:
            targets = []
            for binding in self.location.lookup(dialled, now):
                try:
                    address = address_of_uri(binding.contact)
                except SipParseError:
                    continue
                if address[0] in ("tcp", "tls") and binding.source[0] == address[0]:
                    # A phone on TCP is reached over the connection it registered on
                    # (RFC 5626's flow): its Contact port is often not listening.
                    address = binding.source
                targets.append(
                    Target(binding.contact, address, f"user:{dialled}", dialled, options)
                )
            if not targets:
                raise NoRoute(480, "Temporarily Unavailable")
            return targets
        for route in self.routes:
            if dialled.startswith(route.prefix):
                transport, host, port = self._route_targets[id(route)]
                number = route.add + dialled[route.strip :]
                # TLS to a trunk is hop by hop (RFC 5630 3.1.3): a SIP URI, sent over TLS.
                params = ";transport=tcp" if transport == "tcp" else ""
                uri = f"sip:{number}@{format_host(host)}:{port}{params}"
                address = (transport, host, port)
                return [Target(uri, address, f"route:{route.prefix}", dialled, options)]
        raise NoRoute(404, "Not Found")
