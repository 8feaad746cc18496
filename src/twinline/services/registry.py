"""Which class a service name means, and each service's own configuration.

A `[[plan]] service` is one name, or a list of them (a chain: `twinline.services.chain`),
each one of:

- a service twinline ships (`SERVICES`: `basic`, ...);
- a plug-in: a class an installed package registers under the entry point group
  `twinline.services`, by the entry point's name (pyproject.toml:
  `[project.entry-points."twinline.services"] my-service = "mypkg.mod:MyService"`);
- a class by its import path, `"package.module:Class"`.

A service class may declare `Config`, a msgspec Struct; its settings are the
`[services.NAME]` section, NAME being the class's `name`. Configuration loading
(`twinline.config`) calls `check_services`, so every process refuses to start on a
name that means nothing or settings that do not fit, naming the key. The application
server builds its services with `load_services`: one instance per class, given the
store and its settings. A name the switch sends that a server does not have (their
configurations differ) is refused by the server (`appserver/runner.py`), never run as
another service.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

import msgspec

from twinline.config import Config, ConfigError, validation_error
from twinline.services import SERVICES
from twinline.services.api import Service

if TYPE_CHECKING:
    from twinline.store.base import Store

ENTRY_POINT_GROUP = "twinline.services"
DEFAULT_SERVICE = "basic"  # what a call no plan entry matches gets


class UnknownService(LookupError):
    """A service name that means no service class; the message says why."""


def service_class(spec: str) -> type[Service[Any]]:
    """The class a plan's service name means: built-in, entry point, or module:Class."""
    builtin = SERVICES.get(spec)
    if builtin is not None:
        return builtin
    if ":" in spec:
        return _import_class(spec)
    found = entry_points(group=ENTRY_POINT_GROUP, name=spec)
    if found:
        (entry,) = list(found)[:1]
        try:
            loaded = entry.load()
        except Exception as e:  # noqa: BLE001 - a plug-in's own import error, reported
            raise UnknownService(
                f"{spec!r}: the entry point {entry.value!r} does not load: {e}"
            ) from None
        return _service_or_fail(loaded, f"the entry point {spec!r} ({entry.value})")
    known = ", ".join(known_services())
    raise UnknownService(
        f"{spec!r} is not a service (known: {known}; a plug-in class is named"
        " 'package.module:Class')"
    )


def known_services() -> list[str]:
    """The names a plan can use without an import path: built-ins, then plug-ins."""
    plugins = sorted({e.name for e in entry_points(group=ENTRY_POINT_GROUP)} - set(SERVICES))
    return [*sorted(SERVICES), *plugins]


def _import_class(spec: str) -> type[Service[Any]]:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise UnknownService(f"{spec!r}: name a class as 'package.module:Class'")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        raise UnknownService(f"{spec!r}: cannot import {module_name!r} ({e})") from None
    except Exception as e:  # noqa: BLE001 - a plug-in's own import error, reported
        raise UnknownService(f"{spec!r}: importing {module_name!r} failed: {e!r}") from None
    obj: object = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise UnknownService(f"{spec!r}: {module_name!r} has no {attr!r}") from None
    return _service_or_fail(obj, repr(spec))


def _service_or_fail(obj: object, what: str) -> type[Service[Any]]:
    if not (isinstance(obj, type) and issubclass(obj, Service)):
        raise UnknownService(f"{what} is not a Service class")
    name = getattr(obj, "name", None)
    state = getattr(obj, "State", None)
    if not isinstance(name, str) or not name:
        raise UnknownService(f"{what} has no `name`")
    if not (isinstance(state, type) and issubclass(state, msgspec.Struct)):
        raise UnknownService(f"{what} has no `State` (a msgspec Struct)")
    return obj


def service_settings(cls: type[Service[Any]], section: dict[str, Any] | None) -> Any:
    """`[services.NAME]` converted to the class's `Config` (None if it has none).

    Raises ConfigError naming the key, e.g. `services.prepaid.currency: ...`."""
    key = f"services.{cls.name}"
    config_type = getattr(cls, "Config", None)
    if config_type is None:
        if section:
            raise ConfigError(f"{key}: the service {cls.name!r} takes no settings")
        return None
    if not (isinstance(config_type, type) and issubclass(config_type, msgspec.Struct)):
        raise ConfigError(f"{key}: the service's Config is not a msgspec Struct")
    section = section or {}
    # Unknown keys are refused whether or not the Struct forbids them: a misspelt
    # setting silently ignored is a wrong setting.
    allowed = {f.encode_name for f in msgspec.structs.fields(config_type)}
    for name in section:
        if name not in allowed:
            raise ConfigError(f"{key}.{name}: unknown key (check its spelling and section)")
    try:
        return msgspec.convert(section, config_type)
    except msgspec.ValidationError as e:
        raise validation_error(e, key) from None


def _classes(config: Config) -> dict[str, type[Service[Any]]]:
    """Every service the switch may offer a call to, by the plan's name for it."""
    classes: dict[str, type[Service[Any]]] = {DEFAULT_SERVICE: service_class(DEFAULT_SERVICE)}
    named: dict[str, tuple[str, type[Service[Any]]]] = {}
    for i, entry in enumerate(config.plan):
        chain = entry.services
        if not chain:
            raise ConfigError(f"plan[{i}].service: names no service")
        for j, spec in enumerate(chain):
            key = (
                f"plan[{i}].service"
                if isinstance(entry.service, str)
                else f"plan[{i}].service[{j}]"
            )
            if spec in chain[:j]:
                raise ConfigError(f"{key}: {spec!r} appears twice in the chain")
            try:
                cls = classes.get(spec) or service_class(spec)
            except UnknownService as e:
                raise ConfigError(f"{key}: {e}") from None
            earlier = named.get(cls.name)
            if earlier is not None and earlier[1] is not cls:
                raise ConfigError(
                    f"{key}: {spec!r} is named {cls.name!r}, as {earlier[0]} is:"
                    " each service's settings are [services.NAME], so names must differ"
                )
            named.setdefault(cls.name, (key, cls))
            classes[spec] = cls
    return classes


def check_services(config: Config) -> None:
    """Every plan entry names a service and every settings section fits its class.

    Raises ConfigError naming the key at fault."""
    classes = _classes(config)
    by_name = {cls.name: cls for cls in classes.values()}
    for name, section in config.services.items():
        if not isinstance(section, dict):
            raise ConfigError(f"services.{name}: must be a table of settings, [services.{name}]")
        cls = by_name.get(name)
        if cls is None:
            try:
                cls = service_class(name)
            except UnknownService:
                raise ConfigError(
                    f"services.{name}: no service is named {name!r} (the section takes the"
                    f" name of the service's class; in use: {', '.join(sorted(by_name))})"
                ) from None
        service_settings(cls, section)
    for cls in by_name.values():
        if cls.name not in config.services:
            service_settings(cls, None)  # a Config with required keys needs its section


def load_services(config: Config, store: Store | None) -> dict[str, Service[Any]]:
    """One instance of each service the plan names (and `basic`), with its settings."""
    table: dict[str, Service[Any]] = {}
    instances: dict[type[Service[Any]], Service[Any]] = {}
    for spec, cls in _classes(config).items():
        if cls not in instances:
            instances[cls] = cls(store, service_settings(cls, config.services.get(cls.name)))
        table[spec] = instances[cls]
    return table
