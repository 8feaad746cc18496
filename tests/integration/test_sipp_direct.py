"""The harness tested on its own, without the switch.

Every scenario pair the switch tests use is run SIPp to SIPp here (a caller
straight to a callee, or to a SIPp that stands in for the switch), so that a
failure against the switch points at the switch, not at a scenario. The
statistics parsing, the process handling and the fixture's checks on a
switch process are tested too, the latter with a stand-in switch
(fake_switch.py) that answers OPTIONS.
"""

from __future__ import annotations

import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from .conftest import StartSwitch
from .sipp import (
    EXIT_FAILED,
    Sipp,
    SippRun,
    StatsError,
    malformed_faults,
    parse_stats_text,
    scenario,
    write_injection_file,
)
from .switchproc import (
    DOMAIN,
    SwitchProcess,
    options_probe,
    route,
    switch_config,
    toml_dumps,
)

FAKE_SWITCH = (sys.executable, str(Path(__file__).with_name("fake_switch.py")))

# --------------------------------------------------------------------------- no SIPp needed

HEADER = (
    "StartTime;CurrentTime;TotalCallCreated;CurrentCall;SuccessfulCall(P);SuccessfulCall(C);"
    "FailedCall(P);FailedCall(C);FailedMaxUDPRetrans(C);FailedUnexpectedMessage(C);"
    "Retransmissions(C);DeadCallMsgs(C);OutOfCallMsgs(C);ElapsedTime(C);"
)


def test_stats_are_read_from_the_last_complete_line() -> None:
    text = (
        HEADER
        + "\n"
        + "t0;t1;10;10;0;0;0;0;0;0;0;0;0;00:00:01;\n"
        + "t0;t2;20;0;5;18;1;2;1;1;7;3;0;00:00:02;\n"
        + "t0;t3;20"  # SIPp was writing this one when we read
    )
    stats = parse_stats_text(text)
    assert stats.created == 20
    assert stats.current == 0
    assert stats.successful == 18
    assert stats.failed == 2
    assert stats.failure_causes == {"FailedMaxUDPRetrans": 1, "FailedUnexpectedMessage": 1}
    assert stats.retransmissions == 7
    assert stats.dead_call_msgs == 3
    assert stats.elapsed == "00:00:02"
    assert "failed=2" in stats.summary()


@pytest.mark.parametrize(
    "text", ["", "not;a;sipp;file\n1;2;3;4\n", HEADER + "\n", HEADER + "\nt0;t1;1\n"]
)
def test_unusable_stats_files_are_refused(text: str) -> None:
    with pytest.raises(StatsError):
        parse_stats_text(text)


def test_switch_config_is_valid_toml() -> None:
    document = switch_config(
        15060,
        routes=[route("1", 15070), route("", 15080, "tcp")],
        users=[{"name": "alice", "password": 'se"cret'}],
        no_answer_timeout=2.0,
        max_calls=20,
    )
    parsed = tomllib.loads(toml_dumps(document))
    assert parsed == document
    assert parsed["switch"]["listen"] == ["udp:127.0.0.1:15060", "tcp:127.0.0.1:15060"]


def test_injection_file_has_one_line_per_fault(tmp_path: Path) -> None:
    faults = malformed_faults("1000", "127.0.0.1:5060")
    path = write_injection_file(tmp_path / "faults.csv", faults)
    lines = path.read_text().splitlines()
    assert lines[0] == "SEQUENTIAL"
    assert len(lines) == len(faults) + 1
    assert all(len(line.split(";")) == 5 for line in lines[1:])


# --------------------------------------------------------------------------- the switch fixture


@pytest.mark.integration
def test_switch_fixture_starts_probes_and_stops_a_process(start_switch: StartSwitch) -> None:
    switch = start_switch(program=FAKE_SWITCH, routes=[route("1", 15070)])
    assert switch.running
    status = options_probe(switch.host, switch.port, timeout=1.0)
    assert status == "SIP/2.0 200 OK"
    assert tomllib.loads(switch.config_path.read_text())["switch"]["domain"] == DOMAIN
    # Teardown stops it and checks exit status 0 and a clean stderr.


