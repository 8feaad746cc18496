"""Digest authentication: header parsing, known vectors, nonces, replay guard."""

from __future__ import annotations

import hashlib

import pytest

from twinline.sip.digest import (
    AuthFailure,
    AuthResult,
    Credentials,
    CredentialsError,
    DigestAuthenticator,
    digest_response,
    parse_credentials,
)

SECRET = b"0123456789abcdef-cluster-secret"
REALM = "twinline.local"
PASSWORDS = {"alice": "secret", "bob": "hunter2"}
URI = "sip:127.0.0.1:5060"


# --- an independent client: the response computed straight from RFC 2617 3.2.2.1 ---


def md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()  # noqa: S324 - the protocol's hash


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def client_response(
    h, user, password, nonce, *, method="REGISTER", uri=URI, realm=REALM, nc=None, cnonce=None
):
    ha1 = h(f"{user}:{realm}:{password}")
    ha2 = h(f"{method}:{uri}")
    if nc is None:
        return h(f"{ha1}:{nonce}:{ha2}")
    return h(f"{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}")


def nonce_of(challenge: str) -> str:
    start = challenge.index('nonce="') + len('nonce="')
    return challenge[start : challenge.index('"', start)]


def sipp_header(user, password, nonce, *, nc="00000001", algorithm="MD5", realm=REALM):
    """An Authorization value laid out as SIPp 3.6 writes it."""
    cnonce = "6b8b4567327b23c6"
    h = sha256 if algorithm == "SHA-256" else md5
    resp = client_response(h, user, password, nonce, realm=realm, nc=nc, cnonce=cnonce)
    tail = f",algorithm={algorithm}" if algorithm else ""
    return (
        f'Digest username="{user}",realm="{realm}",cnonce="{cnonce}",nc={nc},qop=auth,'
        f'uri="{URI}",nonce="{nonce}",response="{resp}"{tail}'
    )


def make_auth(**kw) -> DigestAuthenticator:
    return DigestAuthenticator(REALM, SECRET, **kw)


def verify(auth, header, now, method="REGISTER") -> AuthResult:
    return auth.verify(method, parse_credentials(header), PASSWORDS.get, now)


# --- parse_credentials ------------------------------------------------------------


def test_parse_sipp_layout():
    c = parse_credentials(
        'Digest username="alice",realm="twinline.local",cnonce="6b8b4567",nc=00000001,'
        'qop=auth,uri="sip:127.0.0.1:5060",nonce="abc",response="0123",algorithm=MD5'
    )
    assert c.is_digest
    assert c.scheme == "Digest"
    assert (c.username, c.realm, c.nonce, c.uri, c.response) == (
        "alice",
        "twinline.local",
        "abc",
        "sip:127.0.0.1:5060",
        "0123",
    )
    assert (c.qop, c.nc, c.cnonce, c.algorithm, c.opaque) == (
        "auth",
        "00000001",
        "6b8b4567",
        "MD5",
        None,
    )


def test_parse_whitespace_case_escapes_and_empty_elements():
    c = parse_credentials(
        '  digest\tUserName = "al\\"ice\\\\" ,\r\n REALM="r" ,, nonce= "n", uri ="u",'
        ' response="R", Algorithm="SHA-256", qop="auth", nc=0000000A, cnonce="c", '
        "opaque=tok/en+=  ,"
    )
    assert c.is_digest
    assert c.username == 'al"ice\\'
    assert c.realm == "r"
    assert c.algorithm == "SHA-256"
    assert c.qop == "auth"
    assert c.nc == "0000000A"
    assert c.opaque == "tok/en+="


def test_parse_empty_values_of_an_initial_register():
    # 3GPP phones send this before any challenge: it must parse (and then get a 401).
    c = parse_credentials('Digest username="alice", realm="r", nonce="", uri="sip:r", response=""')
    assert c.nonce == ""
    assert c.response == ""
    assert c.qop is None


def test_parse_other_scheme_is_not_read():
    c = parse_credentials("Basic YWxpY2U6c2VjcmV0")
    assert not c.is_digest
    assert c.scheme == "Basic"
    assert c.params == {}


