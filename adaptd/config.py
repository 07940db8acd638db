"""Typed, validated settings loaded from a TOML file.

Keys missing from a file take the defaults below (which `config.toml` documents);
unknown keys and bad values raise `ConfigError` naming the key and what is allowed.

>>> load_config(None).server.max_line_bytes
1048576
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

ENV_VAR = "ADAPTD_CONFIG"


class ConfigError(ValueError):
    """A config file that cannot be used; the message names the file and the key."""


@dataclass(frozen=True)
class DaemonSettings:
    state_dir: str = "state"
    log_level: str = "info"
    shutdown_timeout: float = 30.0


@dataclass(frozen=True)
class StoreSettings:
    url: str = "sqlite:///state/adaptd.db"
    sqlite_synchronous: str = "full"
    pool_size: int = 4


@dataclass(frozen=True)
class ServerSettings:
    socket: str = "state/adaptd.sock"
    socket_mode: str = "0660"
    socket_group: str = ""
    max_line_bytes: int = 1_048_576
    max_batch_records: int = 100_000
    max_pending_records: int = 500_000
    overload_wait: float = 2.0


@dataclass(frozen=True)
class IngestSettings:
    group_commit_records: int = 50_000


@dataclass(frozen=True)
class MetricsSettings:
    listen: str = "127.0.0.1:9464"


@dataclass(frozen=True)
class ModelSettings:
    max_horizon: int = 168
    history: int = 1024
    season: int = 0
    coverage: float = 0.9


@dataclass(frozen=True)
class Settings:
    daemon: DaemonSettings = field(default_factory=DaemonSettings)
    store: StoreSettings = field(default_factory=StoreSettings)
    server: ServerSettings = field(default_factory=ServerSettings)
    ingest: IngestSettings = field(default_factory=IngestSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    model: ModelSettings = field(default_factory=ModelSettings)
    source: str = "<defaults>"

    def socket_path(self) -> Path:
        return Path(self.server.socket)

    def socket_mode(self) -> int:
        return int(self.server.socket_mode, 8)


# Per-key checks: (predicate, what is allowed).
Check = tuple[Callable[[Any], bool], str]
_LEVELS = ("debug", "info", "warning", "error")


def _positive(v: Any) -> bool:
    return v > 0


def _octal_mode(v: str) -> bool:
    try:
        return 0 <= int(v, 8) <= 0o777
    except ValueError:
        return False


def _host_port(v: str) -> bool:
    host, sep, port = v.rpartition(":")
    return v == "" or (bool(sep) and bool(host) and port.isdigit() and 0 < int(port) < 65536)


CHECKS: dict[str, dict[str, Check]] = {
    "daemon": {
        "state_dir": (bool, "a non-empty path"),
        "log_level": (lambda v: v in _LEVELS, f"one of {', '.join(_LEVELS)}"),
        "shutdown_timeout": (_positive, "a number of seconds > 0"),
    },
    "store": {
        "url": (lambda v: "://" in v, "an SQLAlchemy URL such as sqlite:///state/adaptd.db"),
        "sqlite_synchronous": (lambda v: v in ("normal", "full"), "'normal' or 'full'"),
        "pool_size": (lambda v: 1 <= v <= 64, "an integer from 1 to 64"),
    },
    "server": {
        "socket": (lambda v: 0 < len(os.fsencode(v)) < 100, "a path shorter than 100 bytes"),
        "socket_mode": (_octal_mode, "an octal file mode string such as \"0660\""),
        "socket_group": (lambda v: True, "a group name, or empty"),
        "max_line_bytes": (lambda v: 1024 <= v <= 1 << 30, "an integer from 1024 to 2^30"),
        "max_batch_records": (_positive, "an integer > 0"),
        "max_pending_records": (_positive, "an integer > 0"),
        "overload_wait": (lambda v: v >= 0, "a number of seconds >= 0"),
    },
    "ingest": {
        "group_commit_records": (_positive, "an integer > 0"),
    },
    "metrics": {
        "listen": (_host_port, "HOST:PORT such as 127.0.0.1:9464, or empty to disable"),
    },
    "model": {
        "max_horizon": (lambda v: 1 <= v <= 10_000, "an integer from 1 to 10000"),
        "history": (lambda v: 16 <= v <= 1_000_000, "an integer from 16 to 1000000"),
        "season": (lambda v: v >= 0, "an integer >= 0 (0 = infer from the step)"),
        "coverage": (lambda v: 0 < v < 1, "a number between 0 and 1"),
    },
}


def _type_ok(value: Any, annotation: str) -> bool:
    if annotation == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation == "bool":
        return isinstance(value, bool)
    return isinstance(value, str)


def _build_section(name: str, cls: type, raw: Any, source: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: [{name}] must be a table")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for key, value in raw.items():
        where = f"{source}: {name}.{key}"
        if key not in fields:
            raise ConfigError(f"{where}: unknown key (allowed: {', '.join(fields)})")
        predicate, allowed = CHECKS[name][key]
        annotation = str(fields[key].type)
        if not _type_ok(value, annotation) or not predicate(value):
            raise ConfigError(f"{where} = {value!r}: must be {allowed}")
        values[key] = float(value) if annotation == "float" else value
    return cls(**values)


def _relative_to(base: Path, value: str) -> str:
    return value if os.path.isabs(value) else str(base / value)


def _resolve_paths(settings: Settings, base: Path) -> Settings:
    """Relative paths in a file are relative to the file, so clients anywhere agree."""
    url = settings.store.url
    prefix = "sqlite:///"
    if url.startswith(prefix) and url != prefix and not url[len(prefix):].startswith(("/", ":memory:")):
        url = prefix + _relative_to(base, url[len(prefix):])
    return dataclasses.replace(
        settings,
        daemon=dataclasses.replace(settings.daemon, state_dir=_relative_to(base, settings.daemon.state_dir)),
        store=dataclasses.replace(settings.store, url=url),
        server=dataclasses.replace(settings.server, socket=_relative_to(base, settings.server.socket)),
    )


def parse_config(data: dict[str, Any], source: str = "<config>", base: Path | None = None) -> Settings:
    sections = {f.name: f for f in dataclasses.fields(Settings) if f.name != "source"}
    built: dict[str, Any] = {}
    for name, raw in data.items():
        if name not in sections:
            raise ConfigError(f"{source}: unknown section [{name}] (allowed: {', '.join(sections)})")
        built[name] = _build_section(name, sections[name].default_factory, raw, source)  # type: ignore[misc]
    settings = Settings(**built, source=source)
    return _resolve_paths(settings, base if base is not None else Path.cwd())


def config_path(explicit: str | None) -> Path | None:
    """The file to read: --config, else $ADAPTD_CONFIG, else none (built-in defaults)."""
    chosen = explicit or os.environ.get(ENV_VAR)
    return Path(chosen) if chosen else None


def load_config(explicit: str | None) -> Settings:
    path = config_path(explicit)
    if path is None:
        return parse_config({}, "<defaults>")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return parse_config(data, str(path), path.resolve().parent)
