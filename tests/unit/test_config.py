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
        ("[[users]]\nname = 'alice'\n", "users[0].password: missing (this key is required)"),
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
        ("name = 'alice'\npassword = ''", "users[0].password: must not be empty"),
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
