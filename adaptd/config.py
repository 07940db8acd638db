"""Typed, validated settings loaded from a TOML file.

Keys missing from a file take the defaults below (which `config.toml` documents);
unknown keys and bad values raise `ConfigError` naming the key and what is allowed.

>>> load_config(None).server.max_line_bytes
1048576
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from .cluster import Membership

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
    connect_timeout: float = 60.0
    retention: float = 0.0
    forget_after: float = 0.0   # a series that received nothing this long is removed whole; 0 never


@dataclass(frozen=True)
class ServerSettings:
    socket: str = "state/adaptd.sock"
    socket_mode: str = "0660"
    socket_group: str = ""
    max_line_bytes: int = 1_048_576
    max_connections: int = 1024
    max_batch_records: int = 10_000
    max_pending_records: int = 500_000
    overload_wait: float = 2.0
    forecast_wait: float = 0.5
    request_timeout: float = 0.0


@dataclass(frozen=True)
class IngestSettings:
    group_commit_records: int = 50_000


@dataclass(frozen=True)
class MetricsSettings:
    listen: str = "127.0.0.1:9464"
    series: tuple[str, ...] = ()
    max_series: int = 100
    stale_after: float = 3600.0


@dataclass(frozen=True)
class ModelSettings:
    engine: str = "online"
    max_horizon: int = 48
    history: int = 1024
    season: int = 0
    coverage: float = 0.9
    interval_rate: float = 0.02
    window: int = 48
    cold_start: int = 4
    patch: int = 4
    hidden: int = 32
    learning_rate: float = 0.01
    train_every: int = 4
    rls_lags: int = 32
    rls_forgetting: float = 0.9999
    mixture_eta: float = 4.0
    mixture_memory: float = 0.05
    mixture_anchor: float = 0.5
    blend_memory: float = 0.002
    torch_threads: int = 1
    learning_backlog: int = 1_000_000
    shed_lag: float = 1.0
    max_gap_fill: int = 48


@dataclass(frozen=True)
class DriftSettings:
    detector: str = "adwin"
    cooldown: int = 48
    adwin_delta: float = 0.002
    kswin_alpha: float = 0.005
    kswin_window_size: int = 100
    kswin_stat_size: int = 30
    ph_min_instances: int = 30
    ph_delta: float = 0.005
    ph_threshold: float = 50.0
    ph_alpha: float = 0.9999

    def detector_params(self, seed: int = 0) -> dict[str, Any]:
        if self.detector == "adwin":
            return {"delta": self.adwin_delta}
        if self.detector == "kswin":
            return {"alpha": self.kswin_alpha, "window_size": self.kswin_window_size,
                    "stat_size": self.kswin_stat_size, "seed": seed}
        return {"min_instances": self.ph_min_instances, "delta": self.ph_delta,
                "threshold": self.ph_threshold, "alpha": self.ph_alpha}


@dataclass(frozen=True)
class AdaptSettings:
    enabled: bool = True
    init: str = "meta"
    steps: int = 5
    window: int = 96
    validation: int = 8
    keep: float = 0.5
    step_size: float = 0.05
    workers: int = 1
    regime_memory: int = 0
    regime_shared: int = 64
    regime_lookup: int = 1
    regime_pool: int = 16


@dataclass(frozen=True)
class MetaSettings:
    algorithm: str = "meta_sgd"
    iterations: int = 300
    meta_batch: int = 32
    outer_rate: float = 0.001
    step_rate: float = 0.03
    cold_start_weight: float = 1.0
    splices: float = 0.0
    query: int = 24
    validation_series: float = 0.2
    validation_tasks: int = 256
    max_series: int = 2000
    max_history: int = 10_000
    retrain_interval: float = 86_400.0
    refresh_interval: float = 60.0
    torch_threads: int = 1
    nice: int = 19


@dataclass(frozen=True)
class SchedulerSettings:
    checkpoint_interval: float = 300.0
    retention_interval: float = 3600.0
    misfire_grace_time: float = 60.0


@dataclass(frozen=True)
class ClusterSettings:
    members: int = 1      # daemons sharing one database; each serves the series that hash to it
    member: int = 0       # this daemon's number, 0 .. members - 1
    sockets: tuple[str, ...] = ()   # for the client commands: every member's socket, in member order


@dataclass(frozen=True)
class Settings:
    daemon: DaemonSettings = field(default_factory=DaemonSettings)
    store: StoreSettings = field(default_factory=StoreSettings)
    server: ServerSettings = field(default_factory=ServerSettings)
    ingest: IngestSettings = field(default_factory=IngestSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    model: ModelSettings = field(default_factory=ModelSettings)
    drift: DriftSettings = field(default_factory=DriftSettings)
    adapt: AdaptSettings = field(default_factory=AdaptSettings)
    meta: MetaSettings = field(default_factory=MetaSettings)
    scheduler: SchedulerSettings = field(default_factory=SchedulerSettings)
    cluster: ClusterSettings = field(default_factory=ClusterSettings)
    source: str = "<defaults>"

    def socket_path(self) -> Path:
        return Path(self.server.socket)

    def socket_mode(self) -> int:
        return int(self.server.socket_mode, 8)

    def membership(self) -> Membership:
        from .cluster import Membership

        return Membership(self.cluster.members, self.cluster.member)


# Per-key checks: (predicate, what is allowed).
Check = tuple[Callable[[Any], bool], str]
_LEVELS = ("debug", "info", "warning", "error")
MAX_WAIT = 86_400.0  # a day: longer waits are mistakes (and inf is valid TOML)
MAX_SCHEDULE = 30 * 86_400  # 30 days
MAX_RETENTION = 100 * 365 * 86_400.0
MAX_NICE = 19  # the lowest CPU priority nice(1) gives


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
        # Bounded: TOML allows inf, and thread joins/waits overflow on huge timeouts.
        "shutdown_timeout": (lambda v: 0 < v <= MAX_WAIT, f"a number of seconds > 0 and <= {MAX_WAIT:.0f}"),
    },
    "store": {
        "url": (lambda v: "://" in v and v.split("://")[0].split("+")[0] in ("sqlite", "postgresql")
                and not _in_memory(v),
                "an SQLAlchemy URL of an SQLite or PostgreSQL database, such as sqlite:///state/adaptd.db "
                "or postgresql+psycopg://user:password@host/adaptd (postgres:// is not one: write "
                "postgresql+psycopg://; and not an in-memory SQLite database: "
                "every acknowledged record would be lost at exit)"),
        "sqlite_synchronous": (lambda v: v in ("normal", "full"), "'normal' or 'full'"),
        "retention": (lambda v: v == 0 or 60 <= v <= MAX_RETENTION,
                      f"0 (keep everything) or a number of seconds from 60 to {MAX_RETENTION:.0f} (100 years)"),
        "forget_after": (lambda v: v == 0 or 60 <= v <= MAX_RETENTION,
                         f"0 (never) or a number of seconds from 60 to {MAX_RETENTION:.0f} (100 years)"),
        "pool_size": (lambda v: 1 <= v <= 64, "an integer from 1 to 64"),
        "connect_timeout": (lambda v: 0 <= v <= MAX_WAIT,
                            f"a number of seconds from 0 (try once) to {MAX_WAIT:.0f}"),
    },
    "server": {
        "socket": (lambda v: 0 < len(os.fsencode(v)) < 100, "a path shorter than 100 bytes"),
        "socket_mode": (_octal_mode, "an octal file mode string such as \"0660\""),
        "socket_group": (lambda v: True, "a group name, or empty"),
        "max_line_bytes": (lambda v: 1024 <= v <= 1 << 30, "an integer from 1024 to 2^30"),
        "max_batch_records": (_positive, "an integer > 0"),
        "max_connections": (lambda v: 1 <= v <= 100_000, "an integer from 1 to 100000"),
        "max_pending_records": (_positive, "an integer > 0"),
        "overload_wait": (lambda v: 0 <= v <= MAX_WAIT, f"a number of seconds from 0 to {MAX_WAIT:.0f}"),
        "forecast_wait": (lambda v: 0 <= v <= 60, "a number of seconds from 0 to 60"),
        "request_timeout": (lambda v: 0 <= v <= MAX_WAIT,
                            f"a number of seconds from 0 (no limit) to {MAX_WAIT:.0f}"),
    },
    "ingest": {
        "group_commit_records": (_positive, "an integer > 0"),
    },
    "metrics": {
        "listen": (_host_port, "HOST:PORT such as 127.0.0.1:9464, or empty to disable"),
        "series": (lambda v: len(set(v)) == len(v) and all(0 < len(n) <= 200 for n in v),
                   "a list of distinct series names (1 to 200 characters each)"),
        "max_series": (lambda v: 0 <= v <= 10_000, "an integer from 0 to 10000"),
        "stale_after": (lambda v: 1 <= v <= MAX_SCHEDULE, f"a number of seconds from 1 to {MAX_SCHEDULE}"),
    },
    "model": {
        "engine": (lambda v: v in ("online", "naive"), "'online' or 'naive'"),
        "max_horizon": (lambda v: 1 <= v <= 1024, "an integer from 1 to 1024"),
        "history": (lambda v: 16 <= v <= 1_000_000, "an integer from 16 to 1000000"),
        "season": (lambda v: v >= 0, "an integer >= 0 (0 = infer from the step)"),
        "coverage": (lambda v: 0 < v < 1, "a number between 0 and 1"),
        "interval_rate": (lambda v: 0 < v <= 1, "a number in (0, 1]"),
        "window": (lambda v: 4 <= v <= 1024, "an integer from 4 to 1024"),
        "cold_start": (lambda v: v == 0 or 2 <= v <= 1024,
                       "0 (off) or an integer from 2 to model.window (observations)"),
        "patch": (lambda v: 1 <= v <= 64, "an integer from 1 to 64 dividing model.window"),
        "hidden": (lambda v: 1 <= v <= 512, "an integer from 1 to 512"),
        "learning_rate": (lambda v: 0 <= v <= 1, "a number from 0 (no online learning) to 1"),
        "train_every": (lambda v: 1 <= v <= 10_000, "an integer from 1 to 10000"),
        "rls_lags": (lambda v: 1 <= v <= 256, "an integer from 1 to 256, at most model.window - 1"),
        "rls_forgetting": (lambda v: 0.9 <= v <= 1, "a number from 0.9 to 1"),
        "mixture_eta": (lambda v: 0 <= v <= 100, "a number from 0 (equal weights) to 100"),
        "mixture_memory": (lambda v: 0 < v <= 1, "a number in (0, 1]"),
        "mixture_anchor": (lambda v: 0 <= v <= 1, "a number from 0 (weights follow recent losses only) to 1 (the anchor's blend of the "
                           "experts within 3x of the best one's recent loss)"),
        "blend_memory": (lambda v: 0 <= v < 1, "a number from 0 (the anchor's blend is fixed: half RLS, half recurrent) "
                         "to below 1 (the weight of the newest error in the learnt blend's memory)"),
        "torch_threads": (lambda v: 1 <= v <= 64, "an integer from 1 to 64"),
        "learning_backlog": (lambda v: 1000 <= v <= 100_000_000, "an integer from 1000 to 100000000"),
        "shed_lag": (lambda v: 0 <= v <= 86_400, "a number of seconds from 0 (never skip) to 86400"),
        "max_gap_fill": (lambda v: 0 <= v <= 10_000, "an integer from 0 (never fill) to 10000 (steps)"),
    },
    "drift": {
        "detector": (lambda v: v in ("adwin", "kswin", "page_hinkley"), "'adwin', 'kswin' or 'page_hinkley'"),
        "cooldown": (lambda v: v >= 0, "an integer >= 0 (observations)"),
        "adwin_delta": (lambda v: 0 < v < 1, "a number between 0 and 1"),
        "kswin_alpha": (lambda v: 0 < v < 1, "a number between 0 and 1"),
        "kswin_window_size": (lambda v: v >= 10, "an integer >= 10"),
        "kswin_stat_size": (lambda v: v >= 2, "an integer >= 2, below kswin_window_size"),
        "ph_min_instances": (lambda v: v >= 1, "an integer >= 1"),
        "ph_delta": (lambda v: v >= 0, "a number >= 0"),
        "ph_threshold": (_positive, "a number > 0"),
        "ph_alpha": (lambda v: 0 < v <= 1, "a number in (0, 1]"),
    },
    "adapt": {
        "enabled": (lambda v: True, "true or false"),
        "init": (lambda v: v in ("meta", "pretrained", "random"), "'meta', 'pretrained' or 'random'"),
        "steps": (lambda v: 0 <= v <= 1000, "an integer from 0 to 1000"),
        "window": (lambda v: 4 <= v <= 10_000, "an integer from 4 to 10000"),
        "validation": (lambda v: 1 <= v <= 1000, "an integer from 1 to 1000, below adapt.window"),
        "keep": (lambda v: 0 <= v <= 0.95, "a number from 0 (a full restart) to 0.95"),
        "step_size": (lambda v: 0 < v <= 10, "a number in (0, 10]: the inner-loop SGD step"),
        "workers": (lambda v: 0 <= v <= 64, "an integer from 0 (adapt inline) to 64"),
        "regime_memory": (lambda v: 0 <= v <= 64, "an integer from 0 (none) to 64 remembered regimes per series"),
        "regime_shared": (lambda v: 0 <= v <= 4096, "an integer from 0 (none) to 4096 regimes shared by all series"),
        "regime_lookup": (lambda v: 0 <= v <= 16, "an integer from 0 (regime memory off) to 16"),
        "regime_pool": (lambda v: 1 <= v <= 4096, "an integer from 1 to 4096 remembered regimes ranked at a drift"),
    },
    "meta": {
        "algorithm": (lambda v: v in ("meta_sgd", "reptile"), "'meta_sgd' or 'reptile'"),
        "iterations": (lambda v: 1 <= v <= 1_000_000, "an integer from 1 to 1000000"),
        "meta_batch": (lambda v: 1 <= v <= 4096, "an integer from 1 to 4096"),
        "outer_rate": (lambda v: 0 < v <= 1, "a number in (0, 1]"),
        "step_rate": (lambda v: 0 < v <= 1, "a number in (0, 1]"),
        "cold_start_weight": (lambda v: 0 <= v <= 10, "a number from 0 (off) to 10"),
        "splices": (lambda v: 0 <= v <= 0.9, "a share of drift tasks from 0 (none) to 0.9"),
        "query": (lambda v: 1 <= v <= 10_000, "an integer from 1 to 10000 (steps after a drift)"),
        "validation_series": (lambda v: 0 < v < 1, "a fraction between 0 and 1"),
        "validation_tasks": (lambda v: 1 <= v <= 100_000, "an integer from 1 to 100000"),
        "max_series": (lambda v: 10 <= v <= 1_000_000, "an integer from 10 to 1000000"),
        "max_history": (lambda v: 1000 <= v <= 1_000_000, "an integer from 1000 to 1000000 values per series"),
        "retrain_interval": (lambda v: v == 0 or 60 <= v <= MAX_SCHEDULE,
                             f"0 (never) or a number of seconds from 60 to {MAX_SCHEDULE}"),
        "refresh_interval": (lambda v: 1 <= v <= MAX_SCHEDULE, f"a number of seconds from 1 to {MAX_SCHEDULE}"),
        "torch_threads": (lambda v: 1 <= v <= 64, "an integer from 1 to 64"),
        "nice": (lambda v: 0 <= v <= MAX_NICE, f"an integer from 0 (the daemon's priority) to {MAX_NICE} (the lowest)"),
    },
    "scheduler": {
        # Bounded: APScheduler overflows computing dates from huge intervals.
        "checkpoint_interval": (lambda v: 1 <= v <= MAX_SCHEDULE, f"a number of seconds from 1 to {MAX_SCHEDULE}"),
        "retention_interval": (lambda v: 60 <= v <= MAX_SCHEDULE, f"a number of seconds from 60 to {MAX_SCHEDULE}"),
        "misfire_grace_time": (lambda v: 1 <= v <= MAX_SCHEDULE, f"a number of seconds from 1 to {MAX_SCHEDULE}"),
    },
    "cluster": {
        "members": (lambda v: 1 <= v <= 1024, "an integer from 1 (one daemon) to 1024"),
        "member": (lambda v: v >= 0, "an integer from 0 to cluster.members - 1"),
        "sockets": (lambda v: len(set(v)) == len(v) and all(0 < len(os.fsencode(p)) < 100 for p in v),
                    "a list of distinct socket paths (each shorter than 100 bytes), one per cluster member "
                    "in member order, or empty"),
    },
}


# Checks across keys: (the key to blame, what must hold, what it must be).
RELATIONS: list[tuple[str, Callable[[Settings], bool], Callable[[Settings], str]]] = [
    ("model.patch", lambda s: s.model.window % s.model.patch == 0,
     lambda s: f"a divisor of model.window ({s.model.window})"),
    ("model.cold_start", lambda s: s.model.cold_start <= s.model.window,
     lambda s: f"0 (off) or an integer from 2 to model.window ({s.model.window})"),
    ("model.rls_lags", lambda s: s.model.rls_lags < s.model.window,
     lambda s: f"at most model.window - 1 ({s.model.window - 1})"),
    ("adapt.validation", lambda s: s.adapt.validation < s.adapt.window,
     lambda s: f"below adapt.window ({s.adapt.window})"),
    ("drift.kswin_stat_size", lambda s: s.drift.kswin_stat_size < s.drift.kswin_window_size,
     lambda s: f"below drift.kswin_window_size ({s.drift.kswin_window_size})"),
    ("cluster.member", lambda s: s.cluster.member < s.cluster.members,
     lambda s: f"an integer from 0 to cluster.members - 1 ({s.cluster.members - 1})"),
    ("cluster.members", lambda s: s.cluster.members == 1 or s.store.url.startswith("postgresql"),
     lambda s: "1 unless [store] url is a PostgreSQL database (daemons sharing an SQLite file would queue "
               "on its one write lock)"),
    ("cluster.sockets", lambda s: s.cluster.members == 1 or not s.cluster.sockets
     or len(s.cluster.sockets) == s.cluster.members,
     lambda s: f"empty or one socket per member ({s.cluster.members}), in member order"),
]


def _check_relations(settings: Settings, source: str) -> None:
    for key, holds, allowed in RELATIONS:
        if not holds(settings):
            section, name = key.split(".")
            value = getattr(getattr(settings, section), name)
            raise ConfigError(f"{source}: {key} = {value!r}: must be {allowed(settings)}")


def _type_ok(value: Any, annotation: str) -> bool:
    if annotation == "float":  # TOML has inf and nan; no setting means them
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if annotation == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation == "bool":
        return isinstance(value, bool)
    if annotation == "tuple[str, ...]":
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
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
            raise ConfigError(f"{where} = {_shown(value)!r}: must be {allowed}")
        values[key] = float(value) if annotation == "float" else tuple(value) if isinstance(value, list) else value
    return cls(**values)


def _shown(value: Any) -> Any:
    """A value for an error message, without a password in a URL (`user:secret@host`): the
    message goes to the terminal and the journal."""
    # Up to the last "@": a password may hold "@" or "/" itself.
    return re.sub(r"(://[^/@:]*:).*@", r"\1***@", value) if isinstance(value, str) else value


def _in_state_dir(settings: Settings, data: dict[str, Any]) -> Settings:
    """The store and the socket default to files in daemon.state_dir."""
    state = settings.daemon.state_dir
    store, server = settings.store, settings.server
    if "url" not in data.get("store", {}):
        store = dataclasses.replace(store, url=f"sqlite:///{os.path.join(state, 'adaptd.db')}")
    if "socket" not in data.get("server", {}):
        server = dataclasses.replace(server, socket=os.path.join(state, "adaptd.sock"))
    return dataclasses.replace(settings, store=store, server=server)


def _relative_to(base: Path, value: str) -> str:
    return value if os.path.isabs(value) else str(base / value)


def _in_memory(url: str) -> bool:
    """An SQLite URL without a file (sqlite://, sqlite:///:memory:, mode=memory)."""
    if not url.startswith("sqlite"):
        return False
    path = url.split("://", 1)[1]
    return path in ("", "/") or path.startswith("/:memory:") or "mode=memory" in path


def _resolve_paths(settings: Settings, base: Path) -> Settings:
    """Relative paths in a file are relative to the file, so clients anywhere agree."""
    url = settings.store.url
    sqlite = re.match(r"sqlite(\+\w+)?:///", url)  # with or without a driver, e.g. sqlite+pysqlite:///
    if sqlite:
        path = url[sqlite.end():]
        if path and not path.startswith(("/", ":memory:")):
            url = sqlite.group(0) + _relative_to(base, path)
    return dataclasses.replace(
        settings,
        daemon=dataclasses.replace(settings.daemon, state_dir=_relative_to(base, settings.daemon.state_dir)),
        store=dataclasses.replace(settings.store, url=url),
        server=dataclasses.replace(settings.server, socket=_relative_to(base, settings.server.socket)),
        cluster=dataclasses.replace(settings.cluster,
                                    sockets=tuple(_relative_to(base, p) for p in settings.cluster.sockets)),
    )


def parse_config(data: dict[str, Any], source: str = "<config>", base: Path | None = None) -> Settings:
    sections = {f.name: f for f in dataclasses.fields(Settings) if f.name != "source"}
    built: dict[str, Any] = {}
    for name, raw in data.items():
        if name not in sections:
            raise ConfigError(f"{source}: unknown section [{name}] (allowed: {', '.join(sections)})")
        built[name] = _build_section(name, sections[name].default_factory, raw, source)  # type: ignore[misc]
    settings = Settings(**built, source=source)
    _check_relations(settings, source)
    settings = _in_state_dir(settings, data)
    resolved = _resolve_paths(settings, base if base is not None else Path.cwd())
    # A relative socket path is checked again once resolved: bind() and connect() fail on long paths.
    given = [("server.socket", settings.server.socket, resolved.server.socket)]
    given += [("cluster.sockets", p, full) for p, full in zip(settings.cluster.sockets, resolved.cluster.sockets)]
    for key, path, full in given:
        if not CHECKS["server"]["socket"][0](full):
            raise ConfigError(f"{source}: {key} = {path!r} resolves to {full!r}: must be "
                              f"{CHECKS['server']['socket'][1]}; use a shorter absolute path")
    c = resolved.cluster
    if c.members > 1 and c.sockets and Path(c.sockets[c.member]) != Path(resolved.server.socket):
        # A member's own list in the wrong order: caught here, not by the first client it misleads.
        raise ConfigError(f"{source}: cluster.sockets[{c.member}] = {c.sockets[c.member]!r} is not this member's "
                          f"own server.socket ({resolved.server.socket!r}): list the sockets in member order")
    return resolved


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
