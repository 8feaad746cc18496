"""The registrar (RFC 3261 10.3) driven with REGISTER bytes and a stepped clock."""

from __future__ import annotations

import hashlib
import itertools

import pytest

from twinline.sip.digest import DigestAuthenticator
from twinline.sip.message import Request, Response, parse_message, parse_name_addr
from twinline.switch.registrar import Binding, LocationService, Registrar

REALM = "twinline.local"
SECRET = b"registrar-test-secret-0123456789"
PASSWORDS = {"alice": "secret", "bob": "hunter2"}
SOURCE = ("udp", "192.0.2.10", 5070)
CONTACT = "sip:alice@192.0.2.10:5070"
CALL_ID = "reg-1@192.0.2.10"


def md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()  # noqa: S324 - the protocol's hash


def register_bytes(
    *,
    to_user: str = "alice",
    contacts: list[str] | None = None,
    expires: str | None = None,
    call_id: str = CALL_ID,
    cseq: int = 1,
    authorization: list[str] | None = None,
    extra: list[str] | None = None,
) -> bytes:
    lines = [
        f"REGISTER sip:{REALM} SIP/2.0",
        "Via: SIP/2.0/UDP 192.0.2.10:5070;branch=z9hG4bK-1",
        "Max-Forwards: 70",
        f"From: <sip:{to_user}@{REALM}>;tag=from1",
        f"To: <sip:{to_user}@{REALM}>",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} REGISTER",
    ]
    lines += [f"Contact: {c}" for c in (contacts if contacts is not None else [f"<{CONTACT}>"])]
    if expires is not None:
        lines.append(f"Expires: {expires}")
    lines += [f"Authorization: {a}" for a in authorization or []]
    lines += extra or []
    lines += ["Content-Length: 0", "", ""]
    return "\r\n".join(lines).encode()


def as_request(data: bytes) -> Request:
    msg = parse_message(data)
    assert isinstance(msg, Request)
    return msg


def register(**kw) -> Request:
    return as_request(register_bytes(**kw))


def answer(challenge: str, user: str, password: str, nc: int = 1) -> str:
    """A client's Authorization for a WWW-Authenticate value, computed independently."""
    start = challenge.index('nonce="') + len('nonce="')
    nonce = challenge[start : challenge.index('"', start)]
    uri = f"sip:{REALM}"
    cnonce = "0a4f113b"
    ha1 = md5(f"{user}:{REALM}:{password}")
    ha2 = md5(f"REGISTER:{uri}")
    resp = md5(f"{ha1}:{nonce}:{nc:08x}:{cnonce}:auth:{ha2}")
    return (
        f'Digest username="{user}", realm="{REALM}", nonce="{nonce}", uri="{uri}", '
        f'response="{resp}", algorithm=MD5, cnonce="{cnonce}", qop=auth, nc={nc:08x}'
    )


class Phone:
    """Drives a registrar as a phone would: challenged once, then reusing its nonce."""

    def __init__(self, registrar: Registrar, user: str = "alice", pw: str | None = None):
        self.registrar = registrar
        self.user = user
        self.password = PASSWORDS[user] if pw is None else pw
        self.challenge: str | None = None
        self.nc = itertools.count(1)
        self.cseq = itertools.count(1)

    def send(self, now: float, **kw) -> Response:
        kw.setdefault("to_user", self.user)
        kw.setdefault("cseq", next(self.cseq))
        if self.challenge is not None:
            kw["authorization"] = [answer(self.challenge, self.user, self.password, next(self.nc))]
        resp = self.registrar.handle(register(**kw), SOURCE, now)
        if resp.status == 401:
            self.challenge = resp.get_all("WWW-Authenticate")[0]
            self.nc = itertools.count(1)
            kw["cseq"] = next(self.cseq)
            kw["authorization"] = [answer(self.challenge, self.user, self.password, next(self.nc))]
            resp = self.registrar.handle(register(**kw), SOURCE, now)
        return resp


def make_registrar(**kw) -> Registrar:
    auth = DigestAuthenticator(REALM, SECRET)
    return Registrar(REALM, PASSWORDS, auth, LocationService(), **kw)


def contacts_of(resp: Response) -> list[str]:
    return resp.get_all("Contact")


# --- authentication ---------------------------------------------------------------


