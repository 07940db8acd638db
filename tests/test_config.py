"""Configuration: the documented defaults, validation messages, file choice and path resolution."""

from __future__ import annotations

import dataclasses
import os
import tomllib
from pathlib import Path

import pytest

from adaptd.cli import main
from adaptd.config import CHECKS, ENV_VAR, ConfigError, Settings, load_config, parse_config

REPO = Path(__file__).resolve().parent.parent
REPO_CONFIG = REPO / "config.toml"
SECTIONS = [f.name for f in dataclasses.fields(Settings) if f.name != "source"]


def section_fields(name: str) -> dict[str, dataclasses.Field]:  # type: ignore[type-arg]
    cls = {f.name: f for f in dataclasses.fields(Settings)}[name].default_factory  # type: ignore[misc]
    return {f.name: f for f in dataclasses.fields(cls)}


def write(tmp_path: Path, text: str, name: str = "adaptd.toml") -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(autouse=True)
def no_env_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)


# -- the documented defaults ----------------------------------------------------------------

def test_repo_config_documents_every_key_with_its_default() -> None:
    raw = tomllib.loads(REPO_CONFIG.read_text(encoding="utf-8"))
    assert sorted(raw) == sorted(SECTIONS)
    defaults = Settings()
    for section in SECTIONS:
        fields = section_fields(section)
        assert sorted(raw[section]) == sorted(fields), f"[{section}] keys differ from the dataclass"
        for key in fields:
            documented = raw[section][key]
            documented = tuple(documented) if isinstance(documented, list) else documented
            assert documented == getattr(getattr(defaults, section), key), f"{section}.{key}"


def test_repo_config_equals_the_builtin_defaults_after_path_resolution() -> None:
    from_file = load_config(str(REPO_CONFIG))
    builtin = parse_config({}, "<defaults>", REPO)
    assert dataclasses.replace(from_file, source="x") == dataclasses.replace(builtin, source="x")
    assert from_file.source == str(REPO_CONFIG)
    assert from_file.store.url == f"sqlite:///{REPO}/state/adaptd.db"
    assert from_file.server.socket == str(REPO / "state" / "adaptd.sock")
    assert from_file.daemon.state_dir == str(REPO / "state")
    assert from_file.socket_mode() == 0o660
    assert from_file.metrics.listen == "127.0.0.1:9464"


def test_every_key_has_a_check_and_every_check_a_key() -> None:
    assert sorted(CHECKS) == sorted(SECTIONS)
    for section in SECTIONS:
        assert sorted(CHECKS[section]) == sorted(section_fields(section))


def test_a_partial_file_changes_only_its_keys(tmp_path: Path) -> None:
    settings = load_config(str(write(tmp_path, "[model]\nseason = 24\n")))
    assert settings.model.season == 24
    defaults = parse_config({}, "x", tmp_path)
    assert dataclasses.replace(settings, model=defaults.model, source="x") == defaults


def test_no_file_and_no_env_means_defaults_relative_to_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_config(None)
    assert settings.source == "<defaults>"
    assert settings.server.socket == str(tmp_path / "state" / "adaptd.sock")
    assert settings.server.max_line_bytes == 1 << 20


def test_integers_are_accepted_for_float_keys(tmp_path: Path) -> None:
    settings = load_config(str(write(tmp_path, "[daemon]\nshutdown_timeout = 5\n[server]\noverload_wait = 0\n")))
    assert settings.daemon.shutdown_timeout == 5.0 and isinstance(settings.daemon.shutdown_timeout, float)
    assert settings.server.overload_wait == 0.0 and isinstance(settings.server.overload_wait, float)


