"""Configuration loading: every problem is one ConfigError naming the key at fault."""

from __future__ import annotations

from pathlib import Path

import pytest

from twinline.config import (
    Config,
    ConfigError,
    load_config,
    load_config_text,
    parse_hostport,
    parse_listen,
)


def error_of(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_config_text(text)
    return str(info.value)


# --- defaults -----------------------------------------------------------------------------


def test_no_file_gives_the_defaults() -> None:
    config = load_config(None)
    assert config == Config()
    sw = config.switch
    assert sw.listen == ["udp:127.0.0.1:5060"]
    assert sw.advertise is None
    assert sw.domain == "twinline.local"
    assert (sw.max_calls, sw.retry_after, sw.no_answer_timeout) == (20000, 5, 60.0)
    assert (sw.timers.t1, sw.timers.t2, sw.timers.t4) == (0.5, 4.0, 5.0)
    assert (sw.limits.max_message_size, sw.limits.max_headers, sw.limits.max_line_length) == (
        65535,
        100,
        8192,
    )
    assert config.users == [] and config.routes == []


def test_empty_text_is_the_defaults() -> None:
    assert load_config_text("") == Config()


def test_a_full_switch_section_loads() -> None:
    config = load_config_text(
        """
[switch]
listen = ["udp:0.0.0.0:5060", "tcp:[::1]:5080"]
advertise = "sip.example.com"
max_calls = 100
no_answer_timeout = 30

[switch.timers]
t1 = 0.25

[[users]]
name = "alice"
password = "secret"

[[routes]]
prefix = "00"
target = "trunk.example.com:5060"
transport = "tcp"
strip = 2
add = "+"
"""
    )
    assert config.switch.listen == ["udp:0.0.0.0:5060", "tcp:[::1]:5080"]
    assert config.switch.no_answer_timeout == 30.0  # an integer is taken for a float
    assert config.switch.timers.t1 == 0.25
    assert config.switch.timers.t2 == 4.0  # unset keys of a section keep their default
    (route,) = config.routes
    assert (route.prefix, route.target, route.transport, route.strip, route.add) == (
        "00",
        "trunk.example.com:5060",
        "tcp",
        2,
        "+",
    )


def test_load_config_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / "twinline.toml"
    path.write_text("[switch]\nmax_calls = 7\n", encoding="utf-8")
    assert load_config(path).switch.max_calls == 7
    assert load_config(str(path)).switch.max_calls == 7


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert (
        str(info.value) == f"{path}: cannot read the configuration file: No such file or directory"
    )


def test_invalid_toml_names_the_source(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[switch\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}: not valid TOML: ")


# --- unknown keys and wrong types -------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("colour = 'blue'\n", "colour: unknown key (check its spelling and section)"),
        (
            "[switch]\nlisten_on = ['udp:127.0.0.1:5060']\n",
            "switch.listen_on: unknown key (check its spelling and section)",
        ),
        (
            "[switch.timers]\nt3 = 1.0\n",
            "switch.timers.t3: unknown key (check its spelling and section)",
        ),
        (
            "[[routes]]\nprefix = '1'\ntarget = 'h:5060'\nport = 1\n",
            "routes[0].port: unknown key (check its spelling and section)",
        ),
    ],
)
def test_unknown_key_is_named(text: str, message: str) -> None:
    assert error_of(text) == message


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[switch]\nmax_calls = 'many'\n", "switch.max_calls: Expected `int`, got `str`"),
        ("[switch]\nmax_calls = 1.5\n", "switch.max_calls: Expected `int`, got `float`"),
        ("[switch.timers]\nt1 = 'fast'\n", "switch.timers.t1: Expected `float`, got `str`"),
        ("[switch]\nlisten = 'udp:127.0.0.1:5060'\n", "switch.listen: Expected `array`, got `str`"),
        ("switch = 5\n", "switch: Expected `object`, got `int`"),
        (
            "[[routes]]\nprefix = '9'\ntarget = 'h:5060'\ntransport = 'sctp'\n",
            "routes[0].transport: Invalid enum value 'sctp'",
        ),
        (
            "[[users]]\nname = 'alice'\n",
            "users[0].password: missing (give password, or ha1_md5 / ha1_sha256)",
        ),
    ],
)
def test_wrong_type_is_named(text: str, message: str) -> None:
    assert error_of(text) == message