@pytest.mark.parametrize(
    "value",
    [
        "",
        "   ",
        "Digest",
        "Digest   ",
        "Di/gest username=x",
        'Digest username="alice"',  # required parameters missing
        'Digest username="a", realm="r", nonce="n", uri="u"',  # no response
        'Digest username "a", realm="r", nonce="n", uri="u", response="x"',
        'Digest username=, realm="r", nonce="n", uri="u", response="x"',
        'Digest username="a, realm="r", nonce="n", uri="u", response="x"',
        'Digest username="a\\',
        'Digest username="a" realm="r", nonce="n", uri="u", response="x"',
        'Digest username="a", username="b", realm="r", nonce="n", uri="u", response="x"',
        'Digest =x, username="a", realm="r", nonce="n", uri="u", response="x"',
        'Digest username="a", realm="r", nonce="n", uri="u", response="x", qop=auth',
        'Digest username="a", realm="r", nonce="n", uri="u", response="x", qop=auth, '
        'cnonce="c", nc=1',
        'Digest username="a", realm="r", nonce="n", uri="u", response="x", qop=auth, '
        'cnonce="c", nc=0000000g',
    ],
)
def test_parse_garbage_raises_with_a_sip_reason(value):
    with pytest.raises(CredentialsError) as info:
        parse_credentials(value)
    assert info.value.reason == "Malformed Authorization header"
    assert info.value.status == 400
    assert isinstance(info.value, ValueError)


def test_parse_error_names_the_header():
    with pytest.raises(CredentialsError) as info:
        parse_credentials("Digest x", header="Proxy-Authorization")
    assert info.value.reason == "Malformed Proxy-Authorization header"
    assert "no value" in info.value.detail


# --- known vectors ----------------------------------------------------------------


def test_rfc2617_section_3_5_example():
    # RFC 2617 3.5: the response the RFC prints for Mufasa / "Circle Of Life".
    got = digest_response(
        algorithm="MD5",
        username="Mufasa",
        realm="testrealm@host.com",
        password="Circle Of Life",
        method="GET",
        uri="/dir/index.html",
        nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093",
        qop="auth",
        nc="00000001",
        cnonce="0a4f113b",
    )
    assert got == "6629fae49393a05397450978507c4ef1"


@pytest.mark.parametrize(
    ("algorithm", "expected"),
    [
        ("MD5", "8ca523f5e9506fed4657c9700eebdbec"),
        ("SHA-256", "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"),
    ],
)
def test_rfc7616_section_3_9_1_examples(algorithm, expected):
    got = digest_response(
        algorithm=algorithm,
        username="Mufasa",
        realm="http-auth@example.org",
        password="Circle of Life",
        method="GET",
        uri="/dir/index.html",
        nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",
        qop="auth",
        nc="00000001",
        cnonce="f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",
    )
    assert got == expected


@pytest.mark.parametrize(("algorithm", "h"), [("MD5", md5), ("sha-256", sha256)])
def test_digest_response_matches_hashlib(algorithm, h):
    kw = {"username": "alice", "realm": REALM, "method": "REGISTER", "uri": URI}
    kw["password"] = PASSWORDS["alice"]
    for qop in (None, "auth"):
        got = digest_response(
            algorithm=algorithm, nonce="n0", qop=qop, nc="00000002", cnonce="cn", **kw
        )
        nc = "00000002" if qop else None
        want = client_response(h, "alice", "secret", "n0", nc=nc, cnonce="cn")
        assert got == want


def test_digest_response_refuses_what_it_cannot_compute():
    kw = {"username": "a", "realm": "r", "method": "M", "uri": "u", "nonce": "n"}
    kw["password"] = PASSWORDS["alice"]
    with pytest.raises(ValueError, match="algorithm"):
        digest_response(algorithm="MD5-sess", **kw)
    with pytest.raises(ValueError, match="qop"):
        digest_response(algorithm="MD5", qop="auth-int", **kw)


# --- challenges -------------------------------------------------------------------