@pytest.mark.parametrize("section, key, literal", [
    ("metrics", "listen", '""'),
    ("metrics", "listen", '"[::1]:9464"'),
    ("metrics", "listen", '"0.0.0.0:65535"'),
    ("metrics", "series", '["load", "zone 2/temp"]'),
    ("metrics", "series", "[]"),
    ("server", "socket_mode", '"600"'),
    ("server", "socket_mode", '"0777"'),
    ("server", "max_line_bytes", "1024"),
    ("server", "max_line_bytes", str(1 << 30)),
    ("store", "url", '"postgresql+psycopg://adaptd:secret@db.example/adaptd"'),
    ("store", "sqlite_synchronous", '"normal"'),
    ("store", "pool_size", "64"),
    ("store", "connect_timeout", "0"),
    ("store", "connect_timeout", "86400"),
    ("store", "retention", "0"),
    ("store", "retention", "7776000"),
    ("store", "forget_after", "0"),
    ("store", "forget_after", "2592000"),
    ("scheduler", "retention_interval", "60"),
    ("daemon", "log_level", '"debug"'),
    ("model", "season", "0"),
    ("model", "history", "16"),
    ("model", "max_horizon", "1024"),
    ("model", "coverage", "0.5"),
    ("model", "learning_rate", "0"),
    ("model", "rls_forgetting", "1"),
    ("model", "mixture_anchor", "0"),
    ("model", "mixture_anchor", "1"),
    ("model", "blend_memory", "0"),
    ("model", "blend_memory", "0.999"),
    ("drift", "cooldown", "0"),
    ("adapt", "steps", "0"),
    ("adapt", "keep", "0"),
    ("adapt", "keep", "0.95"),
    ("adapt", "workers", "0"),
    ("adapt", "enabled", "false"),
    ("adapt", "regime_memory", "0"),
    ("adapt", "regime_shared", "4096"),
    ("adapt", "regime_lookup", "0"),
    ("adapt", "regime_pool", "1"),
    ("cluster", "sockets", "[]"),
    ("cluster", "sockets", '["/run/adaptd-0/adaptd.sock", "/run/adaptd-1/adaptd.sock"]'),
])
def test_edge_values_that_are_allowed(tmp_path: Path, section: str, key: str, literal: str) -> None:
    settings = load_config(str(write(tmp_path, f"[{section}]\n{key} = {literal}\n")))
    expected = tomllib.loads(f"v = {literal}")["v"]
    assert getattr(getattr(settings, section), key) == (tuple(expected) if isinstance(expected, list) else expected)