@pytest.mark.integration
@pytest.mark.parametrize(
    ("misbehaviour", "complaint"),
    [
        ("traceback", "a traceback on stderr"),
        ("exit3", "exit status 3"),
        ("hang", "did not exit within"),
    ],
)
def test_a_switch_that_stops_badly_is_reported(
    tmp_path: Path, free_port: Callable[[], int], misbehaviour: str, complaint: str
) -> None:
    port = free_port()
    switch = SwitchProcess(
        name="bad",
        directory=tmp_path,
        port=port,
        config=toml_dumps(switch_config(port)),
        program=(*FAKE_SWITCH, "--misbehave", misbehaviour),
    )
    switch.start()
    switch.stop(grace=1.0)
    with pytest.raises(AssertionError, match=complaint):
        switch.check_stopped()


@pytest.mark.integration
def test_a_switch_that_never_answers_is_not_ready(
    tmp_path: Path, free_port: Callable[[], int]
) -> None:
    port = free_port()
    switch = SwitchProcess(
        name="silent",
        directory=tmp_path,
        port=port,
        config=toml_dumps(switch_config(port)),
        program=(*FAKE_SWITCH, "--misbehave", "silent"),
    )
    with pytest.raises(RuntimeError, match="did not answer OPTIONS"):
        switch.start(ready_timeout=1.0)
    assert not switch.running


@pytest.mark.integration
def test_a_switch_that_exits_at_once_is_reported(
    tmp_path: Path, free_port: Callable[[], int]
) -> None:
    port = free_port()
    switch = SwitchProcess(
        name="broken",
        directory=tmp_path,
        port=port,
        config="this is not = = toml",
        program=FAKE_SWITCH,
    )
    with pytest.raises(RuntimeError, match="exited with status"):
        switch.start()


# --------------------------------------------------------------------------- SIPp to SIPp

# Tests that use the sipp fixture are skipped, saying why, without SIPp.
needs_sipp = pytest.mark.integration


def pair(
    sipp: Sipp,
    free_port: Callable[[], int],
    uas_scenario: str,
    uac_scenario: str,
    *,
    calls: int = 20,
    rate: float = 50,
    transport: str = "u1",
    uas_options: dict[str, Any] | None = None,
    **uac_options: Any,
) -> tuple[SippRun, SippRun]:
    """Run a caller scenario straight against a callee scenario."""
    uas_port = free_port()
    uas = sipp.start_uas(
        "callee", scenario(uas_scenario), port=uas_port, transport=transport, **(uas_options or {})
    )
    uac = sipp.run_uac(
        "caller",
        scenario(uac_scenario),
        f"127.0.0.1:{uas_port}",
        port=free_port(),
        calls=calls,
        rate=rate,
        transport=transport,
        timeout_s=60,
        **uac_options,
    )
    return uac, uas


@needs_sipp
@pytest.mark.parametrize("transport", ["u1", "t1"])
def test_direct_call(sipp: Sipp, free_port: Callable[[], int], transport: str) -> None:
    uac, uas = pair(
        sipp, free_port, "uas_answer.xml", "uac_call.xml", transport=transport, service="1000"
    )
    uac.check(successful=20, created=20)
    uas.wait_for_calls(total=20, timeout=10)
    uas.stop()
    uas.check(successful=20, created=20)


# The loss a call sees through the switch is 10 % per message on each leg:
# the caller's -lost 10 drops what it sends and what it receives on the A leg,
# the callee's on the B leg. SIPp to SIPp there is one leg, so each side gets
# its turn with -lost 10 while the other one is lossless (the same 10 % per
# message). With -lost 10 on both sides at once every message would be lost
# about 19 % of the time, harsher than anything the switch test does, and a
# few calls in a thousand then run out of SIPp's retransmissions (5 for an
# INVITE, 7 for a BYE).
@needs_sipp
@pytest.mark.parametrize("lossy_side", ["caller", "callee"])
def test_direct_call_survives_10_percent_loss(
    sipp: Sipp, free_port: Callable[[], int], lossy_side: str
) -> None:
    calls = 300
    uac, uas = pair(
        sipp,
        free_port,
        "uas_answer_lossy.xml",
        "uac_call.xml",
        calls=calls,
        rate=100,
        service="1000",
        lost=10 if lossy_side == "caller" else None,
        recv_timeout_ms=30000,
        uas_options={"lost": 10 if lossy_side == "callee" else None},
    )
    stats = uac.check(successful=calls, created=calls)
    assert stats.retransmissions > 0, "-lost had no effect"
    uas.wait_for_calls(total=calls, timeout=10, idle=False)
    uas.stop()
    uas_stats = uas.stats()
    assert uas_stats.created == calls and uas_stats.failed == 0, uas.report()


