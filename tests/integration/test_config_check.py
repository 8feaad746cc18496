"""Invalid configurations: each gives one clear error naming the key, and a non-zero
exit, from `twinline config check FILE` and from start-up (`twinline up`, and the
single processes), before anything starts."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .switchproc import free_port

pytestmark = pytest.mark.integration


def twinline(*args: str, cwd: Path, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "twinline", *args],
        check=False, capture_output=True, text=True, timeout=timeout, cwd=cwd,
    )  # fmt: skip


@pytest.fixture
def held_port() -> Iterator[int]:
    """A TCP port another process (this test) listens on."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    yield sock.getsockname()[1]
    sock.close()


def base(sip: int, link: int, http: int, peers: tuple[int, int], extra: str = "") -> str:
    return f"""[switch]
listen = ["udp:127.0.0.1:{sip}"]
link = "127.0.0.1:{link}"
http = "127.0.0.1:{http}"

[database]
url = "sqlite:///twinline.db"

[[appservers]]
name = "as1"
peer = "127.0.0.1:{peers[0]}"
metrics = "127.0.0.1:{free_port()}"

[[appservers]]
name = "as2"
peer = "127.0.0.1:{peers[1]}"
metrics = "127.0.0.1:{free_port()}"
{extra}"""


def good() -> str:
    return base(free_port(), free_port(), free_port(), (free_port(), free_port()))


# (what is wrong, how to break a good file, the key the error must name, words it must say)
Case = tuple[str, Callable[[str, int], str], str, str]


def sub(old: str, new: str, count: int = -1) -> Callable[[str, int], str]:
    """Break a file by replacing text; "{held}" in `new` is the port in use."""
    return lambda text, held: text.replace(old, new.replace("{held}", str(held)), count)


def add(extra: str) -> Callable[[str, int], str]:
    return lambda text, _: text + extra


def first_peer_as_metrics(text: str, _: int) -> str:
    peer = text.split('peer = "')[1].split('"', maxsplit=1)[0]
    return text.replace('metrics = "127.0.0.1:', f'metrics = "{peer}"\n#', 1)


HTTP = 'http = "127.0.0.1:'
LISTEN = 'listen = ["udp:127.0.0.1:'
TLS = '\n[switch.tls]\ncertificate = "/nonexistent/switch.pem"\nkey = "/nonexistent/switch.key"\n'

CASES: list[Case] = [
    ("wrong type", sub("[switch]", '[switch]\nmax_calls = "many"'),
     "switch.max_calls", "Expected `int`, got `str`"),
    ("unknown key", sub("[switch]", "[switch]\nmax_cals = 10"), "switch.max_cals", "unknown key"),
    ("address without a port", sub(LISTEN, 'listen = ["udp:127.0.0.1", "x:'),
     "switch.listen[0]", "has no port"),
    ("port in use", sub(HTTP, 'http = "127.0.0.1:{held}"\n#'), "switch.http", "is in use"),
    ("address not of this host", sub(HTTP, 'api_token = "t0ken"\nhttp = "192.0.2.1:8062"\n#'),
     "switch.http", "not an address of this host"),
    ("no API token off loopback", sub(HTTP, 'http = "192.0.2.1:8062"\n#'),
     "switch.api_token", "listens off this host"),
    ("the laptop secret off loopback", sub('peer = "127.0.0.1:', 'peer = "192.0.2.7:5063"\n#', 1),
     "cluster.secret", "set a secret of your own"),
    ("unknown service", add('\n[[plan]]\nservice = "teleport"\n'),
     "plan[0].service", "'teleport' is not a service"),
    ("certificate that is not there", add(TLS),
     "switch.tls.certificate", "cannot read '/nonexistent/switch.pem'"),
    ("not TOML", sub("[switch]", "[switch"), "twinline.toml", "not valid TOML"),
    ("out of range", add("\n[cluster]\ndead_after = 0\n"), "cluster.dead_after", "out of range"),
    ("server listed twice", sub('name = "as2"', 'name = "as1"'),
     "appservers[1].name", "'as1' appears twice"),
    ("misspelt required key", sub('name = "as2"', 'nom = "as2"'),
     "appservers[1].nom", "unknown key"),
    ("wildcard without advertise", sub(LISTEN, 'listen = ["udp:0.0.0.0:'),
     "switch.advertise", "needed with the wildcard listen address"),
    ("two keys, one port", first_peer_as_metrics,
     "appservers[0].metrics", "is appservers[0].peer already"),
    ("database directory missing", sub("sqlite:///twinline.db", "sqlite:///no/such/dir/t.db"),
     "database.url", "does not exist"),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_an_invalid_configuration_is_one_clear_error_from_check_and_from_start(
    case: Case, tmp_path: Path, held_port: int
) -> None:
    what, breaks, key, words = case
    path = tmp_path / "twinline.toml"
    path.write_text(breaks(good(), held_port))
    for args in (("config", "check", str(path)), ("up", "--config", str(path))):
        result = twinline(*args, cwd=tmp_path)
        lines = result.stderr.strip().splitlines()
        command = " ".join(args[:2])
        assert result.returncode != 0, f"{command} accepted a file with {what}"
        assert len(lines) == 1, f"{command}: one line expected, got:\n{result.stderr}"
        assert lines[0].startswith("Error: configuration error: "), lines[0]
        assert f"{key}: " in lines[0], lines[0]
        assert words in lines[0], lines[0]
        assert "Traceback" not in result.stderr
    assert not (tmp_path / "twinline.db").exists(), "something started"


def test_the_single_processes_refuse_their_own_port_in_use(tmp_path: Path, held_port: int) -> None:
    text = good().replace('http = "127.0.0.1:', f'http = "127.0.0.1:{held_port}"\n#')
    text = text.replace('peer = "127.0.0.1:', f'peer = "127.0.0.1:{held_port}"\n#', 1)
    path = tmp_path / "twinline.toml"
    path.write_text(text)
    for args, key in ((("switch",), "switch.http"), (("appserver", "as1"), "appservers[0].peer")):
        result = twinline(*args, "--config", str(path), cwd=tmp_path)
        assert result.returncode == 1
        assert result.stderr.strip() == (
            f"Error: configuration error: {key}: 127.0.0.1:{held_port} (tcp) is in use: "
            "another process listens there"
        )
    # Checking only as2's addresses passes: as2's are free.
    result = twinline("config", "check", str(path), "--for", "as2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr


def test_a_valid_configuration_passes_the_check(tmp_path: Path) -> None:
    path = tmp_path / "twinline.toml"
    path.write_text(good())
    result = twinline("config", "check", str(path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "valid" in result.stdout and "as1, as2" in result.stdout
