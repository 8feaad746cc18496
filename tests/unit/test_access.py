"""Who may call what, and the flood guard, driven through the switch core with bytes.

The switch of these tests (`Switch(CONFIG).secure()`, wired as the switch process
wires it) has a local user alice (password) and bob (MD5 HA1 only), a carrier trunk
trusted by 192.0.2.0/24 behind the route "9", and the public toll-free prefix "800"
routed to a PBX. Digest answers are computed here with hashlib, independently of
twinline.sip.digest.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import re

import pytest
from sipfix import Sent, Switch, parse_request, request_bytes, response_bytes

from twinline.config import ConfigError, load_config_text
from twinline.sip.message import Request
from twinline.switch.access import CallLimits, Limit, TrustedSources, service_headers
from twinline.switch.flood import BLOCK_FORMAT, FloodGuard

DOMAIN = "twinline.local"
CARRIER = ("udp", "192.0.2.5", 5060)
STRANGER = ("udp", "198.51.100.7", 5060)
ALICE = ("udp", "203.0.113.10", 5060)
PBX = ("udp", "127.0.0.1", 5062)
ALICE_CONTACT = "sip:alice@203.0.113.10:5060"


def md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()  # noqa: S324 - digest's own algorithm


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


CONFIG = f"""
[switch]
listen = ["udp:127.0.0.1:5060"]
domain = "{DOMAIN}"

[[users]]
name = "alice"
password = "secret"

[[users]]
name = "bob"
ha1_md5 = "{md5(f"bob:{DOMAIN}:hunter2")}"
calls_per_minute = 2

[[trunks]]
name = "carrier"
sources = ["192.0.2.0/24"]
target = "192.0.2.5:5060"
max_calls = 2

[[routes]]
prefix = "9"
trunk = "carrier"
strip = 1

[[routes]]
prefix = "800"
target = "127.0.0.1:5062"

[access]
public_numbers = ["800"]