def test_challenge_md5_only_by_default():
    [value] = make_auth().challenge(100.0)
    nonce = nonce_of(value)
    assert value == f'Digest realm="{REALM}", nonce="{nonce}", algorithm=MD5, qop="auth"'
    assert len(nonce) == 64


def test_challenge_sha256_first_and_stale_flag():
    auth = make_auth(algorithms=("md5", "SHA-256"))
    assert auth.algorithms == ("SHA-256", "MD5")
    values = auth.challenge(100.0, stale=True)
    assert len(values) == 2
    assert values[0].startswith(f'Digest realm="{REALM}", nonce="')
    assert values[0].endswith(', algorithm=SHA-256, qop="auth", stale=true')
    assert values[1].endswith(', algorithm=MD5, qop="auth", stale=true')
    assert nonce_of(values[0]) == nonce_of(values[1])


def test_challenge_quotes_the_realm_and_nonces_differ():
    auth = DigestAuthenticator('a "b" \\c', SECRET)
    first, second = auth.challenge(1.0)[0], auth.challenge(1.0)[0]
    assert first.startswith('Digest realm="a \\"b\\" \\\\c", ')
    assert nonce_of(first) != nonce_of(second)  # same millisecond, different salt


@pytest.mark.parametrize(
    "kw",
    [
        {"algorithms": ()},
        {"algorithms": ("MD5-sess",)},
        {"nonce_lifetime": 0.0},
        {"max_tracked": 0},
    ],
)
def test_constructor_refuses_bad_settings(kw):
    with pytest.raises(ValueError):
        make_auth(**kw)


def test_constructor_refuses_short_secret_and_empty_realm():
    with pytest.raises(ValueError):
        DigestAuthenticator(REALM, b"short")
    with pytest.raises(ValueError):
        DigestAuthenticator("", SECRET)


# --- verify -----------------------------------------------------------------------


def test_sipp_md5_qop_auth_with_and_without_algorithm():
    auth = make_auth()
    nonce = nonce_of(auth.challenge(1000.0)[0])
    r = verify(auth, sipp_header("alice", "secret", nonce), 1001.0)
    assert r == AuthResult(True, "alice")
    assert r.ok
    assert not r.stale
    r = verify(auth, sipp_header("alice", "secret", nonce, nc="00000002", algorithm=""), 1002.0)
    assert r.ok


def test_sha256_qop_auth():
    auth = make_auth(algorithms=("SHA-256", "MD5"))
    nonce = nonce_of(auth.challenge(5.0)[0])
    header = sipp_header("bob", "hunter2", nonce, algorithm="SHA-256")
    assert verify(auth, header, 6.0).ok


def test_rfc2069_form_without_qop_is_single_use():
    auth = make_auth()
    nonce = nonce_of(auth.challenge(10.0)[0])
    resp = client_response(md5, "alice", "secret", nonce)
    header = (
        f'Digest username="alice", realm="{REALM}", nonce="{nonce}", uri="{URI}", response="{resp}"'
    )
    assert verify(auth, header, 11.0).ok
    again = verify(auth, header, 12.0)
    assert again.failure is AuthFailure.NC_REPLAY
    assert again.stale


def test_uppercase_hex_response_is_accepted():
    auth = make_auth()
    nonce = nonce_of(auth.challenge(0.0)[0])
    header = sipp_header("alice", "secret", nonce)
    start = header.index('response="') + len('response="')
    upper = header[:start] + header[start : start + 32].upper() + header[start + 32 :]
    assert verify(auth, upper, 1.0).ok


def test_wrong_password():
    auth = make_auth()
    nonce = nonce_of(auth.challenge(0.0)[0])
    r = verify(auth, sipp_header("alice", "wrong", nonce), 1.0)
    assert r == AuthResult(False, "alice", AuthFailure.WRONG_RESPONSE)
    assert not r.stale


def test_wrong_response_does_not_burn_the_nonce_count():
    auth = make_auth()
    nonce = nonce_of(auth.challenge(0.0)[0])
    bad = sipp_header("alice", "wrong", nonce, nc="ffffffff")
    assert verify(auth, bad, 1.0).failure is AuthFailure.WRONG_RESPONSE
    assert verify(auth, sipp_header("alice", "secret", nonce), 2.0).ok


