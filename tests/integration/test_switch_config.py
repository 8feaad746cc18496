"""The switch refuses a bad configuration: it exits non-zero with one line
naming the key at fault, and no traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from .switchproc import run_switch_once

pytestmark = pytest.mark.integration

LISTEN = '[switch]\nlisten = ["udp:127.0.0.1:15060"]\n'


@pytest.mark.parametrize(
    ("config", "key"),
    [
        pytest.param('[switch]\nlisten = ["udp:127.0.0.1"]\n', "switch.listen[0]", id="no-port"),
        pytest.param(
            '[switch]\nlisten = ["udp:127.0.0.1:15060", "sctp:127.0.0.1:15060"]\n',
            "switch.listen[1]",
            id="bad-transport",
        ),
        pytest.param(
            '[switch]\nlisten = ["udp:127.0.0.1:99999"]\n', "switch.listen[0]", id="bad-port"
        ),
        pytest.param('[switch]\nlistn = ["udp:127.0.0.1:15060"]\n', "switch.listn", id="typo"),
        pytest.param(LISTEN + "colour = 'blue'\n", "switch.colour", id="unknown-key"),
        pytest.param(
            LISTEN + "no_answer_timeout = 0\n", "switch.no_answer_timeout", id="zero-timeout"
        ),
        pytest.param(
            LISTEN + '\n[[routes]]\nprefix = "1"\ntarget = "127.0.0.1"\n',
            "routes[0].target",
            id="route-without-port",
        ),
        pytest.param(LISTEN + '\n[[users]]\nname = "alice"\n', "users[0]", id="no-password"),
    ],
)
def test_bad_config_is_refused_in_one_line(tmp_path: Path, config: str, key: str) -> None:
    status, stdout, stderr = run_switch_once(config, tmp_path)
    output = stdout + stderr
    lines = [line for line in output.splitlines() if line.strip()]
    assert status != 0, f"exit status 0 for a bad configuration; output:\n{output}"
    assert "Traceback" not in output, output
    assert len(lines) == 1, f"expected one line, got {len(lines)}:\n{output}"
    assert key in lines[0], f"the error does not name {key!r}: {lines[0]!r}"