[flood]
max_requests = 20
window = 1.0
max_auth_failures = 3
max_user_auth_failures = 5
auth_window = 60.0
ban_seconds = 30.0
"""

# docs/security.md's fail2ban filter: fail2ban cuts the time (its datepattern) out of
# the line, then matches the failregex, whose <HOST> stands for an address.
FAILREGEX = r"^\s*WARNING twinline\.security: blocked <HOST> port \d+: "
DATEPATTERN = re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2},\d{3}")
HOST_RE = r"(?P<host>[0-9A-Fa-f.:]+)"

_ids = itertools.count(1)


def switch(config: str = CONFIG) -> Switch:
    sw = Switch(config).secure()
    sw.register("alice", ALICE_CONTACT)
    return sw


def invite(
    dialled: str,
    *,
    from_user: str = "alice",
    auth: str | None = None,
    call_id: str | None = None,
    cseq: int = 1,
    extra: tuple[str, ...] = (),
) -> bytes:
    n = next(_ids)
    headers = [f"Proxy-Authorization: {auth}"] if auth else []
    return request_bytes(
        "INVITE",
        f"sip:{dialled}@127.0.0.1:5060",
        branch=f"z9hG4bKinv{n}",
        call_id=call_id or f"call-{n}",
        cseq=cseq,
        from_=f"<sip:{from_user}@{DOMAIN}>;tag=f{n}",
        to=f"<sip:{dialled}@{DOMAIN}>",
        contact=f"<sip:{from_user}@203.0.113.10:5060>",
        extra=(*headers, *extra),
    )


def challenge_of(sent: list[Sent], header: str = "Proxy-Authenticate") -> str:
    (resp,) = [s.resp for s in sent if s.msg is not None and not isinstance(s.msg, Request)]
    assert resp.status in (401, 407), resp.status
    return resp.get_all(header)[0]


def answer(
    challenge: str,
    user: str,
    password: str,
    *,
    method: str = "INVITE",
    uri: str = "sip:9555@127.0.0.1:5060",
    nc: int = 1,
) -> str:
    nonce = re.search(r'nonce="([^"]+)"', challenge)
    algorithm = re.search(r"algorithm=([A-Z0-9-]+)", challenge)
    assert nonce and algorithm, challenge
    h = sha256 if algorithm[1] == "SHA-256" else md5
    ha1 = h(f"{user}:{DOMAIN}:{password}")
    ha2 = h(f"{method}:{uri}")
    cnonce = "0a4f113b"
    response = h(f"{ha1}:{nonce[1]}:{nc:08x}:{cnonce}:auth:{ha2}")
    return (
        f'Digest username="{user}", realm="{DOMAIN}", nonce="{nonce[1]}", uri="{uri}", '
        f'response="{response}", algorithm={algorithm[1]}, cnonce="{cnonce}", qop=auth, '
        f"nc={nc:08x}"
    )


def statuses(sent: list[Sent], address: tuple[str, str, int]) -> list[str]:
    return [s.summary()[1] for s in sent if s.address == address]


def authenticated_call(sw: Switch, dialled: str, user: str, password: str) -> list[Sent]:
    first = sw.receive(invite(dialled, from_user=user), ALICE)
    creds = answer(challenge_of(first), user, password, uri=f"sip:{dialled}@127.0.0.1:5060")
    return sw.receive(invite(dialled, from_user=user, auth=creds), ALICE)


# --- who may call -----------------------------------------------------------------------------


def test_a_stranger_calling_a_trunk_route_is_challenged_and_nothing_reaches_the_trunk() -> None:
    sw = switch()
    sent = sw.receive(invite("9555", from_user="mallory"), STRANGER)
    assert [s.summary() for s in sent] == [(STRANGER, "407 INVITE")]
    assert "Digest realm=" in challenge_of(sent)
    assert sw.core.calls == {}


def test_unknown_callers_can_be_refused_outright_with_one_block_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sw = switch(CONFIG.replace("[access]\n", '[access]\nunknown_callers = "reject"\n'))
    with caplog.at_level(logging.WARNING, "twinline.security"):
        sent = sw.receive(invite("9555", from_user="mallory"), STRANGER)
    assert [(s.summary(), s.resp.reason) for s in sent] == [((STRANGER, "403 INVITE"), "Forbidden")]
    (line,) = [r.getMessage() for r in caplog.records]
    assert line == (
        "blocked 198.51.100.7 port 5060: INVITE to '9555' refused: not public, caller unknown"
    )


def test_a_local_user_is_challenged_even_to_a_public_number_then_calls_through() -> None:
    sw = switch()
    first = sw.receive(invite("8001234"), ALICE)
    assert statuses(first, ALICE) == ["407 INVITE"]
    creds = answer(challenge_of(first), "alice", "secret", uri="sip:9555@127.0.0.1:5060")
    sent = sw.receive(invite("9555", auth=creds), ALICE)
    assert statuses(sent, ALICE) == ["100 INVITE"]
    assert statuses(sent, CARRIER) == ["INVITE"]
    (call,) = sw.core.calls.values()
    assert (call.user, call.trunk) == ("alice", "")


def test_the_ack_of_a_407_is_absorbed_and_never_challenged() -> None:
    sw = switch()
    data = invite("9555")
    (sent,) = sw.receive(data, ALICE)
    ack = request_bytes(
        "ACK", "sip:9555@127.0.0.1:5060", branch=parse_request(data).branch,
        call_id=sent.resp.call_id, cseq=1, from_=sent.resp.get("From") or "",
        to=f"<sip:9555@{DOMAIN}>;tag={sent.resp.to_tag}",
    )  # fmt: skip
    assert sw.receive(ack, ALICE) == []


def test_cancel_is_never_challenged() -> None:
    sw = switch()
    cancel = request_bytes(
        "CANCEL", "sip:9555@127.0.0.1:5060", branch="z9hG4bKnone", call_id="nothing",
        cseq=1, from_=f"<sip:alice@{DOMAIN}>;tag=x", to=f"<sip:9555@{DOMAIN}>",
    )  # fmt: skip
    assert statuses(sw.receive(cancel, ALICE), ALICE) == ["481 CANCEL"]


def test_wrong_password_and_unknown_user_get_the_same_answer() -> None:
    sw = switch()
    answers = []
    for user, password in (("alice", "wrong"), ("zed", "whatever")):
        first = sw.receive(invite("9555", from_user=user), ALICE)
        creds = answer(challenge_of(first), user, password)
        (resp,) = sw.receive(invite("9555", from_user=user, auth=creds), ALICE)
        r = resp.resp
        answers.append((r.status, r.reason, r.get_all("Proxy-Authenticate")))
    assert answers == [(403, "Forbidden", [])] * 2
    assert sw.core.calls == {}


def test_a_user_authenticated_as_another_than_from_is_refused() -> None:
    sw = switch()
    first = sw.receive(invite("9555", from_user="bob"), ALICE)
    creds = answer(challenge_of(first), "alice", "secret")
    (resp,) = sw.receive(invite("9555", from_user="bob", auth=creds), ALICE)
    assert (resp.resp.status, resp.resp.reason) == (403, "From Does Not Match Authenticated User")
    assert sw.core.calls == {}


def test_a_user_stored_as_ha1_authenticates() -> None:
    sw = switch()
    sent = authenticated_call(sw, "9555", "bob", "hunter2")
    assert statuses(sent, CARRIER) == ["INVITE"]


def test_sha256_with_ha1_hashes() -> None:
    config = CONFIG.replace(
        'public_numbers = ["800"]', 'public_numbers = ["800"]\ndigest_algorithms = ["SHA-256"]'
    ).replace(
        f'ha1_md5 = "{md5(f"bob:{DOMAIN}:hunter2")}"',
        f'ha1_sha256 = "{sha256(f"bob:{DOMAIN}:hunter2").upper()}"',
    )
    sw = switch(config)
    first = sw.receive(invite("9555", from_user="bob"), ALICE)
    assert "algorithm=SHA-256" in challenge_of(first)
    creds = answer(challenge_of(first), "bob", "hunter2")
    assert statuses(sw.receive(invite("9555", from_user="bob", auth=creds), ALICE), CARRIER) == [
        "INVITE"
    ]


def test_an_expired_nonce_gets_a_stale_challenge() -> None:
    sw = switch()
    first = sw.receive(invite("9555"), ALICE)
    creds = answer(challenge_of(first), "alice", "secret")
    sw.advance(301)  # access.nonce_lifetime is 300 s
    sent = sw.receive(invite("9555", auth=creds), ALICE)
    assert "stale=true" in challenge_of(sent)


def test_a_trunk_is_not_challenged_and_its_identity_reaches_services_and_callee() -> None:
    sw = switch()
    pai = "P-Asserted-Identity: <sip:+15551234@carrier.example>"
    sent = sw.receive(invite("alice", from_user="+15551234", extra=(pai,)), CARRIER)
    assert statuses(sent, CARRIER) == ["100 INVITE"]
    (b_invite,) = [s for s in sent if s.address == ALICE]
    assert b_invite.req.get("P-Asserted-Identity") == "<sip:+15551234@carrier.example>"
    (call,) = sw.core.calls.values()
    assert (call.user, call.trunk) == ("", "carrier")
    assert service_headers(call.setup.request, trusted=True) == {
        "P-Asserted-Identity": "<sip:+15551234@carrier.example>",
        "Max-Forwards": "70",
    }


def test_a_stranger_reaches_public_numbers_and_users_but_asserts_no_identity() -> None:
    sw = switch()
    pai = "P-Asserted-Identity: <sip:+15550000@bank.example>"
    for dialled, to in (("8001234", PBX), ("alice", ALICE)):
        sent = sw.receive(invite(dialled, from_user="someone", extra=(pai,)), STRANGER)
        assert statuses(sent, STRANGER) == ["100 INVITE"], dialled
        (b_invite,) = [s for s in sent if s.address == to]
        assert b_invite.req.get("P-Asserted-Identity") is None
    closed = switch(CONFIG.replace("[access]\n", "[access]\npublic_users = false\n"))
    assert statuses(closed.receive(invite("alice", from_user="someone"), STRANGER), STRANGER) == [
        "407 INVITE"
    ]


def test_service_headers_join_repeated_values_and_drop_unasserted_identity() -> None:
    sw = switch()
    data = invite(
        "alice",
        from_user="x",
        extra=(
            "P-Asserted-Identity: <sip:1@a>",
            "Privacy: id",
            "History-Info: <sip:a@x>;index=1",
            "History-Info: <sip:b@x>;index=1.1",
            "Diversion: <sip:c@x>;reason=unconditional",
        ),
    )
    sw.receive(data, STRANGER)
    (call,) = sw.core.calls.values()
    assert service_headers(call.setup.request, trusted=False) == {
        "Privacy": "id",
        "Diversion": "<sip:c@x>;reason=unconditional",
        "History-Info": "<sip:a@x>;index=1, <sip:b@x>;index=1.1",
        "Max-Forwards": "70",
    }


# --- limits per user and per trunk --------------------------------------------------------------


def test_a_trunk_past_its_concurrent_calls_gets_503_until_one_ends() -> None:
    sw = switch()
    for _ in range(2):
        assert statuses(sw.receive(invite("alice", from_user="x"), CARRIER), CARRIER) == [
            "100 INVITE"
        ]
    (resp,) = sw.receive(invite("alice", from_user="x"), CARRIER)
    assert (resp.resp.status, resp.resp.reason) == (503, "Too Many Calls")
    assert resp.resp.get("Retry-After") == "5"
    # One callee is busy: that call ends, and the trunk may place another.
    first = next(iter(sw.core.calls.values()))
    b = first.b_invite
    assert b is not None
    b_req = b.request
    sw.receive(response_bytes(b_req, 486, "Busy Here", to_tag="bz"), ALICE)
    assert statuses(sw.receive(invite("alice", from_user="x"), CARRIER), CARRIER) == ["100 INVITE"]


def test_a_user_past_its_calls_per_minute_gets_503_with_retry_after() -> None:
    sw = switch()
    for _ in range(2):
        assert statuses(authenticated_call(sw, "9555", "bob", "hunter2"), CARRIER) == ["INVITE"]
        sw.advance(10)
    sent = authenticated_call(sw, "9555", "bob", "hunter2")
    (resp,) = sent
    assert (resp.resp.status, resp.resp.reason) == (503, "Call Rate Too High")
    assert resp.resp.get("Retry-After") == "40"  # the first call started 20 s ago


def test_call_limits_count_concurrent_calls() -> None:
    limits = CallLimits({"user:a": Limit(1, 0, 403, "users[0]")})
    assert limits.start("user:a", 0.0) is None
    refused = limits.start("user:a", 1.0)
    assert refused is not None and refused[0].status == 403
    assert refused[1] == "1 calls up (users[0].max_calls)"
    limits.end("user:a")
    assert limits.start("user:a", 2.0) is None
    assert limits.start("user:unlisted", 2.0) is None


# --- trusted sources ------------------------------------------------------------------------------


def test_trusted_sources_match_addresses_and_networks_narrowest_first() -> None:
    trusted = TrustedSources(
        {"carrier": ["10.0.0.0/8", "2001:db8::/32"], "pbx": ["10.1.2.3"], "lab": ["::1"]}
    )
    assert trusted.trunk_of("10.9.9.9") == "carrier"
    assert trusted.trunk_of("10.1.2.3") == "pbx"
    assert trusted.trunk_of("2001:db8::5") == "carrier"
    assert trusted.trunk_of("::ffff:10.1.2.3") == "pbx"
    assert trusted.trunk_of("::1") == "lab"
    assert trusted.trunk_of("192.0.2.1") is None
    assert trusted.trunk_of("not-an-address") is None
    assert TrustedSources({}).trunk_of("10.0.0.1") is None


# --- floods ---------------------------------------------------------------------------------------


def options(n: int) -> bytes:
    return request_bytes(
        "OPTIONS", "sip:127.0.0.1:5060", branch=f"z9hG4bKopt{n}", call_id=f"opt-{n}", cseq=1
    )


def test_a_flooding_address_is_banned_its_packets_dropped_until_the_ban_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sw = switch()
    with caplog.at_level(logging.WARNING, "twinline.security"):
        answered = [bool(sw.receive(options(n), STRANGER)) for n in range(25)]
    assert answered == [True] * 20 + [False] * 5
    assert caplog.records[0].getMessage() == (
        "blocked 198.51.100.7 port 5060: banned for 30 s: 21 requests in 1 s"
    )
    assert len(caplog.records) == 1  # dropped packets write nothing
    assert sw.guard is not None and sw.guard.stats.dropped == 5
    # Others are not affected, and the trunk is exempt however much it sends.
    assert sw.receive(options(100), ALICE)
    assert all(sw.receive(options(200 + n), CARRIER) for n in range(50))
    sw.advance(30)
    assert sw.receive(options(300), STRANGER)
    assert sw.guard.status(sw.now)["rate_bans"] == 1


def test_failed_authentications_ban_the_address() -> None:
    sw = switch()
    for n in range(4):
        first = sw.receive(invite("9555"), STRANGER)
        creds = answer(challenge_of(first), "alice", f"guess{n}")
        (resp,) = sw.receive(invite("9555", auth=creds), STRANGER)
        assert resp.resp.status == 403
    assert sw.receive(invite("9555"), STRANGER) == []  # banned at the 4th failure
    assert sw.guard is not None
    assert sw.guard.status(sw.now)["bans"] == [{"address": "198.51.100.7", "seconds_left": 30.0}]


def test_failed_registrations_count_too() -> None:
    sw = switch()
    for n in range(4):
        register = request_bytes(
            "REGISTER", f"sip:{DOMAIN}", branch=f"z9hG4bKreg{n}a", call_id=f"reg-{n}", cseq=1,
            from_=f"<sip:alice@{DOMAIN}>;tag=r{n}", to=f"<sip:alice@{DOMAIN}>",
            contact="<sip:alice@198.51.100.7>",
        )  # fmt: skip
        challenge = challenge_of(sw.receive(register, STRANGER), "WWW-Authenticate")
        creds = answer(challenge, "alice", "nope", method="REGISTER", uri=f"sip:{DOMAIN}")
        register = register.replace(b"z9hG4bKreg", b"z9hG4bKrg2").replace(
            b"Content-Length", f"Authorization: {creds}\r\nContent-Length".encode()
        )
        assert [s.summary()[1] for s in sw.receive(register, STRANGER)] == ["403 REGISTER"]
    assert sw.receive(options(1), STRANGER) == []


def test_a_user_guessed_at_from_many_addresses_is_locked() -> None:
    sw = switch()
    for n in range(6):
        source = ("udp", f"198.51.100.{10 + n}", 5060)
        first = sw.receive(invite("9555"), source)
        creds = answer(challenge_of(first), "alice", f"guess{n}")
        assert statuses(sw.receive(invite("9555", auth=creds), source), source) == ["403 INVITE"]
    # Locked: even the right password is refused, with the same answer, for ban_seconds.
    sent = authenticated_call(sw, "9555", "alice", "secret")
    assert statuses(sent, ALICE) == ["403 INVITE"]
    sw.advance(31)
    assert statuses(authenticated_call(sw, "9555", "alice", "secret"), CARRIER) == ["INVITE"]


def test_every_block_line_matches_the_documented_fail2ban_regex(
    caplog: pytest.LogCaptureFixture,
) -> None:
    regex = re.compile(FAILREGEX.replace("<HOST>", HOST_RE))
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    sw = switch()
    with caplog.at_level(logging.WARNING, "twinline.security"):
        test = ("udp", "2001:db8::7", 5070)
        for n in range(4):
            first = sw.receive(invite("9555"), test)
            creds = answer(challenge_of(first), "alice", f"guess{n}")
            sw.receive(invite("9555", auth=creds), test)
    lines = [formatter.format(r) for r in caplog.records]
    assert len(lines) == 5  # four failures and the ban
    for line in lines:
        match = regex.match(DATEPATTERN.sub("", line, count=1))
        assert match and match["host"] == "2001:db8::7", line
    assert BLOCK_FORMAT.startswith("blocked %s port %d: ")


def test_the_guard_table_of_bans_is_bounded() -> None:
    guard = FloodGuard(
        max_requests=1, window=1.0, max_auth_failures=0, max_user_auth_failures=0,
        auth_window=60.0, ban_seconds=10.0, is_trusted=lambda host: False, max_banned=2,
    )  # fmt: skip
    for n in range(3):
        source = ("udp", f"10.0.0.{n}", 5060)
        assert guard.count(source, 0.0)
        assert not guard.count(source, 0.0)
    assert guard.status(0.0)["banned"] == 2 and guard.stats.ban_table_full == 1
    assert not guard.admit(("udp", "10.0.0.0", 5060), 1.0)
    assert guard.admit(("udp", "10.0.0.2", 5060), 1.0)  # not recorded: the table was full
    # Expired bans make room.
    assert guard.count(("udp", "10.0.0.9", 5060), 11.0)
    assert not guard.count(("udp", "10.0.0.9", 5060), 11.0)
    assert guard.status(11.0)["banned"] == 1


def test_retransmissions_do_not_count_towards_a_ban() -> None:
    sw = switch()
    same = options(1)
    answers = [sw.receive(same, STRANGER) for _ in range(50)]
    assert all(len(a) == 1 for a in answers)  # the 200 again each time, never banned
    assert sw.guard is not None and sw.guard.status(sw.now)["banned"] == 0


def test_load_config_refuses_a_hash_of_the_wrong_length() -> None:
    text = "[[users]]\nname = 'a'\nha1_md5 = 'abc'\n"
    with pytest.raises(ConfigError, match=r"users\[0\]\.ha1_md5: must be 32 hexadecimal digits"):
        load_config_text(text)


def test_refusals_are_stateless_no_transaction_kept_nothing_retransmitted() -> None:
    sw = switch()
    for _ in range(10):
        assert statuses(sw.receive(invite("9555", from_user="mallory"), STRANGER), STRANGER) == [
            "407 INVITE"
        ]
    assert len(sw.core.layer) == 0
    assert sw.advance(40) == []  # no Timer G retransmissions of the 407s


def test_a_ban_is_reported_so_the_process_can_close_its_connections() -> None:
    sw = switch()
    assert sw.guard is not None
    banned: list[str] = []
    sw.guard.on_ban = banned.append
    for n in range(21):
        sw.receive(options(n), STRANGER)
    assert banned == ["198.51.100.7"]