def test_non_ascii_response_is_just_wrong():
    auth = make_auth()
    nonce = nonce_of(auth.challenge(0.0)[0])
    header = sipp_header("alice", "secret", nonce)
    start = header.index('response="') + len('response="')
    mangled = header[:start] + "é" + header[start + 1 :]
    assert verify(auth, mangled, 1.0).failure is AuthFailure.WRONG_RESPONSE


def test_no_such_user():
    auth = make_auth()
    nonce = nonce_of(auth.challenge(0.0)[0])
    r = verify(auth, sipp_header("mallory", "secret", nonce), 1.0)
    assert r == AuthResult(False, "mallory", AuthFailure.NO_SUCH_USER)


def test_wrong_realm():
    auth = make_auth()
    nonce = nonce_of(auth.challenge(0.0)[0])
    r = verify(auth, sipp_header("alice", "secret", nonce, realm="elsewhere"), 1.0)
    assert r.failure is AuthFailure.WRONG_REALM


def test_forged_nonce():
    auth = make_auth()
    nonce = nonce_of(auth.challenge(0.0)[0])
    last = "0" if nonce[-1] != "0" else "1"
    forged = nonce[:-1] + last  # one bit of the MAC changed
    r = verify(auth, sipp_header("alice", "secret", forged), 1.0)
    assert r.failure is AuthFailure.BAD_NONCE
    assert not r.stale
    # A later timestamp with the old MAC: the MAC covers the time.
    later = f"{int(nonce[:16], 16) + 1:016x}" + nonce[16:]
    assert verify(auth, sipp_header("alice", "secret", later), 1.0).failure is (
        AuthFailure.BAD_NONCE
    )


@pytest.mark.parametrize("nonce", ["", "abc", "Z" * 64, "dcd98b7102dd2f0e8b11d0f600bfb0c093"])
def test_garbage_nonce(nonce):
    r = verify(make_auth(), sipp_header("alice", "secret", nonce), 1.0)
    assert r.failure is AuthFailure.BAD_NONCE


def test_uppercased_nonce_is_not_ours():
    auth = make_auth()
    nonce = nonce_of(auth.challenge(0.0)[0])
    r = verify(auth, sipp_header("alice", "secret", nonce.upper()), 1.0)
    assert r.failure is AuthFailure.BAD_NONCE


def test_nonce_from_another_secret_or_realm_is_bad():
    other_secret = DigestAuthenticator(REALM, b"another secret of sixteen+ bytes")
    nonce = nonce_of(other_secret.challenge(0.0)[0])
    assert verify(make_auth(), sipp_header("alice", "secret", nonce), 1.0).failure is (
        AuthFailure.BAD_NONCE
    )
    other_realm = DigestAuthenticator("other.realm", SECRET)
    nonce = nonce_of(other_realm.challenge(0.0)[0])
    assert verify(make_auth(), sipp_header("alice", "secret", nonce), 1.0).failure is (
        AuthFailure.BAD_NONCE
    )


def test_nonce_is_checked_by_any_process_with_the_secret():
    issuer, checker = make_auth(), make_auth()
    nonce = nonce_of(issuer.challenge(50.0)[0])
    assert verify(checker, sipp_header("alice", "secret", nonce), 51.0).ok


def test_stale_nonce_after_its_lifetime():
    auth = make_auth(nonce_lifetime=300.0)
    nonce = nonce_of(auth.challenge(1000.0)[0])
    assert verify(auth, sipp_header("alice", "secret", nonce), 1300.0).ok  # at the limit
    r = verify(auth, sipp_header("alice", "secret", nonce, nc="00000002"), 1300.002)
    assert r == AuthResult(False, "alice", AuthFailure.STALE_NONCE)
    assert r.stale


def test_stale_nonce_with_wrong_password_is_a_wrong_response():
    # stale=true only for a client that knows the password (RFC 2617 3.2.1).
    auth = make_auth()
    nonce = nonce_of(auth.challenge(0.0)[0])
    r = verify(auth, sipp_header("alice", "wrong", nonce), 1000.0)
    assert r.failure is AuthFailure.WRONG_RESPONSE