BAD_VALUES = [
    ("daemon", "state_dir", '""'),
    ("daemon", "log_level", '"verbose"'),
    ("daemon", "log_level", '"INFO "'),
    ("daemon", "shutdown_timeout", "0"),
    ("daemon", "shutdown_timeout", "-1.5"),
    ("daemon", "shutdown_timeout", "nan"),
    ("daemon", "shutdown_timeout", "inf"),
    ("daemon", "shutdown_timeout", "1e300"),
    ("store", "url", '"state/adaptd.db"'),
    ("store", "url", '""'),
    ("store", "sqlite_synchronous", '"off"'),
    ("store", "pool_size", "0"),
    ("store", "pool_size", "65"),
    ("store", "connect_timeout", "-1"),
    ("store", "connect_timeout", "inf"),
    ("store", "connect_timeout", "86401"),
    ("store", "retention", "-1"),
    ("store", "retention", "30"),           # less than a minute: a typo for days or hours
    ("store", "retention", "inf"),
    ("store", "retention", "nan"),
    ("store", "forget_after", "-1"),
    ("store", "forget_after", "59"),
    ("store", "forget_after", "inf"),
    ("scheduler", "retention_interval", "0"),
    ("scheduler", "retention_interval", "1e12"),
    ("server", "socket", '""'),
    ("server", "socket", '"' + "s" * 100 + '"'),
    ("server", "socket_mode", '"rw-rw----"'),
    ("server", "socket_mode", '"0999"'),
    ("server", "socket_mode", '"1777"'),
    ("server", "socket_mode", '""'),
    ("server", "max_line_bytes", "1023"),
    ("server", "max_line_bytes", str((1 << 30) + 1)),
    ("server", "max_batch_records", "0"),
    ("server", "max_pending_records", "-1"),
    ("server", "overload_wait", "-0.5"),
    ("server", "overload_wait", "inf"),
    ("server", "forecast_wait", "-1"),
    ("server", "forecast_wait", "61"),
    ("server", "request_timeout", "-1"),
    ("server", "request_timeout", "inf"),
    ("ingest", "group_commit_records", "0"),
    ("metrics", "listen", '"9464"'),
    ("server", "max_connections", "0"),
    ("server", "max_connections", "100001"),
    ("metrics", "series", '["a", "a"]'),
    ("metrics", "series", '[""]'),
    ("metrics", "max_series", "-1"),
    ("metrics", "max_series", "10001"),
    ("metrics", "stale_after", "0"),
    ("meta", "algorithm", '"maml"'),
    ("meta", "iterations", "0"),
    ("meta", "meta_batch", "0"),
    ("meta", "outer_rate", "0"),
    ("meta", "step_rate", "1.5"),
    ("meta", "cold_start_weight", "-0.5"),
    ("meta", "cold_start_weight", "11"),
    ("meta", "cold_start_weight", "nan"),
    ("meta", "splices", "-1"),
    ("meta", "splices", "0.95"),
    ("meta", "query", "0"),
    ("meta", "validation_series", "1"),
    ("meta", "validation_tasks", "0"),
    ("meta", "max_series", "5"),
    ("meta", "max_history", "100"),
    ("meta", "retrain_interval", "30"),
    ("meta", "torch_threads", "0"),
    ("meta", "nice", "-1"),      # raising priority needs root, and would take cores from forecasts
    ("meta", "nice", "20"),
    ("meta", "refresh_interval", "0.5"),
    ("metrics", "listen", '":9464"'),
    ("metrics", "listen", '"localhost:0"'),
    ("metrics", "listen", '"localhost:65536"'),
    ("metrics", "listen", '"localhost:http"'),
    ("model", "engine", '"gru"'),
    ("model", "max_horizon", "0"),
    ("model", "max_horizon", "1025"),
    ("model", "history", "15"),
    ("model", "season", "-1"),
    ("model", "coverage", "0"),
    ("model", "coverage", "1"),
    ("model", "coverage", "1.5"),
    ("model", "coverage", "nan"),
    ("model", "interval_rate", "0"),
    ("model", "interval_rate", "1.5"),
    ("model", "window", "3"),
    ("model", "window", "1025"),
    ("model", "cold_start", "1"),
    ("model", "cold_start", "-4"),
    ("model", "cold_start", "2.5"),
    ("model", "patch", "0"),
    ("model", "patch", "65"),
    ("model", "hidden", "0"),
    ("model", "hidden", "513"),
    ("model", "learning_rate", "-0.1"),
    ("model", "learning_rate", "1.5"),
    ("model", "learning_rate", "nan"),
    ("model", "train_every", "0"),
    ("model", "rls_lags", "0"),
    ("model", "rls_lags", "257"),
    ("model", "rls_forgetting", "0.8"),
    ("model", "rls_forgetting", "1.01"),
    ("model", "mixture_eta", "-1"),
    ("model", "mixture_eta", "101"),
    ("model", "mixture_eta", "inf"),
    ("model", "mixture_memory", "0"),
    ("model", "mixture_memory", "1.5"),
    ("model", "mixture_anchor", "-0.1"),
    ("model", "mixture_anchor", "1.5"),
    ("model", "mixture_anchor", "nan"),
    ("model", "blend_memory", "-0.001"),
    ("model", "blend_memory", "1"),
    ("model", "blend_memory", "nan"),
    ("adapt", "keep", "-0.1"),
    ("adapt", "keep", "1"),
    ("adapt", "keep", "nan"),
    ("model", "torch_threads", "0"),
    ("model", "torch_threads", "65"),
    ("model", "learning_backlog", "999"),
    ("model", "shed_lag", "-1"),
    ("model", "shed_lag", "nan"),
    ("model", "max_gap_fill", "-1"),
    ("drift", "detector", '"ddm"'),
    ("drift", "cooldown", "-1"),
    ("drift", "adwin_delta", "0"),
    ("drift", "adwin_delta", "1"),
    ("drift", "kswin_alpha", "0"),
    ("drift", "kswin_window_size", "9"),
    ("drift", "kswin_stat_size", "1"),
    ("drift", "ph_min_instances", "0"),
    ("drift", "ph_delta", "-0.001"),
    ("drift", "ph_threshold", "0"),
    ("drift", "ph_threshold", "inf"),
    ("drift", "ph_delta", "inf"),
    ("model", "learning_rate", "-inf"),
    ("drift", "ph_alpha", "0"),
    ("drift", "ph_alpha", "1.1"),
    ("adapt", "init", '"zeros"'),
    ("adapt", "steps", "-1"),
    ("adapt", "steps", "1001"),
    ("adapt", "window", "3"),
    ("adapt", "validation", "0"),
    ("adapt", "validation", "1001"),
    ("adapt", "step_size", "0"),
    ("adapt", "step_size", "11"),
    ("adapt", "workers", "-1"),
    ("adapt", "workers", "65"),
    ("adapt", "regime_memory", "-1"),
    ("adapt", "regime_memory", "65"),
    ("adapt", "regime_shared", "4097"),
    ("adapt", "regime_lookup", "17"),
    ("adapt", "regime_pool", "0"),
    ("scheduler", "checkpoint_interval", "0.5"),
    ("scheduler", "checkpoint_interval", "1e12"),  # APScheduler cannot compute the next date
    ("scheduler", "checkpoint_interval", "inf"),
    ("scheduler", "misfire_grace_time", "0"),
    ("scheduler", "misfire_grace_time", "1e300"),
    ("cluster", "members", "0"),
    ("cluster", "members", "100000"),
    ("cluster", "member", "-1"),
    ("cluster", "sockets", '["a.sock", "a.sock"]'),
    ("cluster", "sockets", '[""]'),
    ("cluster", "sockets", '["/' + "s" * 100 + '.sock"]'),
]

