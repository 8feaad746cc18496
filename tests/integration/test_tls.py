"""TLS: SIP over TLS through the switch, TLS on the links, and the configuration's
errors, all with certificates made for the test (see certs.py).

- A caller on TLS (a Python `ssl` phone: Debian's SIPp has no TLS) calls a SIPp
  callee on UDP through a real switch; the switch's certificate is verified by
  the phone, and the switch names TLS in its Contact.
- Links: a connector and an acceptor with the cluster's certificates establish
  (the cluster secret is still proven inside); a member whose certificate the
  cluster's CA did not sign gets no link.
- A bad file under [switch.tls] or [cluster.tls] stops the process with a
  message naming the key.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from pathlib import Path
from typing import Any

import pytest

from twinline.config import ConfigError, LinkTls, load_config_text
from twinline.link import messages as m
from twinline.link.aio import AioLink, connect, serve
from twinline.link.endpoint import Established, HelloReceived, LinkEndpoint, LinkEvent
from twinline.tls import link_contexts

from .certs import Certs, make_certs
from .conftest import StartSwitch
from .sipp import Sipp, scenario
from .switchproc import DOMAIN, HOST, free_port, route, run_switch_once, switch_config, toml_dumps
from .tls_phone import TlsCallee, TlsPhone, answer_one_call, register

SECRET = b"cluster-secret-0123456789abcdef"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


def tls_switch_config(certs: Certs, port: int, tls_port: int, **kw: Any) -> dict[str, Any]:
    config = switch_config(port, http=f"{HOST}:{free_port()}", **kw)
    config["switch"]["listen"].append(f"tls:{HOST}:{tls_port}")
    config["switch"]["tls"] = {"certificate": str(certs.server_cert), "key": str(certs.server_key)}
    return config


# --------------------------------------------------------------------------- SIP over TLS


@pytest.mark.integration
def test_a_call_from_a_tls_phone_to_a_sipp_callee(
    certs: Certs, start_switch: StartSwitch, sipp: Sipp
) -> None:
    callee_port = free_port()
    callee = sipp.start_uas("callee", scenario("uas_answer.xml"), port=callee_port)
    port, tls_port = free_port(), free_port()
    start_switch(
        tls_switch_config(certs, port, tls_port, routes=[route("1", callee_port)]), port=port
    )

    # The phone dials "localhost": the switch's certificate must carry that name.
    phone = TlsPhone("localhost", tls_port, certs.ca).connect()
    try:
        replies = phone.call("1000", DOMAIN, hold=0.3)
    finally:
        phone.close()
    statuses = [r.status for r in replies]
    assert statuses[-2:] == [200, 200], phone.received  # the INVITE's 200, then the BYE's
    assert 180 in statuses, phone.received
    answer = replies[-2]
    assert f"<sip:{HOST}:{tls_port};transport=tls>" == answer.headers["contact"], answer.raw
    assert "m=audio" in answer.raw  # the callee's SDP came through
    callee.wait_for_calls(total=1, timeout=15)
    callee.stop()
    callee.check(successful=1, created=1)


@pytest.mark.integration
def test_a_tls_listener_refuses_a_phone_that_does_not_trust_it(
    certs: Certs, start_switch: StartSwitch, tmp_path: Path
) -> None:
    """The other way round: the switch shows a certificate a phone's CA did not
    sign (a switch impersonated): the phone's handshake fails, nothing is sent."""
    port, tls_port = free_port(), free_port()
    config = tls_switch_config(certs, port, tls_port)
    config["switch"]["tls"] = {"certificate": str(certs.rogue_cert), "key": str(certs.rogue_key)}
    start_switch(config, port=port)
    phone = TlsPhone("localhost", tls_port, certs.ca)
    with pytest.raises(ssl.SSLCertVerificationError):
        phone.connect()


@pytest.mark.integration
def test_verify_clients_refuses_a_phone_without_a_certificate_and_takes_one_with(
    certs: Certs, start_switch: StartSwitch, sipp: Sipp
) -> None:
    callee_port = free_port()
    callee = sipp.start_uas("callee", scenario("uas_answer.xml"), port=callee_port)
    port, tls_port = free_port(), free_port()
    config = tls_switch_config(certs, port, tls_port, routes=[route("1", callee_port)])
    config["switch"]["tls"].update(ca=str(certs.ca), verify_clients=True)
    start_switch(config, port=port)

    anonymous = TlsPhone("localhost", tls_port, certs.ca, timeout=5).connect()
    try:
        # TLS 1.3: the server judges the client's (absent) certificate after the
        # client's handshake is done, so the refusal shows on the first read.
        with pytest.raises((ssl.SSLError, ConnectionError)):
            anonymous.call("1000", DOMAIN)
    finally:
        anonymous.close()
    phone = TlsPhone(
        "localhost", tls_port, certs.ca, cert=certs.client_cert, key=certs.client_key
    ).connect()
    try:
        replies = phone.call("1000", DOMAIN, hold=0.1)
    finally:
        phone.close()
    assert [r.status for r in replies][-2:] == [200, 200], phone.received
    callee.wait_for_calls(total=1, timeout=15)
    callee.stop()
    callee.check(successful=1, created=1)


