"""Services as plug-ins: names resolved to classes (built-in, entry point, module:Class),
settings checked against each class's Config at start, and an unknown name refused
wherever it shows up, never replaced by another service."""

from __future__ import annotations

import asyncio
import textwrap
from pathlib import Path

import msgspec
import pytest

from twinline.appserver.runtime import AppServerRuntime
from twinline.config import Config, ConfigError, load_config_text
from twinline.link.messages import CallInfo, Command, Offered, Reject, Route
from twinline.services import SERVICES
from twinline.services.basic import BasicCall
from twinline.services.registry import known_services, load_services, service_class

KNOWN = ", ".join([*sorted(SERVICES), "broken", "hello"])  # built-ins, then the plug-ins

PLUGIN = """
import msgspec
from twinline.services.api import Service, ServiceCall


class GreeterConfig(msgspec.Struct, kw_only=True):
    prefix: str                 # required
    ring_timeout: float = 20.0


class GreeterState(msgspec.Struct):
    pass


class Greeter(Service[GreeterState]):
    name = "greeter"
    State = GreeterState
    Config = GreeterConfig
    config: GreeterConfig

    async def offered(self, call: ServiceCall[GreeterState]) -> None:
        call.route(self.config.prefix + call.info.callee, ring_timeout=self.config.ring_timeout)


class Plain(Service[GreeterState]):
    name = "plain"
    State = GreeterState

    async def offered(self, call: ServiceCall[GreeterState]) -> None:
        call.route(call.info.callee)


class AlsoGreeter(Plain):
    name = "greeter"


NOT_A_SERVICE = 42
"""


@pytest.fixture
def plugins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A package on sys.path, `plugmod`, and an installed distribution registering
    its Greeter under the entry point group (a dist-info directory, as pip makes)."""
    (tmp_path / "plugmod.py").write_text(PLUGIN)
    (tmp_path / "badmod.py").write_text("raise RuntimeError('broken at import')\n")
    dist = tmp_path / "twinline_greeter-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: twinline-greeter\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        textwrap.dedent(
            """\
            [twinline.services]
            hello = plugmod:Greeter
            broken = badmod:Thing
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def config(text: str) -> Config:
    return load_config_text(textwrap.dedent(text))


def error(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        config(text)
    return str(info.value)


# --- which class a name means -----------------------------------------------------------------


def test_built_in_entry_point_and_import_path_names(plugins: Path) -> None:
    assert service_class("basic") is BasicCall
    by_entry_point = service_class("hello")
    assert by_entry_point.__name__ == "Greeter"
    assert service_class("plugmod:Greeter") is by_entry_point
    assert known_services() == KNOWN.split(", ")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("nope", f"'nope' is not a service (known: {KNOWN}; a plug-in class is"),
        ("nomod:X", "'nomod:X': cannot import 'nomod' (No module named 'nomod')"),
        ("plugmod:Missing", "'plugmod:Missing': 'plugmod' has no 'Missing'"),
        ("plugmod:NOT_A_SERVICE", "'plugmod:NOT_A_SERVICE' is not a Service class"),
        ("badmod:Thing", "'badmod:Thing': importing 'badmod' failed: RuntimeError('broken"),
        ("broken", "'broken': the entry point 'badmod:Thing' does not load: broken at import"),
        (":X", "':X': name a class as 'package.module:Class'"),
    ],
)
def test_a_name_that_means_no_service_is_a_configuration_error(
    plugins: Path, spec: str, message: str
) -> None:
    text = f"""
        [[plan]]
        service = "basic"
        number = "1"

        [[plan]]
        service = "{spec}"
        number = "2"
        """
    assert error(text).startswith(f"plan[1].service: {message}")


def test_two_classes_may_not_share_a_name(plugins: Path) -> None:
    text = """
        [[plan]]
        service = "hello"
        [[plan]]
        service = "plugmod:AlsoGreeter"
        number = "2"
        [services.greeter]
        prefix = "9"
        """
    assert error(text).startswith(
        "plan[1].service: 'plugmod:AlsoGreeter' is named 'greeter', as plan[0].service is"
    )


# --- settings ---------------------------------------------------------------------------------


PLAN = """
    [[plan]]
    service = "plugmod:Greeter"
    number = "5"
    """


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ("", "services.greeter.prefix: missing (this key is required)"),
        ("[services.greeter]\nprefix = 9\n", "services.greeter.prefix: Expected `str`, got `int`"),
        (
            '[services.greeter]\nprefix = "9"\nring_timeot = 3\n',
            "services.greeter.ring_timeot: unknown key (check its spelling and section)",
        ),
        (
            '[services.greeter]\nprefix = "9"\n[services.plain]\nx = 1\n',
            "services.plain: no service is named 'plain' (the section takes the name of",
        ),
        (
            '[services.greeter]\nprefix = "9"\n[services.basic]\nx = 1\n',
            "services.basic: the service 'basic' takes no settings",
        ),
        (
            "[services]\ngreeter = 3\n",
            "services.greeter: must be a table of settings, [services.greeter]",
        ),
    ],
)
def test_settings_are_checked_against_the_services_config(
    plugins: Path, section: str, message: str
) -> None:
    assert error(PLAN + textwrap.dedent(section)).startswith(message)


def test_each_service_is_built_once_with_its_settings(plugins: Path) -> None:
    conf = config(
        PLAN
        + """
        [[plan]]
        service = "hello"
        number = "6"

        [services.greeter]
        prefix = "9"
        """
    )
    table = load_services(conf, None)
    assert sorted(table) == ["basic", "hello", "plugmod:Greeter"]
    greeter = table["plugmod:Greeter"]
    assert table["hello"] is greeter
    assert greeter.config == msgspec.convert({"prefix": "9"}, type(greeter).Config)  # type: ignore[arg-type]
    assert greeter.config.ring_timeout == 20.0
    assert isinstance(table["basic"], BasicCall) and table["basic"].config is None


# --- an unknown name at run time --------------------------------------------------------------


def test_a_server_without_the_service_refuses_the_call_and_never_runs_basic() -> None:
    table = load_services(Config(), None)
    assert sorted(table) == ["basic"]
    sent: list[msgspec.Struct] = []
    runtime = AppServerRuntime(
        "as1", table, None, to_switch=sent.append, to_peer=lambda p, m: False, wall=lambda: 1.0
    )

    async def scenario() -> None:
        for call, service in (("c1", "mystery:Service"), ("c2", "basic")):
            info = CallInfo(caller="alice", callee="100")
            msg = Offered(
                call=call, epoch=1, role="primary", primary="as1", standby=None,
                service=service, info=info,
            )  # fmt: skip
            runtime.offered(msg)
        for _ in range(5):
            await asyncio.sleep(0)

    asyncio.run(scenario())
    assert sent == [
        Command(call="c1", epoch=1, seq=1, action=Reject(500, "Service Unavailable")),
        Command(call="c2", epoch=1, seq=1, action=Route(["100"])),
    ]