WRONG_TYPES = [
    ("store", "pool_size", '"4"'),
    ("store", "pool_size", "true"),
    ("store", "pool_size", "4.0"),
    ("server", "max_line_bytes", "false"),
    ("server", "socket_mode", "0o660"),  # TOML octal integer: the mode must be a string
    ("store", "url", "5"),
    ("store", "url", '["sqlite:///a.db"]'),
    ("daemon", "shutdown_timeout", '"30"'),
    ("daemon", "shutdown_timeout", "true"),
    ("daemon", "log_level", "1"),
    ("model", "season", "1.5"),
    ("model", "season", "true"),
    ("model", "coverage", '"0.9"'),
    ("metrics", "listen", "9464"),
    ("metrics", "series", '"a"'),
    ("metrics", "series", '["a", 1]'),
    ("server", "socket", "{ path = \"a.sock\" }"),
]


@pytest.mark.parametrize("section, key, literal", BAD_VALUES + WRONG_TYPES)
def test_bad_values_name_the_key_and_what_is_allowed(tmp_path: Path, section: str, key: str, literal: str) -> None:
    path = write(tmp_path, f"[{section}]\n{key} = {literal}\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    message = str(info.value)
    assert f"{section}.{key}" in message
    assert str(path) in message
    assert f"must be {CHECKS[section][key][1]}" in message


def test_every_key_is_exercised_with_a_bad_value() -> None:
    # Booleans and the socket group (any name) can only be wrong in type: see the test below.
    covered = {(s, k) for s, k, _ in BAD_VALUES}
    missing = [f"{s}.{k}" for s in SECTIONS for k, f in section_fields(s).items()
               if (s, k) not in covered and k != "socket_group" and str(f.type) != "bool"]
    assert missing == []


WRONG_TYPE_LITERALS = {
    "int": ['"1"', "true", "1.5"],
    "float": ['"1.0"', "true", "[1.0]"],
    "str": ["1", "true", "[]"],
    "bool": ["1", '"true"', "0"],
    "tuple[str, ...]": ['"a"', "[1]", "{}"],
}
EVERY_KEY = [(s, k, str(f.type)) for s in SECTIONS for k, f in section_fields(s).items()]


@pytest.mark.parametrize("section, key, kind", EVERY_KEY, ids=[f"{s}.{k}" for s, k, _ in EVERY_KEY])
def test_every_key_refuses_values_of_the_wrong_type(tmp_path: Path, section: str, key: str, kind: str) -> None:
    for literal in WRONG_TYPE_LITERALS[kind]:
        path = write(tmp_path, f"[{section}]\n{key} = {literal}\n")
        with pytest.raises(ConfigError) as info:
            load_config(str(path))
        assert f"{section}.{key} = " in str(info.value), literal
        assert f"must be {CHECKS[section][key][1]}" in str(info.value)


def test_unknown_section_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown section \[storage\] \(allowed: daemon, store"):
        load_config(str(write(tmp_path, '[storage]\nurl = "sqlite:///x.db"\n')))


def test_top_level_key_is_an_unknown_section(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown section \[url\]"):
        load_config(str(write(tmp_path, 'url = "sqlite:///x.db"\n')))


def test_source_is_not_a_section(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown section \[source\]"):
        load_config(str(write(tmp_path, 'source = "forged"\n')))


def test_unknown_key_is_named_with_the_allowed_keys(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(str(write(tmp_path, '[store]\nuri = "sqlite:///x.db"\n')))
    assert "store.uri: unknown key" in str(info.value)
    assert "url, sqlite_synchronous, pool_size" in str(info.value)


def test_a_section_that_is_not_a_table(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\[model\] must be a table"):
        load_config(str(write(tmp_path, "model = 3\n")))


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[store\nurl = \n")
    with pytest.raises(ConfigError, match="not valid TOML") as info:
        load_config(str(path))
    assert str(path) in str(info.value)


def test_duplicate_key_is_invalid_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(str(write(tmp_path, "[model]\nseason = 1\nseason = 2\n")))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found") as info:
        load_config(str(tmp_path / "nope.toml"))
    assert "nope.toml" in str(info.value)


def test_unreadable_files(tmp_path: Path) -> None:
    (tmp_path / "latin1.toml").write_bytes(b'[daemon]\nstate_dir = "\xe9t\xe9"\n')
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(str(tmp_path / "latin1.toml"))
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(str(tmp_path))  # a directory


# -- which file ---------------------------------------------------------------------------

def test_env_var_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "[model]\nseason = 12\n")
    monkeypatch.setenv(ENV_VAR, str(path))
    settings = load_config(None)
    assert settings.model.season == 12
    assert settings.source == str(path)


def test_flag_wins_over_env_var(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_VAR, str(write(tmp_path, "[model]\nseason = -5\n", "bad.toml")))
    good = write(tmp_path, "[model]\nseason = 3\n", "good.toml")
    assert load_config(str(good)).model.season == 3
    with pytest.raises(ConfigError, match="model.season"):
        load_config(None)


# -- path resolution ----------------------------------------------------------------------

def test_relative_paths_resolve_against_the_file_not_the_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conf_dir = tmp_path / "etc"
    path = write(conf_dir, '[daemon]\nstate_dir = "var"\n[store]\nurl = "sqlite:///db/a.db"\n'
                           '[server]\nsocket = "run/a.sock"\n')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    for given in (str(path), os.path.relpath(path, elsewhere)):
        settings = load_config(given)
        assert settings.daemon.state_dir == str(conf_dir / "var")
        assert settings.store.url == f"sqlite:///{conf_dir}/db/a.db"
        assert settings.server.socket == str(conf_dir / "run" / "a.sock")


@pytest.mark.parametrize("url, expected", [
    ("sqlite:///rel/a.db", "sqlite:///{base}/rel/a.db"),
    ("sqlite+pysqlite:///rel/a.db", "sqlite+pysqlite:///{base}/rel/a.db"),
    ("sqlite:////abs/a.db", "sqlite:////abs/a.db"),
    ("postgresql+psycopg://u:p@host/db", "postgresql+psycopg://u:p@host/db"),
])
def test_store_url_resolution(tmp_path: Path, url: str, expected: str) -> None:
    settings = load_config(str(write(tmp_path, f'[store]\nurl = "{url}"\n')))
    assert settings.store.url == expected.format(base=tmp_path)


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:", "sqlite+pysqlite://",
                                 "sqlite:///file:a?mode=memory&uri=true"])
def test_an_in_memory_store_is_refused_it_would_lose_every_ack(tmp_path: Path, url: str) -> None:
    with pytest.raises(ConfigError, match="store.url.*in-memory"):
        load_config(str(write(tmp_path, f'[store]\nurl = "{url}"\n')))


def test_absolute_paths_are_kept(tmp_path: Path) -> None:
    settings = load_config(str(write(tmp_path, '[daemon]\nstate_dir = "/var/lib/adaptd"\n'
                                               '[server]\nsocket = "/run/adaptd/adaptd.sock"\n')))
    assert settings.daemon.state_dir == "/var/lib/adaptd"
    assert settings.server.socket == "/run/adaptd/adaptd.sock"


def test_a_relative_socket_too_long_once_resolved_is_refused(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60)
    with pytest.raises(ConfigError, match="server.socket") as info:
        load_config(str(write(deep, '[server]\nsocket = "' + "s" * 50 + '.sock"\n')))
    assert "shorter than 100 bytes" in str(info.value)
    with pytest.raises(ConfigError, match="cluster.sockets = 's{50}.sock' resolves to") as info:
        load_config(str(write(deep, '[server]\nsocket = "/a.sock"\n[cluster]\nsockets = ["/b.sock", "'
                                    + "s" * 50 + '.sock"]\n')))
    assert "shorter than 100 bytes" in str(info.value)


def test_the_cluster_sockets_resolve_against_the_file_in_their_order(tmp_path: Path) -> None:
    settings = load_config(str(write(tmp_path, '[cluster]\nsockets = ["run/1.sock", "/run/0.sock"]\n')))
    assert settings.cluster.sockets == (str(tmp_path / "run" / "1.sock"), "/run/0.sock")
    assert settings.cluster.members == 1   # a client's config need not be a member's


def test_a_members_own_socket_list_must_put_its_own_socket_at_its_place(tmp_path: Path) -> None:
    member = ('[store]\nurl = "postgresql+psycopg://a@db/adaptd"\n[server]\nsocket = "/run/m1.sock"\n'
              '[cluster]\nmembers = 2\nmember = 1\nsockets = [{}]\n')
    load_config(str(write(tmp_path / "ok", member.format('"/run/m0.sock", "/run/m1.sock"'))))
    with pytest.raises(ConfigError, match=r"cluster.sockets\[1\] = '/run/m0.sock' is not this member's own "
                                          r"server.socket \('/run/m1.sock'\): list the sockets in member order"):
        load_config(str(write(tmp_path / "swapped", member.format('"/run/m1.sock", "/run/m0.sock"'))))


# -- adaptd check-config ----------------------------------------------------------------------

def test_check_config_accepts_a_good_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "[model]\nseason = 24\n")
    assert main(["check-config", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"{path}: OK" in out
    assert str(tmp_path / "state" / "adaptd.sock") in out


def test_check_config_accepts_the_repo_config(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", "--config", str(REPO_CONFIG)]) == 0
    assert "OK" in capsys.readouterr().out


def test_check_config_rejects_a_bad_file_naming_the_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "[store]\npool_size = 0\n")
    assert main(["check-config", "--config", str(path)]) == 2
    captured = capsys.readouterr()
    assert "store.pool_size" in captured.err
    assert "from 1 to 64" in captured.err
    assert captured.out == ""


def test_check_config_uses_the_env_var_and_the_flag_wins(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    bad = write(tmp_path, '[metrics]\nlisten = "nowhere"\n', "bad.toml")
    good = write(tmp_path, "", "good.toml")
    monkeypatch.setenv(ENV_VAR, str(bad))
    assert main(["check-config"]) == 2
    assert "metrics.listen" in capsys.readouterr().err
    assert main(["check-config", "--config", str(good)]) == 0
    assert f"{good}: OK" in capsys.readouterr().out


def test_check_config_does_not_print_the_store_password(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, '[store]\nurl = "postgresql+psycopg://adaptd:s3cret@db.example/adaptd"\n')
    assert main(["check-config", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "s3cret" not in out and "adaptd:***@db.example" in out


@pytest.mark.parametrize("text, expected", [
    ('[store]\nurl = "postgres://u@h/db"\n', "store.url"),
    ('[store]\nurl = "mysql+pymysql://u@h/db"\n', "SQLite or PostgreSQL"),
    ('[store]\nurl = "postgresql+pg8000://u@h/db"\n', "store.url: no driver for 'postgresql+pg8000'"),
    ('[store]\nurl = "postgres://adaptd:s3cret@h/db"\n', "postgres://adaptd:***@h/db"),
    ('[server]\nsocket_group = "no-such-group-here"\n', "no group 'no-such-group-here'"),
])
def test_check_config_refuses_what_serve_would(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                               text: str, expected: str) -> None:
    assert main(["check-config", "--config", str(write(tmp_path, text))]) == 2
    err = capsys.readouterr().err
    assert expected in err and "s3cret" not in err


def test_check_config_with_a_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", "--config", str(tmp_path / "missing.toml")]) == 2
    assert "not found" in capsys.readouterr().err


@pytest.mark.parametrize("text, key, allowed", [
    ("[model]\nwindow = 48\npatch = 5\n", "model.patch = 5", "a divisor of model.window (48)"),
    ("[model]\nwindow = 16\n", "model.rls_lags = 32", "at most model.window - 1 (15)"),
    ("[model]\nrls_lags = 48\n", "model.rls_lags = 48", "at most model.window - 1 (47)"),
    ("[model]\ncold_start = 49\n", "model.cold_start = 49", "0 (off) or an integer from 2 to model.window (48)"),
    ("[adapt]\nwindow = 8\nvalidation = 8\n", "adapt.validation = 8", "below adapt.window (8)"),
    ("[drift]\nkswin_window_size = 30\n", "drift.kswin_stat_size = 30", "below drift.kswin_window_size (30)"),
    ("[cluster]\nmembers = 3\nmember = 3\n", "cluster.member = 3", "an integer from 0 to cluster.members - 1 (2)"),
    ("[cluster]\nmember = 1\n", "cluster.member = 1", "an integer from 0 to cluster.members - 1 (0)"),
    ("[cluster]\nmembers = 2\n", "cluster.members = 2", "1 unless [store] url is a PostgreSQL database"),
    ('[store]\nurl = "postgresql://h/db"\n[cluster]\nmembers = 3\nsockets = ["/a.sock", "/b.sock"]\n',
     "cluster.sockets = ('/a.sock', '/b.sock')", "empty or one socket per member (3), in member order"),
])
def test_keys_that_contradict_each_other_name_the_key_and_the_limit(tmp_path: Path, text: str, key: str,
                                                                     allowed: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(str(write(tmp_path, text)))
    assert f"{key}: must be {allowed}" in str(info.value)


def test_consistent_related_keys_are_accepted(tmp_path: Path) -> None:
    settings = load_config(str(write(tmp_path, "[model]\nwindow = 16\npatch = 8\nrls_lags = 15\n")))
    assert (settings.model.window, settings.model.patch, settings.model.rls_lags) == (16, 8, 15)
    # The default cold start (4 observations) fits the smallest window.
    assert load_config(str(write(tmp_path, "[model]\nwindow = 4\npatch = 2\nrls_lags = 3\n"))).model.cold_start == 4


def test_store_and_socket_default_to_files_in_state_dir(tmp_path: Path) -> None:
    settings = load_config(str(write(tmp_path, '[daemon]\nstate_dir = "/var/lib/adaptd"\n')))
    assert settings.store.url == "sqlite:////var/lib/adaptd/adaptd.db"
    assert settings.server.socket == "/var/lib/adaptd/adaptd.sock"
    explicit = load_config(str(write(tmp_path, '[daemon]\nstate_dir = "/x"\n[server]\nsocket = "/run/a.sock"\n')))
    assert explicit.server.socket == "/run/a.sock" and explicit.store.url == "sqlite:////x/adaptd.db"


def test_a_client_command_without_a_config_says_how_to_give_the_daemons(tmp_path: Path, monkeypatch,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """On a server the daemon runs with /etc/adaptd/config.toml: a client that was given none
    looked for the default socket and said only that adaptd is not running."""
    monkeypatch.delenv("ADAPTD_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    assert main(["status"]) == 1
    err = capsys.readouterr().err
    assert "not running" in err and "pass the daemon's with --config or ADAPTD_CONFIG" in err
    config = write(tmp_path, "")
    assert main(["status", "--config", str(config)]) == 1
    assert "ADAPTD_CONFIG" not in capsys.readouterr().err   # a config was given: no such hint
