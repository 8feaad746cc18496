"""Fixtures for the integration tests: free ports, the switch as a process, SIPp.

- ``free_port()``: a port free on 127.0.0.1 for both UDP and TCP.
- ``start_switch(config)``: writes the configuration (a dict, see
  ``switchproc.switch_config``, or TOML text) into the test's tmp_path, starts
  ``python -m twinline switch --config FILE``, waits until it answers OPTIONS,
  and returns a ``SwitchProcess``. At teardown the switch gets SIGTERM and must
  exit with status 0, with no traceback on stderr.
- ``sipp``: a ``Sipp`` runner writing its files under tmp_path; background UAS
  processes are stopped at teardown. Tests using it are skipped, saying why,
  when SIPp is not installed.

When a test fails, the stderr of every switch it started is attached to the
report (section "switch ... stderr").
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from .sipp import Sipp, sipp_binary
from .switchproc import SwitchProcess, free_port, switch_config, toml_dumps

_SWITCHES = pytest.StashKey[list[SwitchProcess]]()

StartSwitch = Callable[..., SwitchProcess]


@pytest.fixture(scope="session")
def sipp_path() -> str:
    path = sipp_binary()
    if path is None:
        pytest.skip(
            "SIPp is not installed: these tests need the sipp command"
            " (Debian package sip-tester; ./dev test installs it)"
        )
    return path


@pytest.fixture
def sipp(sipp_path: str, tmp_path: Path) -> Iterator[Sipp]:
    runner = Sipp(binary=sipp_path, directory=tmp_path / "sipp")
    try:
        yield runner
    finally:
        runner.close()


@pytest.fixture(name="free_port")
def free_port_fixture() -> Callable[[], int]:
    return free_port


@pytest.fixture
def start_switch(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[StartSwitch]:
    started: list[SwitchProcess] = []
    request.node.stash[_SWITCHES] = started

    def start(
        config: Mapping[str, Any] | str | None = None,
        *,
        port: int | None = None,
        program: tuple[str, ...] | None = None,
        ready_timeout: float = 10.0,
        **config_options: Any,
    ) -> SwitchProcess:
        """Start a switch. ``config`` is a document or TOML text; without one,
        ``switch_config(port, **config_options)`` builds it."""
        if port is None:
            port = free_port()
        if config is None:
            config = switch_config(port, **config_options)
        elif config_options:
            raise TypeError("give either a configuration or options to build one, not both")
        text = config if isinstance(config, str) else toml_dumps(config)
        switch = SwitchProcess(
            name=f"switch{len(started) + 1}", directory=tmp_path / "switch", port=port, config=text
        )
        if program is not None:
            switch.program = program
        started.append(switch)
        return switch.start(ready_timeout=ready_timeout)

    yield start

    problems = []
    for switch in started:
        if switch.process is None:
            continue
        switch.stop()
        try:
            switch.check_stopped()
        except AssertionError as e:
            problems.append(str(e))
    if problems:
        pytest.fail("\n\n".join(problems), pytrace=False)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed and report.when in ("setup", "call"):
        for switch in item.stash.get(_SWITCHES, []):
            report.sections.append(
                (f"{switch.name} stderr ({switch.stderr_path})", switch.stderr_tail())
            )
    return report