def test_replayed_nc():
    auth = make_auth()
    nonce = nonce_of(auth.challenge(0.0)[0])
    first = sipp_header("alice", "secret", nonce, nc="00000001")
    assert verify(auth, first, 1.0).ok
    replay = verify(auth, first, 2.0)
    assert replay == AuthResult(False, "alice", AuthFailure.NC_REPLAY)
    assert replay.stale
    assert verify(auth, sipp_header("alice", "secret", nonce, nc="00000003"), 3.0).ok
    lower = verify(auth, sipp_header("alice", "secret", nonce, nc="00000002"), 4.0)
    assert lower.failure is AuthFailure.NC_REPLAY
    # Counts are per user: bob answering the same nonce starts his own.
    assert verify(auth, sipp_header("bob", "hunter2", nonce, nc="00000001"), 5.0).ok


def test_unsupported_algorithm_qop_and_scheme():
    auth = make_auth()  # MD5 only
    nonce = nonce_of(auth.challenge(0.0)[0])
    sha = sipp_header("alice", "secret", nonce, algorithm="SHA-256")
    assert verify(auth, sha, 1.0).failure is AuthFailure.UNSUPPORTED_ALGORITHM
    sess = sipp_header("alice", "secret", nonce, algorithm="MD5-sess")
    assert verify(auth, sess, 1.0).failure is AuthFailure.UNSUPPORTED_ALGORITHM
    auth_int = sipp_header("alice", "secret", nonce).replace("qop=auth", "qop=auth-int")
    assert verify(auth, auth_int, 1.0).failure is AuthFailure.UNSUPPORTED_QOP
    basic = auth.verify("REGISTER", Credentials("Basic"), PASSWORDS.get, 1.0)
    assert basic == AuthResult(False, "", AuthFailure.UNSUPPORTED_SCHEME)
    sha_only = make_auth(algorithms=("SHA-256",))
    no_alg = sipp_header("alice", "secret", nonce, algorithm="")
    assert verify(sha_only, no_alg, 1.0).failure is AuthFailure.UNSUPPORTED_ALGORITHM


def test_hand_built_credentials_without_nc_are_wrong_not_a_crash():
    auth = make_auth()
    nonce = nonce_of(auth.challenge(0.0)[0])
    creds = Credentials(
        "Digest",
        {"username": "alice", "realm": REALM, "nonce": nonce, "uri": URI, "response": "x"}
        | {"qop": "auth"},
    )
    r = auth.verify("REGISTER", creds, PASSWORDS.get, 1.0)
    assert r.failure is AuthFailure.WRONG_RESPONSE


def test_replay_guard_prunes_expired_nonces():
    auth = make_auth(nonce_lifetime=10.0)
    for t in range(20):
        nonce = nonce_of(auth.challenge(float(t))[0])
        assert verify(auth, sipp_header("alice", "secret", nonce), t + 0.5).ok
    # Only the nonces issued in the last 10 s are remembered.
    assert auth.tracked == 10


def test_replay_guard_is_bounded_and_stays_safe_when_full():
    auth = make_auth(max_tracked=3)
    nonces = [nonce_of(auth.challenge(float(t))[0]) for t in range(5)]
    for n in nonces[:3]:
        assert verify(auth, sipp_header("alice", "secret", n), 5.0).ok
    assert auth.tracked == 3
    assert verify(auth, sipp_header("alice", "secret", nonces[3]), 6.0).ok
    assert auth.tracked == 3
    # The oldest count was forgotten, so its nonce (and older ones) are stale now:
    # a replay of it cannot pass, and its phone retries with a fresh nonce.
    r = verify(auth, sipp_header("alice", "secret", nonces[0], nc="00000002"), 7.0)
    assert r.failure is AuthFailure.STALE_NONCE
    # Younger nonces still work and still refuse replays.
    assert verify(auth, sipp_header("alice", "secret", nonces[4]), 7.0).ok
    r = verify(auth, sipp_header("alice", "secret", nonces[4]), 7.0)
    assert r.failure is AuthFailure.NC_REPLAY
    assert auth.tracked <= 3