def test_unauthenticated_register_is_challenged():
    reg = make_registrar()
    resp = reg.handle(register(), SOURCE, 1000.0)
    assert (resp.status, resp.reason) == (401, "Unauthorized")
    [value] = resp.get_all("WWW-Authenticate")
    assert value.startswith(f'Digest realm="{REALM}", nonce="')
    assert value.endswith(', algorithm=MD5, qop="auth"')
    assert resp.to_tag
    assert parse_name_addr(resp.get("To") or "").tag == resp.to_tag
    assert resp.call_id == CALL_ID
    assert resp.get("CSeq") == "1 REGISTER"
    assert len(reg.location) == 0


def test_register_after_challenge_binds_and_lists():
    reg = make_registrar()
    phone = Phone(reg)
    resp = phone.send(1000.0)
    assert (resp.status, resp.reason) == (200, "OK")
    assert contacts_of(resp) == [f"<{CONTACT}>;expires=3600"]
    assert resp.to_tag
    [b] = reg.location.lookup("alice", 1000.0)
    assert b == Binding(
        user="alice",
        contact=CONTACT,
        key=b.key,
        expires_at=4600.0,
        call_id=CALL_ID,
        cseq=2,
        q=1.0,
        source=SOURCE,
        registered_at=1000.0,
    )


def test_sipp_shaped_register_with_ip_addresses():
    # SIPp puts the switch's address where a phone would put the domain.
    reg = make_registrar()
    raw = (
        "REGISTER sip:127.0.0.1:5060 SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-1-0\r\n"
        "From: alice <sip:alice@127.0.0.1:5060>;tag=1\r\n"
        "To: alice <sip:alice@127.0.0.1:5060>\r\n"
        "Call-ID: 1-1@127.0.0.1\r\n"
        "CSeq: 1 REGISTER\r\n"
        "Contact: sip:alice@127.0.0.1:5070\r\n"
        "Max-Forwards: 70\r\n"
        "Expires: 120\r\n"
        "Content-Length: 0\r\n\r\n"
    )
    first = reg.handle(as_request(raw.encode()), SOURCE, 10.0)
    assert first.status == 401
    challenge = first.get_all("WWW-Authenticate")[0]
    start = challenge.index('nonce="') + len('nonce="')
    nonce = challenge[start : challenge.index('"', start)]
    uri = "sip:127.0.0.1:5060"
    ha1, ha2 = md5(f"alice:{REALM}:secret"), md5(f"REGISTER:{uri}")
    resp = md5(f"{ha1}:{nonce}:00000001:abcd:auth:{ha2}")
    auth = (
        f'Authorization: Digest username="alice",realm="{REALM}",cnonce="abcd",nc=00000001,'
        f'qop=auth,uri="{uri}",nonce="{nonce}",response="{resp}",algorithm=MD5\r\n'
    )
    second = raw.replace("CSeq: 1", "CSeq: 2").replace("Content-Length", auth + "Content-Length")
    ok = reg.handle(as_request(second.encode()), SOURCE, 10.5)
    assert ok.status == 200
    assert contacts_of(ok) == ["<sip:alice@127.0.0.1:5070>;expires=120"]


def test_unknown_user_is_404_before_authentication():
    reg = make_registrar()
    resp = reg.handle(register(to_user="carol"), SOURCE, 1.0)
    assert (resp.status, resp.reason) == (404, "Not Found")
    assert resp.to_tag


def test_hidden_unknown_user_is_challenged_then_forbidden():
    reg = make_registrar(hide_unknown_users=True)
    first = reg.handle(register(to_user="carol"), SOURCE, 1.0)
    assert first.status == 401
    challenge = first.get_all("WWW-Authenticate")[0]
    creds = answer(challenge, "carol", "guess")
    resp = reg.handle(register(to_user="carol", cseq=2, authorization=[creds]), SOURCE, 2.0)
    assert (resp.status, resp.reason) == (403, "Forbidden")


def test_wrong_password_is_403():
    reg = make_registrar()
    resp = Phone(reg, pw="wrong").send(1.0)
    assert (resp.status, resp.reason) == (403, "Forbidden")
    assert len(reg.location) == 0


def test_authenticated_user_must_be_the_to_user():
    reg = make_registrar()
    challenge = reg.handle(register(), SOURCE, 1.0).get_all("WWW-Authenticate")[0]
    bob_creds = answer(challenge, "bob", "hunter2")
    resp = reg.handle(register(to_user="alice", cseq=2, authorization=[bob_creds]), SOURCE, 2.0)
    assert (resp.status, resp.reason) == (403, "Forbidden")
    assert reg.location.lookup("alice", 2.0) == []