@pytest.mark.integration
def test_a_phone_registered_over_tls_is_called_over_its_connection(
    certs: Certs, start_switch: StartSwitch, sipp: Sipp
) -> None:
    """A phone REGISTERs over TLS (digest-authenticated); a SIPp caller on UDP
    calls it, and the switch reaches it over the TLS connection it registered on
    (RFC 5626's flow), whatever port its Contact names."""
    port, tls_port = free_port(), free_port()
    config = tls_switch_config(
        certs, port, tls_port, users=[{"name": "alice", "password": "alice-secret"}]
    )
    switch = start_switch(config, port=port)
    phone = TlsPhone("localhost", tls_port, certs.ca).connect()
    try:
        reply = register(phone, "alice", "alice-secret", DOMAIN)
        assert reply.status == 200, phone.received
        caller = sipp.start_uac(
            "caller", scenario("uac_call.xml"), switch.address, port=free_port(),
            calls=1, rate=1, service="alice", timeout_s=30,
        )  # fmt: skip
        methods = answer_one_call(phone)
        caller.finish()
        caller.check(successful=1, created=1)
    finally:
        phone.close()
    assert methods == ["INVITE", "ACK", "BYE"], phone.received
    invite = next(m for m in phone.received if m.startswith("INVITE "))
    assert "Via: SIP/2.0/TLS " in invite, invite
    assert f"<sip:{HOST}:{tls_port};transport=tls>" in invite, invite  # the switch's Contact


@pytest.mark.integration
def test_a_route_to_a_tls_trunk_verifies_it_and_carries_the_call(
    certs: Certs, start_switch: StartSwitch, sipp: Sipp
) -> None:
    """SIPp calls over UDP; the switch dials the trunk over TLS by the name in the
    route ("localhost"), checking the trunk's certificate against switch.tls.ca."""
    trunk = TlsCallee(certs.server_cert, certs.server_key).start()
    try:
        port, tls_port = free_port(), free_port()
        config = tls_switch_config(certs, port, tls_port)
        config["switch"]["tls"]["ca"] = str(certs.ca)
        config["routes"] = [
            {"prefix": "1", "target": f"localhost:{trunk.port}", "transport": "tls"}
        ]
        switch = start_switch(config, port=port)
        caller = sipp.run_uac(
            "caller", scenario("uac_call.xml"), switch.address, port=free_port(),
            calls=2, rate=5, service="1000", timeout_s=30,
        )  # fmt: skip
        caller.check(successful=2, created=2)
    finally:
        trunk.close()
    assert trunk.requests == ["INVITE", "ACK", "BYE"] * 2, trunk.requests
    invite = trunk.received[0]
    assert invite.startswith(f"INVITE sip:1000@localhost:{trunk.port} SIP/2.0"), invite
    assert "Via: SIP/2.0/TLS " in invite, invite
    assert "transport=tls>" in invite, invite  # the switch's Contact: come back over TLS


@pytest.mark.integration
def test_a_tls_trunk_with_an_untrusted_certificate_is_never_sent_the_call(
    certs: Certs, start_switch: StartSwitch, sipp: Sipp
) -> None:
    trunk = TlsCallee(certs.rogue_cert, certs.rogue_key).start()
    try:
        port, tls_port = free_port(), free_port()
        config = tls_switch_config(certs, port, tls_port)
        config["switch"]["tls"]["ca"] = str(certs.ca)
        config["routes"] = [
            {"prefix": "1", "target": f"localhost:{trunk.port}", "transport": "tls"}
        ]
        switch = start_switch(config, port=port)
        # The caller hears 480: the trunk could not be reached (securely).
        caller = sipp.run_uac(
            "caller", scenario("uac_no_answer.xml"), switch.address, port=free_port(),
            calls=1, rate=1, service="1000", timeout_s=30,
        )  # fmt: skip
        caller.check(successful=1, created=1)
    finally:
        trunk.close()
    assert trunk.requests == [], trunk.requests
    assert trunk.handshake_errors >= 1
    assert "cannot connect to" in switch.stderr(), switch.stderr_tail()


# --------------------------------------------------------------------------- configuration


def _refused(config: dict[str, Any] | str, tmp_path: Path) -> str:
    text = config if isinstance(config, str) else toml_dumps(config)
    status, _, stderr = run_switch_once(text, tmp_path)
    assert status != 0, stderr
    assert "Traceback" not in stderr, stderr
    return stderr


