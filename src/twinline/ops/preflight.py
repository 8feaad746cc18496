"""What a configuration needs from this host, checked before anything starts.

`load_config` checks the file alone (types, keys, addresses, references). Before a
process starts, `preflight` checks what only the host can tell: that every address
it will listen on is free and is an address of this host, that no two keys name the
same port, that the TLS files load, and that the database's directory exists. Each
problem is one `ConfigError` naming the key, as the file's own errors do.

`twinline config check FILE` runs both for every process of the file (as `twinline
up` would start them here); `twinline up` runs it before starting anything, and
`twinline switch` and `twinline appserver NAME` for their own addresses.
"""

from __future__ import annotations

import errno
import socket
from pathlib import Path
from typing import Literal

from twinline.config import Config, ConfigError, parse_hostport, parse_listen

Kind = Literal["udp", "tcp"]
# Which processes' addresses to check: every one ("all"), the switch's, or one server's.
Role = str


def listen_addresses(config: Config, role: Role = "all") -> list[tuple[str, Kind, str, int]]:
    """(key, socket kind, host, port) of every address the processes of `role` bind."""
    out: list[tuple[str, Kind, str, int]] = []
    sw = config.switch
    if role in ("all", "switch"):
        for i, text in enumerate(sw.listen):
            transport, host, port = parse_listen(text)
            out.append((f"switch.listen[{i}]", "udp" if transport == "udp" else "tcp", host, port))
        if config.appservers:
            out.append(("switch.link", "tcp", *parse_hostport(sw.link)))
        out.append(("switch.http", "tcp", *parse_hostport(sw.http)))
    for i, server in enumerate(config.appservers):
        if role in ("all", server.name):
            out.append((f"appservers[{i}].peer", "tcp", *parse_hostport(server.peer)))
            out.append((f"appservers[{i}].metrics", "tcp", *server.metrics_address()))
    return out


def _check_clashes(addresses: list[tuple[str, Kind, str, int]]) -> None:
    seen: dict[tuple[Kind, str, int], str] = {}
    for key, kind, host, port in addresses:
        first = seen.setdefault((kind, host, port), key)
        if first != key:
            raise ConfigError(f"{key}: {host}:{port} ({kind}) is {first} already")
    # A wildcard takes the port on every address of the host.
    for key, kind, host, port in addresses:
        if host in ("0.0.0.0", "::"):  # noqa: S104 - detecting it
            for other, okind, _, oport in addresses:
                if other != key and okind == kind and oport == port:
                    raise ConfigError(
                        f"{other}: port {port} ({kind}) is taken on every address by {key}"
                    )


def _check_free(key: str, kind: Kind, host: str, port: int) -> None:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except OSError as e:
        raise ConfigError(f"{key}: cannot resolve {host!r}: {e}") from None
    family, _, _, _, sockaddr = infos[0]
    sock = socket.socket(family, socket.SOCK_DGRAM if kind == "udp" else socket.SOCK_STREAM)
    try:
        if kind == "tcp":
            # As the servers do: a connection of the last run in TIME_WAIT is no conflict.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(sockaddr)
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise ConfigError(
                f"{key}: {host}:{port} ({kind}) is in use: another process listens there"
            ) from None
        if e.errno == errno.EADDRNOTAVAIL:
            raise ConfigError(f"{key}: {host} is not an address of this host") from None
        if e.errno == errno.EACCES:
            raise ConfigError(
                f"{key}: port {port} needs privileges this user does not have"
            ) from None
        raise ConfigError(f"{key}: cannot listen on {host}:{port}: {e.strerror or e}") from None
    finally:
        sock.close()


def _check_tls(config: Config, role: Role) -> None:
    from twinline import tls  # noqa: PLC0415 - only a configuration with TLS needs it

    if config.switch.tls is not None and role in ("all", "switch"):
        tls.sip_server_context(config.switch.tls)
    if config.cluster.tls is not None:
        tls.link_contexts(config.cluster.tls)


def _check_database(config: Config, role: Role) -> None:
    url = config.database.url
    if not url.startswith("sqlite:///") or (role == "switch" and not config.appservers):
        return  # a switch alone opens no database
    path = Path(url.removeprefix("sqlite:///"))
    if not path.parent.is_dir():
        raise ConfigError(f"database.url: the directory {str(path.parent)!r} does not exist")


def preflight(config: Config, role: Role = "all") -> None:
    """Raise ConfigError for the first thing this host cannot give the processes of
    `role`: "all", "switch", or an application server's name."""
    addresses = listen_addresses(config, role)
    _check_clashes(addresses)
    _check_tls(config, role)
    _check_database(config, role)
    for address in addresses:
        _check_free(*address)