def test_stale_nonce_gets_a_stale_challenge():
    reg = make_registrar()
    phone = Phone(reg)
    assert phone.send(0.0).status == 200
    # 400 s later the nonce (lifetime 300 s) is stale: the phone is re-challenged.
    creds = answer(phone.challenge or "", "alice", "secret", nc=9)
    resp = reg.handle(register(cseq=10, authorization=[creds]), SOURCE, 400.0)
    assert resp.status == 401
    [value] = resp.get_all("WWW-Authenticate")
    assert value.endswith(', algorithm=MD5, qop="auth", stale=true')


def test_replayed_request_gets_a_stale_challenge():
    reg = make_registrar()
    challenge = reg.handle(register(), SOURCE, 1.0).get_all("WWW-Authenticate")[0]
    creds = answer(challenge, "alice", "secret", nc=1)
    assert reg.handle(register(cseq=2, authorization=[creds]), SOURCE, 2.0).status == 200
    # The same credentials in a new request (another Call-ID, so not a CSeq matter).
    replay = register(cseq=3, call_id="other@x", authorization=[creds])
    resp = reg.handle(replay, SOURCE, 3.0)
    assert resp.status == 401
    assert resp.get_all("WWW-Authenticate")[0].endswith("stale=true")


def test_forged_nonce_gets_a_fresh_challenge():
    reg = make_registrar()
    fake = 'Digest realm="x", nonce="' + "0" * 64 + '"'
    creds = answer(fake, "alice", "secret")
    resp = reg.handle(register(authorization=[creds]), SOURCE, 1.0)
    assert resp.status == 401
    assert not resp.get_all("WWW-Authenticate")[0].endswith("stale=true")


def test_credentials_for_another_realm_are_ignored():
    reg = make_registrar()
    challenge = reg.handle(register(), SOURCE, 1.0).get_all("WWW-Authenticate")[0]
    other = (
        'Digest username="alice", realm="carrier.example", nonce="n", uri="sip:x", '
        'response="00000000000000000000000000000000"'
    )
    ours = answer(challenge, "alice", "secret")
    resp = reg.handle(register(cseq=2, authorization=[other, ours]), SOURCE, 2.0)
    assert resp.status == 200
    only_other = reg.handle(register(cseq=3, authorization=[other]), SOURCE, 3.0)
    assert only_other.status == 401


def test_malformed_authorization_is_400():
    reg = make_registrar()
    resp = reg.handle(register(authorization=['Digest username="alice'], cseq=1), SOURCE, 1.0)
    assert (resp.status, resp.reason) == (400, "Malformed Authorization header")


def test_required_extension_is_420():
    reg = make_registrar()
    resp = reg.handle(register(extra=["Require: path, outbound"]), SOURCE, 1.0)
    assert (resp.status, resp.reason) == (420, "Bad Extension")
    assert resp.get("Unsupported") == "path, outbound"


def test_not_a_register_is_a_caller_bug():
    raw = register_bytes().replace(b"REGISTER", b"OPTIONS")
    with pytest.raises(ValueError):
        make_registrar().handle(as_request(raw), SOURCE, 1.0)


# --- expiry intervals -------------------------------------------------------------


def test_contact_expires_param_overrides_the_header():
    phone = Phone(make_registrar())
    resp = phone.send(0.0, contacts=[f"<{CONTACT}>;expires=600"], expires="1800")
    assert contacts_of(resp) == [f"<{CONTACT}>;expires=600"]


def test_expires_header_applies_without_a_param():
    phone = Phone(make_registrar())
    resp = phone.send(0.0, expires="1800")
    assert contacts_of(resp) == [f"<{CONTACT}>;expires=1800"]


def test_too_brief_interval_is_423_and_changes_nothing():
    reg = make_registrar()
    phone = Phone(reg)
    assert phone.send(0.0).status == 200
    resp = phone.send(1.0, contacts=["<sip:alice@192.0.2.99>", f"<{CONTACT}>;expires=30"])
    assert (resp.status, resp.reason) == (423, "Interval Too Brief")
    assert resp.get("Min-Expires") == "60"
    assert resp.get_all("Contact") == []
    assert [b.contact for b in reg.location.lookup("alice", 1.0)] == [CONTACT]


def test_interval_above_max_is_clamped():
    reg = make_registrar()
    resp = Phone(reg).send(0.0, expires="4294967296")
    assert contacts_of(resp) == [f"<{CONTACT}>;expires=7200"]
    assert reg.location.lookup("alice", 7199.0)[0].expires_at == 7200.0