# --- values types cannot check ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("listen", "message"),
    [
        (
            "['udp:127.0.0.1:5060', 'udp:10.0.0.1']",
            "switch.listen[1]: '10.0.0.1' has no port",
        ),
        (
            "['sctp:127.0.0.1:5060']",
            "switch.listen[0]: 'sctp:127.0.0.1:5060' must start with 'udp:', 'tcp:' or 'tls:'",
        ),
        (
            "['tcp:127.0.0.1:70000']",
            "switch.listen[0]: '127.0.0.1:70000' has an invalid port (1 to 65535)",
        ),
        (
            "['udp:::1:5060']",
            "switch.listen[0]: '::1:5060': write an IPv6 address in brackets, as [::1]:5060",
        ),
        ("['udp:bad host:5060']", "switch.listen[0]: 'bad host:5060' has no valid host"),
        ("['udp:[fe80::zz]:5060']", "switch.listen[0]: 'fe80::zz' is not an IPv6 address"),
        ("[]", "switch.listen: needs at least one address, as 'udp:127.0.0.1:5060'"),
    ],
)
def test_bad_listen_address(listen: str, message: str) -> None:
    assert error_of(f"[switch]\nlisten = {listen}\n") == message


@pytest.mark.parametrize(
    ("route", "message"),
    [
        ("prefix = '9'\ntarget = 'pbx.example'", "routes[0].target: 'pbx.example' has no port"),
        (
            "prefix = '9'\ntarget = 'pbx example:5060'",
            "routes[0].target: 'pbx example:5060' has no valid host",
        ),
        (
            "prefix = '9'\ntarget = 'pbx:0'",
            "routes[0].target: 'pbx:0' has an invalid port (1 to 65535)",
        ),
        (
            "prefix = '9x'\ntarget = 'h:5060'",
            "routes[0].prefix: '9x' may hold only digits, *, # and +",
        ),
        ("prefix = '9'\ntarget = 'h:5060'\nstrip = -1", "routes[0].strip: must not be negative"),
    ],
)
def test_bad_route(route: str, message: str) -> None:
    good = "[[routes]]\nprefix = '1'\ntarget = 'h:5060'\n"
    # The second route is at fault: the index in the message says which.
    assert error_of(f"{good}[[routes]]\n{route}\n") == message.replace("routes[0]", "routes[1]")


def test_duplicate_user_is_named() -> None:
    text = (
        "[[users]]\nname = 'alice'\npassword = 'a'\n"
        "[[users]]\nname = 'bob'\npassword = 'b'\n"
        "[[users]]\nname = 'alice'\npassword = 'c'\n"
    )
    assert error_of(text) == "users[2].name: 'alice' appears twice"


@pytest.mark.parametrize(
    ("user", "message"),
    [
        ("name = 'al ice'\npassword = 'x'", "users[0].name: 'al ice' is not a valid SIP user name"),
        (
            "name = 'alice'\npassword = ''",
            "users[0].password: missing (give password, or ha1_md5 / ha1_sha256)",
        ),
    ],
)
def test_bad_user(user: str, message: str) -> None:
    assert error_of(f"[[users]]\n{user}\n") == message


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[switch]\nmax_calls = 0\n", "switch.max_calls: 0 is out of range (1 to 10000000)"),
        ("[switch]\nretry_after = 3601\n", "switch.retry_after: 3601 is out of range (1 to 3600)"),
        (
            "[switch.limits]\nmax_headers = 5\n",
            "switch.limits.max_headers: 5 is out of range (10 to 1000)",
        ),
        ("[switch.timers]\nt1 = 0\n", "switch.timers.t1: 0.0 must be greater than 0"),
        (
            "[switch]\nno_answer_timeout = -1.0\n",
            "switch.no_answer_timeout: -1.0 must be greater than 0",
        ),
        (
            "[switch]\nno_answer_timeout = nan\n",
            "switch.no_answer_timeout: nan must be greater than 0",
        ),
    ],
)
def test_out_of_range(text: str, message: str) -> None:
    assert error_of(text) == message


def test_a_postgresql_database_section_loads() -> None:
    config = load_config_text(
        "[database]\n"
        'url = "postgresql://twinline@db1:5432,db2:5432/twinline?target_session_attrs=read-write"\n'
        'pool_size = 8\nconnect_timeout = 3\nstatement_timeout = 10\nsslmode = "verify-full"\n'
        'password_file = "/etc/twinline/db-password"\n'
    )
    db = config.database
    assert (db.pool_size, db.connect_timeout, db.statement_timeout) == (8, 3.0, 10.0)
    assert (db.sslmode, db.password_file) == ("verify-full", "/etc/twinline/db-password")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('url = "mysql://db/twinline"', "database.url: 'mysql://db/twinline': use sqlite:///FILE"),
        ('url = "postgresql://twinline:s3cret@db/twinline"', "database.url: holds a password"),
        ("pool_size = 0", "database.pool_size: 0 is out of range (1 to 100)"),
        ("connect_timeout = 0", "database.connect_timeout: 0.0 must be greater than 0"),
        ('sslmode = "sometimes"', "database.sslmode: 'sometimes': use one of disable, allow"),
    ],
)
def test_bad_database_section(text: str, message: str) -> None:
    error = error_of(f"[database]\n{text}\n")
    assert error.startswith(message), error
    assert "s3cret" not in error


