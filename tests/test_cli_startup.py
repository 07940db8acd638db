"""The client commands start without loading the engine: building the `adaptd` parser and running
`forecast`, `series`, `status` or `ingest` must not import torch (seconds of start-up for a
command that only talks to a socket). The bench commands' flags live in adaptd/bench/arguments.py
for that; its defaults must stay those of the bench code."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from daemon_harness import daemon_env

HEAVY = ("torch", "scipy", "river", "sqlalchemy", "adaptd.engine", "adaptd.store", "adaptd.bench.accuracy")

PROBE = """
import json, sys
from adaptd.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exc:   # --help
    code = exc.code
print(json.dumps({"code": code, "loaded": [m for m in HEAVY if m in sys.modules]}))
"""


def probe(argv: list[str], cwd: Path) -> dict:
    """Run `adaptd ARGV` in a fresh interpreter: its exit code, which HEAVY modules it loaded, what it said."""
    script = f"HEAVY = {HEAVY!r}\n{PROBE}"
    out = subprocess.run([sys.executable, "-c", script, *argv], capture_output=True, text=True, timeout=60,
                         env=daemon_env(), cwd=cwd)
    assert out.returncode == 0, out.stderr
    *printed, last = out.stdout.splitlines()
    return {**json.loads(last), "said": out.stderr + "\n".join(printed)}


@pytest.mark.parametrize("argv, code", [
    (["--help"], 0), (["forecast", "--help"], 0), (["status", "--help"], 0), (["bench", "meta", "--help"], 0),
    # Run for real, with no daemon there: they get as far as connecting (exit 1, "not running").
    (["forecast", "meter-1", "--config", "client.toml"], 1),
    (["series", "--config", "client.toml"], 1),
    (["status", "--json", "--config", "client.toml"], 1),
    (["ingest", "data.csv", "--no-progress", "--config", "client.toml"], 1),
])
def test_client_commands_do_not_load_torch_the_engine_or_the_store(tmp_path: Path, argv: list[str], code: int) -> None:
    (tmp_path / "client.toml").write_text('[cluster]\nsockets = ["m0.sock", "m1.sock"]\n')
    (tmp_path / "data.csv").write_text("series,ts,value\nmeter-1,0,1.5\n")
    answer = probe(argv, tmp_path)
    assert (answer["code"], answer["loaded"]) == (code, []), answer
    if code == 1:   # it ran as far as looking for the daemon
        assert "adaptd is not running" in answer["said"], answer["said"]


def test_the_bench_flags_defaults_are_the_bench_codes() -> None:
    from adaptd.bench import arguments
    from adaptd.bench.accuracy.baselines import baseline_specs
    from adaptd.bench.accuracy.datasets import FILES
    from adaptd.engine.regimes import POOL

    assert arguments.BASELINES == tuple(baseline_specs())
    assert arguments.ACCURACY_DATASETS == tuple(FILES)
    assert set(arguments.DEFAULT_MODELS) <= set(arguments.BASELINES)
    assert arguments.REGIME_POOL == POOL
