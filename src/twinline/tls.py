"""TLS contexts from the configuration, for SIP (`[switch.tls]`) and the links
(`[cluster.tls]`).

The files are read when a process starts, by the process that uses them (a server on
another host needs only the cluster's files), and every problem is a `ConfigError`
naming the key: a file missing or unreadable, a certificate that is none, a key that
does not match its certificate.
"""

from __future__ import annotations

import ssl

from twinline.config import ConfigError, LinkTls, SipTls

# TLS 1.0 and 1.1 are deprecated (RFC 8996); SIP over TLS and the links use 1.2 or later.
MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2


def _readable(key: str, path: str) -> None:
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as e:
        raise ConfigError(f"{key}: cannot read {path!r}: {e.strerror or e}") from None


def _load_chain(ctx: ssl.SSLContext, section: str, certificate: str, key: str) -> None:
    _readable(f"{section}.certificate", certificate)
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        probe.load_verify_locations(cafile=certificate)
    except ssl.SSLError:
        raise ConfigError(
            f"{section}.certificate: {certificate!r} holds no PEM certificate"
        ) from None
    _readable(f"{section}.key", key)
    try:
        ctx.load_cert_chain(certificate, key)
    except ssl.SSLError as e:
        if "KEY_VALUES_MISMATCH" in str(e) or e.reason == "KEY_VALUES_MISMATCH":
            raise ConfigError(
                f"{section}.key: {key!r} does not match the certificate in {certificate!r}"
            ) from None
        raise ConfigError(
            f"{section}.key: {key!r} holds no usable private key (unencrypted PEM) "
            f"for {certificate!r}: {e.reason or e}"
        ) from None


def _load_ca(ctx: ssl.SSLContext, key: str, path: str) -> None:
    _readable(key, path)
    try:
        ctx.load_verify_locations(cafile=path)
    except ssl.SSLError:
        raise ConfigError(f"{key}: {path!r} holds no PEM certificate") from None


def _context(purpose: ssl.Purpose) -> ssl.SSLContext:
    server = purpose is ssl.Purpose.CLIENT_AUTH
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = MINIMUM_VERSION
    return ctx


def link_contexts(tls: LinkTls) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(acceptor, connector) contexts for the links: mutual TLS, both sides verified
    against the cluster's CA only, the connector checking the name it dialled."""
    section = "cluster.tls"
    server = _context(ssl.Purpose.CLIENT_AUTH)
    client = _context(ssl.Purpose.SERVER_AUTH)
    for ctx in (server, client):
        _load_chain(ctx, section, tls.certificate, tls.key)
        _load_ca(ctx, f"{section}.ca", tls.ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
    client.check_hostname = True
    return server, client


def sip_server_context(tls: SipTls) -> ssl.SSLContext:
    """For `tls:` listeners: the switch's certificate; the caller's checked only with
    `verify_clients`."""
    ctx = _context(ssl.Purpose.CLIENT_AUTH)
    _load_chain(ctx, "switch.tls", tls.certificate, tls.key)
    if tls.ca is not None:
        _load_ca(ctx, "switch.tls.ca", tls.ca)
    if tls.verify_clients:  # with a CA: the configuration's check saw to it
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def sip_client_context(tls: SipTls | None) -> ssl.SSLContext:
    """For TLS connections the switch opens: the peer's certificate verified against
    `switch.tls.ca` (else the system's trust store) and the host it was dialled by;
    the switch's own certificate shown when the peer asks for one."""
    ctx = _context(ssl.Purpose.SERVER_AUTH)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.check_hostname = True
    if tls is None:
        ctx.load_default_certs()
        return ctx
    _load_chain(ctx, "switch.tls", tls.certificate, tls.key)
    if tls.ca is not None:
        _load_ca(ctx, "switch.tls.ca", tls.ca)
    else:
        ctx.load_default_certs()
    return ctx