@pytest.mark.integration
@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"certificate": "/nonexistent/cert.pem"}, "switch.tls.certificate: cannot read"),
        ({"certificate": "KEYFILE"}, "switch.tls.certificate: "),
        ({"key": "/nonexistent/key.pem"}, "switch.tls.key: cannot read"),
        ({"key": "CLIENTKEY"}, "switch.tls.key: "),
        ({"ca": "/nonexistent/ca.pem"}, "switch.tls.ca: cannot read"),
    ],
    ids=["missing-certificate", "not-a-certificate", "missing-key", "wrong-key", "missing-ca"],
)
def test_a_bad_tls_file_is_refused_naming_its_key(
    certs: Certs, tmp_path: Path, change: dict[str, str], expected: str
) -> None:
    config = tls_switch_config(certs, free_port(), free_port())
    files = {"KEYFILE": str(certs.server_key), "CLIENTKEY": str(certs.client_key)}
    for key, value in change.items():
        config["switch"]["tls"][key] = files.get(value, value)
    stderr = _refused(config, tmp_path)
    assert expected in stderr, stderr
    if change.get("key") == "CLIENTKEY":
        assert "does not match the certificate" in stderr, stderr
    if change.get("certificate") == "KEYFILE":
        assert "holds no PEM certificate" in stderr, stderr


def test_config_a_tls_listener_needs_its_certificate() -> None:
    with pytest.raises(ConfigError, match=r"switch.listen\[1\]: .* needs \[switch.tls\]"):
        load_config_text('[switch]\nlisten = ["udp:127.0.0.1:5060", "tls:127.0.0.1:5061"]\n')
    with pytest.raises(ConfigError, match=r"switch\.tls\.verify_clients: needs switch\.tls\.ca"):
        load_config_text(
            '[switch.tls]\ncertificate = "c.pem"\nkey = "k.pem"\nverify_clients = true\n'
        )
    with pytest.raises(ConfigError, match=r"cluster\.tls\.ca: missing"):
        load_config_text('[cluster.tls]\ncertificate = "c.pem"\nkey = "k.pem"\n')


def test_cluster_tls_files_are_checked_naming_the_key(certs: Certs) -> None:
    good = {"certificate": str(certs.server_cert), "key": str(certs.server_key)}
    with pytest.raises(ConfigError, match=r"cluster\.tls\.ca: .* holds no PEM certificate"):
        link_contexts(LinkTls(**good, ca=str(certs.server_key)))
    with pytest.raises(ConfigError, match=r"cluster\.tls\.key: .* does not match"):
        link_contexts(
            LinkTls(certificate=str(certs.server_cert), key=str(certs.client_key), ca=str(certs.ca))
        )


# --------------------------------------------------------------------------- links


class Recorder:
    def __init__(self) -> None:
        self.events: list[LinkEvent] = []
        self.changed = asyncio.Event()

    def __call__(self, link: AioLink, event: LinkEvent) -> None:
        self.events.append(event)
        if isinstance(event, HelloReceived):
            link.accept([])
        self.changed.set()

    async def established(self, within: float = 3.0) -> bool:
        async def wait() -> None:
            while not any(isinstance(e, Established) for e in self.events):
                self.changed.clear()
                await self.changed.wait()

        try:
            await asyncio.wait_for(wait(), within)
        except TimeoutError:
            return False
        return True


def _endpoints() -> tuple[LinkEndpoint, LinkEndpoint]:
    switch = LinkEndpoint(
        "acceptor", secret=SECRET, name="switch", incarnation=1, receives=m.CtlToSwitch
    )
    server = LinkEndpoint(
        "connector", secret=SECRET, name="as1", incarnation=2, receives=m.CtlToServer
    )
    return switch, server


def test_links_over_mutual_tls(certs: Certs) -> None:
    cluster = LinkTls(
        certificate=str(certs.server_cert), key=str(certs.server_key), ca=str(certs.ca)
    )
    rogue = LinkTls(certificate=str(certs.rogue_cert), key=str(certs.rogue_key), ca=str(certs.ca))

    async def main() -> None:
        acceptor_tls, connector_tls = link_contexts(cluster)
        switch_side = Recorder()
        switch_ep, server_ep = _endpoints()
        server = await serve("127.0.0.1", 0, lambda: switch_ep, switch_side, tls=acceptor_tls)
        port = int(server.sockets[0].getsockname()[1])
        appserver = Recorder()
        link = await connect("127.0.0.1", port, server_ep, appserver, tls=connector_tls)
        assert await appserver.established() and await switch_side.established()
        assert link.peer_name == "switch"
        link.close("done")

        # A member with a certificate from another CA: the acceptor refuses it, so no
        # Hello ever reaches an endpoint (whatever secret it knows).
        _, rogue_connector = link_contexts(rogue)
        intruder_side = Recorder()
        switch_side.events.clear()
        _, intruder_ep = _endpoints()
        with contextlib.suppress(OSError):  # TLS 1.2 would refuse within the handshake
            await connect("127.0.0.1", port, intruder_ep, intruder_side, tls=rogue_connector)
        assert not await intruder_side.established(1.0)
        assert not any(isinstance(e, HelloReceived) for e in switch_side.events)

        # And a connector that trusts another CA does not take the acceptor's word.
        other_ca = LinkTls(
            certificate=str(certs.rogue_cert), key=str(certs.rogue_key), ca=str(certs.rogue_ca)
        )
        _, distrustful = link_contexts(other_ca)
        _, ep = _endpoints()
        with pytest.raises(ssl.SSLCertVerificationError):
            await connect("127.0.0.1", port, ep, Recorder(), tls=distrustful)
        server.close()
        await server.wait_closed()

    asyncio.run(main())