# --- the address parsers on their own ---------------------------------------------------------


def test_parse_hostport() -> None:
    assert parse_hostport("pbx.example:5070") == ("pbx.example", 5070)
    assert parse_hostport("[2001:db8::1]:5070") == ("2001:db8::1", 5070)
    assert parse_hostport("pbx.example", default_port=5060) == ("pbx.example", 5060)
    assert parse_hostport("[::1]", default_port=5060) == ("::1", 5060)
    with pytest.raises(ValueError, match="has text after"):
        parse_hostport("[::1]x")
    with pytest.raises(ValueError, match="unclosed"):
        parse_hostport("[::1:5060")


def test_parse_listen() -> None:
    assert parse_listen("udp:127.0.0.1:5060") == ("udp", "127.0.0.1", 5060)
    assert parse_listen("tcp:[::1]:5061") == ("tcp", "::1", 5061)


# --- trunks, access, flood, the API token -------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "[[routes]]\nprefix = '9'\n",
            "routes[0].target: missing (give target = 'HOST:PORT', or trunk = 'NAME')",
        ),
        (
            "[[routes]]\nprefix = '9'\ntrunk = 'carrier'\n",
            "routes[0].trunk: no trunk named 'carrier' (known: none)",
        ),
        (
            "[[trunks]]\nname = 'c'\nsources = ['10.0.0.1']\n"
            "[[routes]]\nprefix = '9'\ntrunk = 'c'\n",
            "routes[0].trunk: trunk 'c' has no target to send calls to",
        ),
        (
            "[[trunks]]\nname = 'c'\ntarget = 'h:5060'\n"
            "[[routes]]\nprefix = '9'\ntrunk = 'c'\ntarget = 'h:5060'\n",
            "routes[0].trunk: give target or trunk, not both",
        ),
        (
            "[[trunks]]\nname = 'c'\nsources = ['10.0.0.1/24']\n",
            "trunks[0].sources[0]: '10.0.0.1/24' is not an address or network "
            "(10.0.0.1/24 has host bits set)",
        ),
        (
            "[[trunks]]\nname = 'c'\n",
            "trunks[0]: give sources (where its calls come from), a target, or both",
        ),
        (
            "[[trunks]]\nname = 'c'\ntarget = 'h:1'\n[[trunks]]\nname = 'c'\ntarget = 'h:2'\n",
            "trunks[1].name: 'c' appears twice",
        ),
        (
            "[access]\npublic_numbers = ['']\n",
            "access.public_numbers[0]: '' would open every number and route to anyone: "
            "list the prefixes you mean",
        ),
        (
            "[access]\ndigest_algorithms = ['SHA-512']\n",
            "access.digest_algorithms[0]: 'SHA-512': use 'MD5' or 'SHA-256'",
        ),
        (
            "[access]\nunknown_callers = 'allow'\n",
            "access.unknown_callers: Invalid enum value 'allow'",
        ),
        (
            "[access]\ndigest_algorithms = ['SHA-256', 'MD5']\n"
            "[[users]]\nname = 'a'\nha1_md5 = '" + "0" * 32 + "'\n",
            "users[0].ha1_sha256: needed: access.digest_algorithms offers SHA-256",
        ),
        (
            "[[users]]\nname = 'a'\npassword = 'p'\nha1_md5 = '" + "0" * 32 + "'\n",
            "users[0].password: give a password or ha1 hashes, not both",
        ),
        (
            "[flood]\nban_seconds = 0\n",
            "flood.ban_seconds: 0.0 is out of range (more than 0, up to 86400)",
        ),
        ("[flood]\nmax_requests = -1\n", "flood.max_requests: must not be negative (0: no limit)"),
    ],
)
def test_bad_access_configuration_is_named(text: str, message: str) -> None:
    assert error_of(text) == message


def test_an_api_off_this_host_needs_a_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TWINLINE_API_TOKEN", raising=False)
    text = "[switch]\nhttp = '10.0.0.1:8062'\n"
    assert error_of(text) == (
        "switch.api_token: needed: switch.http '10.0.0.1:8062' listens off this host, and "
        "drain and handover must not be open to it (or set TWINLINE_API_TOKEN)"
    )
    assert load_config_text(text + "api_token = 'x'\n").switch.api_token == "x"
    monkeypatch.setenv("TWINLINE_API_TOKEN", "from-env")
    assert load_config_text(text).switch.api_token == ""


def test_example_configuration_loads_with_authentication_on() -> None:
    config = load_config(Path(__file__).parents[2] / "examples" / "twinline.toml")
    assert [u.name for u in config.users] == ["alice", "bob"]
    assert all(not t.sources for t in config.trunks)  # nobody on loopback is trusted
    assert config.access.public_numbers == []