@needs_sipp
@pytest.mark.parametrize(
    ("uas_scenario", "uac_scenario"),
    [
        ("uas_callee_bye.xml", "uac_callee_bye.xml"),
        ("uas_ring_cancel.xml", "uac_cancel.xml"),
        ("uas_busy.xml", "uac_busy.xml"),
        ("uas_no_answer_480.xml", "uac_no_answer.xml"),
        ("uas_late_answer.xml", "uac_call.xml"),
    ],
)
def test_direct_pair(
    sipp: Sipp, free_port: Callable[[], int], uas_scenario: str, uac_scenario: str
) -> None:
    uac, uas = pair(sipp, free_port, uas_scenario, uac_scenario, service="1000", limit=20)
    uac.check(successful=20, created=20)
    uas.wait_for_calls(total=20, timeout=10)
    uas.stop()
    uas.check(successful=20, created=20)


@needs_sipp
@pytest.mark.parametrize(("password", "good"), [("secret", True), ("wrong", False)])
def test_direct_registration_with_digest(
    sipp: Sipp, free_port: Callable[[], int], password: str, good: bool
) -> None:
    registrar_port = free_port()
    keys = ["-key", "domain", DOMAIN, "-key", "user", "alice", "-key", "password", "secret"]
    registrar = sipp.start_uas(
        "registrar", scenario("uas_registrar.xml"), port=registrar_port, extra=keys
    )
    phone = sipp.run_uac(
        "phone",
        scenario("uac_register.xml"),
        f"127.0.0.1:{registrar_port}",
        port=free_port(),
        calls=1,
        rate=1,
        service="alice",
        timeout_s=30,
        trace_msg=True,
        extra=register_options(password, contact_port=free_port()),
    )
    if good:
        phone.check(successful=1, created=1)
    else:
        with pytest.raises(AssertionError, match="1 failed calls"):
            phone.check(successful=1, created=1)
        assert phone.returncode == EXIT_FAILED
    registrar.stop()
    sent = phone.message_file.read_text(errors="replace")
    assert 'uri="sip:twinline.local"' in sent  # -auth_uri, as the switch will check
    assert 'username="alice"' in sent


def register_options(password: str, *, contact_port: int) -> list[str]:
    return [
        "-ap", password,
        "-auth_uri", DOMAIN,
        "-key", "domain", DOMAIN,
        "-key", "contact_port", str(contact_port),
    ]  # fmt: skip


@needs_sipp
def test_direct_malformed_requests_are_sent_as_written(
    sipp: Sipp, free_port: Callable[[], int], tmp_path: Path
) -> None:
    uas_port = free_port()
    remote = f"127.0.0.1:{uas_port}"
    faults = malformed_faults("1000", remote)
    inf = write_injection_file(tmp_path / "faults.csv", faults)
    uas = sipp.start_uas("stand_in", scenario("uas_reject_400.xml"), port=uas_port)
    uac = sipp.run_uac(
        "malformed",
        scenario("uac_malformed.xml"),
        remote,
        port=free_port(),
        calls=2 * len(faults),
        rate=50,
        service="1000",
        timeout_s=30,
        trace_msg=True,
        extra=["-inf", str(inf)],
    )
    uac.check(successful=2 * len(faults), created=2 * len(faults))
    uas.stop()
    sent = uac.message_file.read_text(errors="replace")
    assert "CSeq: 1 OPTIONS" in sent
    assert "Max-Forwards: seventy" in sent
    assert "Content-Length: 9999" in sent
    assert "INVITE sip:1000@ SIP/2.0" in sent
    for fault in faults:
        assert f"Subject: {fault.name}" in sent


@needs_sipp
def test_failures_are_counted_and_explained(sipp: Sipp, free_port: Callable[[], int]) -> None:
    # A caller expecting 486 against a callee that answers: every call fails.
    uac, _ = pair(sipp, free_port, "uas_answer.xml", "uac_busy.xml", calls=5, service="1000")
    with pytest.raises(AssertionError) as failure:
        uac.check(successful=5, created=5)
    message = str(failure.value)
    assert "5 failed calls" in message
    assert "FailedUnexpectedMessage=5" in message
    assert "error log:" in message and "SIP/2.0 200 OK" in message
    assert "final scenario screen:" in message
    assert uac.returncode == EXIT_FAILED