@pytest.mark.parametrize("value", ["soon", "-1", "1.5", "Thu, 01 Dec 1994 16:00:00 GMT"])
def test_malformed_expires_header_is_400(value):
    resp = Phone(make_registrar()).send(0.0, expires=value)
    assert (resp.status, resp.reason) == (400, "Malformed Expires header")


def test_bindings_expire_lazily_and_by_expire():
    reg = make_registrar()
    phone = Phone(reg)
    assert phone.send(0.0, expires="60").status == 200
    assert reg.location.next_expiry() == 60.0
    # A query 20.4 s later shows the seconds left.
    assert contacts_of(phone.send(20.4, contacts=[])) == [f"<{CONTACT}>;expires=40"]
    assert reg.location.lookup("alice", 59.9) != []
    assert reg.location.lookup("alice", 60.0) == []
    assert len(reg.location) == 0  # lookup dropped it
    assert phone.send(100.0, expires="60").status == 200
    assert reg.location.expire(159.0) == []
    [gone] = reg.location.expire(160.0)
    assert gone.contact == CONTACT
    assert len(reg.location) == 0
    assert reg.location.next_expiry() is None


# --- contacts ---------------------------------------------------------------------


def test_query_without_contact_lists_bindings_and_changes_nothing():
    reg = make_registrar()
    phone = Phone(reg)
    assert contacts_of(phone.send(0.0, contacts=[])) == []
    assert phone.send(0.0).status == 200
    resp = phone.send(10.0, contacts=[])
    assert resp.status == 200
    assert contacts_of(resp) == [f"<{CONTACT}>;expires=3590"]


def test_refresh_updates_the_same_binding():
    reg = make_registrar()
    phone = Phone(reg)
    assert phone.send(0.0).status == 200
    # Same URI with different case in scheme and host: the same binding (19.1.4).
    resp = phone.send(100.0, contacts=["<SIP:alice@192.0.2.10:5070>"])
    assert contacts_of(resp) == ["<SIP:alice@192.0.2.10:5070>;expires=3600"]
    [b] = reg.location.lookup("alice", 100.0)
    assert b.registered_at == 100.0


def test_expires_zero_removes_one_contact():
    reg = make_registrar()
    phone = Phone(reg)
    second = "sip:alice@198.51.100.7:5060;transport=tcp"
    assert len(contacts_of(phone.send(0.0, contacts=[f"<{CONTACT}>", f"<{second}>"]))) == 2
    resp = phone.send(5.0, contacts=[f"<{CONTACT}>;expires=0"])
    assert contacts_of(resp) == [f"<{second}>;expires=3595"]
    # Removing what is not bound is not an error.
    resp = phone.send(6.0, contacts=["<sip:alice@203.0.113.1>"], expires="0")
    assert contacts_of(resp) == [f"<{second}>;expires=3594"]


def test_wildcard_removes_all():
    reg = make_registrar()
    phone = Phone(reg)
    phone.send(0.0, contacts=[f"<{CONTACT}>", "<sip:alice@198.51.100.7>"])
    Phone(reg).send(0.0, call_id="other-phone@x", contacts=["<sip:alice@203.0.113.9>"])
    assert len(reg.location.lookup("alice", 1.0)) == 3
    resp = phone.send(1.0, contacts=["*"], expires="0")
    assert (resp.status, resp.reason) == (200, "OK")
    assert contacts_of(resp) == []
    assert reg.location.lookup("alice", 1.0) == []


@pytest.mark.parametrize(
    ("contacts", "expires"),
    [
        (["*"], None),
        (["*"], "3600"),
        (["*", f"<{CONTACT}>"], "0"),
    ],
)
def test_wildcard_misuse_is_400(contacts, expires):
    reg = make_registrar()
    phone = Phone(reg)
    assert phone.send(0.0).status == 200
    resp = phone.send(1.0, contacts=contacts, expires=expires)
    assert (resp.status, resp.reason) == (400, "Contact * needs Expires: 0 and no other Contact")
    assert len(reg.location.lookup("alice", 1.0)) == 1


@pytest.mark.parametrize(
    "contact",
    [
        "<sip:alice@192.0.2.10",
        "<sip:alice@bad host>",
        "<sip:alice@192.0.2.10:99999>",
        "<sip:alice@192.0.2.10>;expires=soon",
        "<sip:alice@192.0.2.10>;expires",
        "<sip:alice@192.0.2.10>;q=1.5",
        "<sip:alice@192.0.2.10>;q=high",
        "<sip:alice@192.0.2.10>;q",
    ],
)
def test_malformed_contact_is_400(contact):
    reg = make_registrar()
    resp = Phone(reg).send(0.0, contacts=[f"<{CONTACT}>", contact])
    assert (resp.status, resp.reason) == (400, "Malformed Contact header")
    assert len(reg.location) == 0  # the good Contact was not bound either


def test_non_sip_contact_is_400():
    resp = Phone(make_registrar()).send(0.0, contacts=["<tel:+15551234567>"])
    assert (resp.status, resp.reason) == (400, "Unsupported URI scheme in Contact header")


def test_same_call_id_with_cseq_not_higher_is_500_and_changes_nothing():
    reg = make_registrar()
    challenge = reg.handle(register(), SOURCE, 0.0).get_all("WWW-Authenticate")[0]
    ok = reg.handle(
        register(cseq=5, authorization=[answer(challenge, "alice", "secret", 1)]), SOURCE, 1.0
    )
    assert ok.status == 200
    late = register(cseq=4, expires="0", authorization=[answer(challenge, "alice", "secret", 2)])
    resp = reg.handle(late, SOURCE, 2.0)
    assert (resp.status, resp.reason) == (500, "CSeq Out of Order")
    same = register(cseq=5, authorization=[answer(challenge, "alice", "secret", 3)])
    assert reg.handle(same, SOURCE, 2.0).status == 500
    wildcard = register(
        cseq=5, contacts=["*"], expires="0", authorization=[answer(challenge, "alice", "secret", 4)]
    )
    assert reg.handle(wildcard, SOURCE, 2.0).status == 500
    [b] = reg.location.lookup("alice", 2.0)
    assert (b.cseq, b.expires_at) == (5, 3601.0)
    # Another Call-ID (a rebooted phone) may update it whatever its CSeq.
    other = register(
        cseq=1, call_id="new@x", authorization=[answer(challenge, "alice", "secret", 5)]
    )
    assert reg.handle(other, SOURCE, 3.0).status == 200
    [b] = reg.location.lookup("alice", 3.0)
    assert (b.call_id, b.cseq) == ("new@x", 1)


def test_order_is_q_then_most_recent():
    reg = make_registrar()
    phone = Phone(reg)
    phone.send(0.0, contacts=["<sip:a@192.0.2.1>;q=0.5", "<sip:b@192.0.2.2>"])
    phone.send(10.0, contacts=["<sip:c@192.0.2.3>;q=0.5"])
    phone.send(20.0, contacts=["<sip:d@192.0.2.4>"])
    resp = phone.send(30.0, contacts=[])
    assert contacts_of(resp) == [
        "<sip:d@192.0.2.4>;expires=3590",
        "<sip:b@192.0.2.2>;expires=3570",
        "<sip:c@192.0.2.3>;expires=3580;q=0.5",
        "<sip:a@192.0.2.1>;expires=3570;q=0.5",
    ]
    assert [b.contact for b in reg.location.lookup("alice", 30.0)] == [
        "sip:d@192.0.2.4",
        "sip:b@192.0.2.2",
        "sip:c@192.0.2.3",
        "sip:a@192.0.2.1",
    ]


def test_contacts_per_user_are_bounded_oldest_replaced():
    auth = DigestAuthenticator(REALM, SECRET)
    reg = Registrar(REALM, PASSWORDS, auth, LocationService(max_contacts_per_user=3))
    phone = Phone(reg)
    for i in range(4):
        assert phone.send(float(i), contacts=[f"<sip:alice@192.0.2.{i}>"]).status == 200
    contacts = [b.contact for b in reg.location.lookup("alice", 4.0)]
    assert contacts == ["sip:alice@192.0.2.3", "sip:alice@192.0.2.2", "sip:alice@192.0.2.1"]


def test_users_are_kept_apart():
    reg = make_registrar()
    Phone(reg).send(0.0)
    Phone(reg, "bob").send(0.0, call_id="bob@x", contacts=["<sip:bob@192.0.2.20>"])
    assert [b.contact for b in reg.location.lookup("alice", 1.0)] == [CONTACT]
    assert [b.contact for b in reg.location.lookup("bob", 1.0)] == ["sip:bob@192.0.2.20"]
    assert sorted(reg.location.users()) == ["alice", "bob"]


def test_constructor_checks_expiry_bounds():
    auth = DigestAuthenticator(REALM, SECRET)
    with pytest.raises(ValueError):
        Registrar(REALM, PASSWORDS, auth, LocationService(), min_expires=0)
    with pytest.raises(ValueError):
        Registrar(REALM, PASSWORDS, auth, LocationService(), default_expires=10)
    with pytest.raises(ValueError):
        LocationService(max_contacts_per_user=0)
