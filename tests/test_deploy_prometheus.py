"""Monitoring deployment files: deploy/prometheus.yml, deploy/alerts.yml and deploy/grafana/.

- promtool accepts the scrape config and the rules, and the rules' own unit tests (built here
  from SCENARIOS: input series, when an alert must fire and with what) pass;
- the Grafana dashboards are well-formed and file-provisionable (every Prometheus panel uses
  the `${datasource}` variable), every expression in them parses, and the provisioning files
  point where the deploy layout puts things;
- integration: the real daemon, scraped every second by a real Prometheus with the rules
  loaded, answers EVERY dashboard and alert expression with data, and its /metrics text passes
  `promtool check metrics`.

Prometheus and promtool come from Debian's `prometheus` package (.ci/run installs it). Without
them these tests are skipped, except in CI ($CI set), where they fail.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
ALERTS = DEPLOY / "alerts.yml"
DASHBOARDS = DEPLOY / "grafana" / "dashboards"
DASHBOARD_FILES = ("adaptd-health.json", "adaptd-forecast-quality.json")
PROVISIONING = DEPLOY / "grafana" / "provisioning"
GRAFANA_DASHBOARD_DIR = "/var/lib/grafana/dashboards/adaptd"

# Dashboard panels whose datasource has one of these types hold SQL, not PromQL.
SQL_DATASOURCE_TYPES = {"grafana-postgresql-datasource", "postgres"}

REQUIRED_ALERTS = {
    "AdaptdDown", "AdaptdAccuracyDegraded", "AdaptdIntervalCoverageLow", "AdaptdIntervalCoverageLowAtSomeLead",
    "AdaptdDriftStorm",
    "AdaptdAdaptationsFailing", "AdaptdIngestRejectedHigh", "AdaptdStaleSeries", "AdaptdCheckpointStale",
    "AdaptdCheckpointFailures", "AdaptdLearningBacklog", "AdaptdOverloaded", "AdaptdStoreCommitFailures",
    "AdaptdMetaTrainingFailing", "AdaptdMetaTrainingOverdue", "AdaptdRetentionStalled", "AdaptdRestarting",
    "AdaptdLearningFailing",
}


# -- helpers ------------------------------------------------------------------------------------

def _binary(name: str) -> str:
    """Path of a Prometheus binary; skip without it, except in CI where it must exist."""
    found = shutil.which(name) or (f"/usr/bin/{name}" if os.access(f"/usr/bin/{name}", os.X_OK) else None)
    if found is None:
        reason = f"{name} not found (Debian: apt-get install prometheus)"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI must run the Prometheus tests (.ci/run installs it)", pytrace=False)
        pytest.skip(reason)
    return found


def _run(*argv: str, stdin: str | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), input=stdin, capture_output=True, text=True, timeout=60, cwd=cwd)


def _load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _rules() -> list[dict[str, Any]]:
    return [rule for group in _load_yaml(ALERTS)["groups"] for rule in group["rules"]]


def _dashboard(name: str) -> dict[str, Any]:
    return json.loads((DASHBOARDS / name).read_text(encoding="utf-8"))


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, rows' nested panels included."""
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def _is_sql(panel: dict[str, Any], target: dict[str, Any]) -> bool:
    types = {(panel.get("datasource") or {}).get("type"), (target.get("datasource") or {}).get("type")}
    return bool(types & SQL_DATASOURCE_TYPES)


def _promql_targets(board: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title + refId, expr) of every Prometheus target of a dashboard."""
    return [(f"{panel['title']} [{target['refId']}]", target["expr"])
            for panel in _panels(board["panels"]) for target in panel.get("targets", [])
            if not _is_sql(panel, target)]


# Grafana's built-in interval variables, as a panel of a few hours would get them.
BUILTIN_VALUES = {"__rate_interval": "1m", "__interval": "15s", "__range": "1h"}
_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")


def substitute(expr: str, values: dict[str, str]) -> str:
    """Replace Grafana variables ($x, ${x}, ${x:fmt}, [[x]]) by values; unknown ones fail the test."""
    def one(match: re.Match[str]) -> str:
        name = next(g for g in match.groups() if g)
        if name in BUILTIN_VALUES:
            return BUILTIN_VALUES[name]
        if name not in values:
            pytest.fail(f"expression uses ${name}, which the test does not know how to fill in: {expr}")
        return values[name]
    return _VARIABLE.sub(one, expr)


def dashboard_values(board: dict[str, Any], **given: str) -> dict[str, str]:
    """Values for a dashboard's template variables: `given`, else the custom variable's current
    value, else the all-value of a multi-select variable."""
    values: dict[str, str] = {}
    for var in board["templating"]["list"]:
        name = var["name"]
        if name in given:
            values[name] = given[name]
        elif var["type"] in ("custom", "interval", "constant"):
            values[name] = str((var.get("current") or {}).get("value") or str(var["query"]).split(",")[0])
        elif var.get("includeAll"):
            values[name] = var.get("allValue") or ".+"
    return values


# A trailing threshold: a comparison with a number literal (`> 0.5`, `>= 3`, `== 0`, `> bool 1`).
_THRESHOLD = re.compile(r"\s*(?:==|!=|>=|<=|>|<)\s*(?:bool\s+)?[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?(?![\w.])")


def without_thresholds(expr: str) -> str:
    """An alert expression with its comparisons to number literals removed.

    An alert expression returns data only while its condition holds; with the comparisons
    removed it returns the compared quantity whenever the inputs exist, which is what the
    integration test checks (`a / b > 0.05 and c > 100` becomes `a / b and c`; `up == 0 or
    absent(up)` becomes `up or absent(up)`).
    """
    return _THRESHOLD.sub("", expr)


# -- (a) promtool: config, rules, rule unit tests -----------------------------------------------

def test_prometheus_example_config_passes_promtool(tmp_path: Path) -> None:
    promtool = _binary("promtool")
    config = _load_yaml(DEPLOY / "prometheus.yml")
    assert config["rule_files"] == ["alerts.yml"]
    [job] = [j for j in config["scrape_configs"] if j["job_name"] == "adaptd"]
    assert job["static_configs"] == [{"targets": ["127.0.0.1:9464"]}]
    assert job.get("scrape_interval", config["global"]["scrape_interval"]) == "15s"
    shutil.copy(DEPLOY / "prometheus.yml", tmp_path / "prometheus.yml")
    shutil.copy(ALERTS, tmp_path / "alerts.yml")
    proc = _run(promtool, "check", "config", str(tmp_path / "prometheus.yml"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 rule files found" in proc.stdout + proc.stderr
    assert f"{len(_rules())} rules found" in proc.stdout + proc.stderr


def test_alert_rules_pass_promtool_and_conventions() -> None:
    promtool = _binary("promtool")
    proc = _run(promtool, "check", "rules", str(ALERTS))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rules = _rules()
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names)), names
    assert REQUIRED_ALERTS <= set(names), REQUIRED_ALERTS - set(names)
    for rule in rules:
        where = rule["alert"]
        # adaptd's own metrics, or the scrape's and the process's of the adaptd job only.
        assert "adaptd_" in rule["expr"] or 'job="adaptd"' in rule["expr"], where
        assert re.fullmatch(r"\d+[smh]", str(rule.get("for", ""))), f"{where}: needs a `for:` duration"
        assert rule["labels"]["severity"] in ("critical", "warning"), where
        assert rule["annotations"]["summary"].strip(), where
        assert "Runbook:" in rule["annotations"]["description"], f"{where}: description needs a runbook hint"


INSTANCE = "127.0.0.1:9464"
LABELS = f'job="adaptd",instance="{INSTANCE}"'
QUIET = 'job="adaptd",instance="127.0.0.1:9465"'
STARTED_AT = "127.0.0.1:9466"
STARTED = f'job="adaptd",instance="{STARTED_AT}"'

# promtool rule unit tests: (name, input series (1-minute steps), checks). A check is
# (eval time, alert, expected alerts as (labels, rendered $value)), or ("expr", eval time, PromQL,
# expected samples as (labels, value)).
SCENARIOS: list[tuple[str, list[tuple[str, str]], list[tuple[Any, ...]]]] = [
    ("target down for 2 minutes", [(f"up{{{LABELS}}}", "1 1 0 0 0 0 0 0 0 0")], [
        ("3m", "AdaptdDown", []),                       # down since 2m: pending, not firing yet
        ("5m", "AdaptdDown", [({"job": "adaptd", "instance": INSTANCE}, None)]),
    ]),
    ("restarts at 10, 40 and 70 minutes; another daemon restarted twice; a third never", [
        (f"process_start_time_seconds{{{LABELS}}}", "0x9 600x29 2400x29 4200x100"),
        (f"process_start_time_seconds{{{QUIET}}}", "0x9 600x29 2400x130"),
        (f"process_start_time_seconds{{{STARTED}}}", "0x170"),
    ], [
        ("69m", "AdaptdRestarting", []),                # 2 restarts so far
        ("70m", "AdaptdRestarting", []),                # the third: pending for a minute
        ("71m", "AdaptdRestarting", [({"job": "adaptd", "instance": INSTANCE}, "3")]),
        ("131m", "AdaptdRestarting", []),               # the first restart left the 2-hour window
    ]),
    ("the store lock lost and not taken back", [(f"adaptd_store_claim_held{{{LABELS}}}", "1 1 0 0 0 0 0 0 0 0")], [
        ("3m", "AdaptdStoreClaimLost", []),
        ("6m", "AdaptdStoreClaimLost", [({"job": "adaptd", "instance": INSTANCE}, None)]),
    ]),
    ("no adaptd target at all", [('up{job="node",instance="other:9100"}', "1x10")], [
        ("1m", "AdaptdDown", []),
        ("5m", "AdaptdDown", [({"job": "adaptd"}, None)]),
    ]),
    ("drift on every series every few minutes", [
        (f'adaptd_drift_events_total{{{LABELS},detector="adwin"}}', "0+10x120"),   # 600 per hour
        (f"adaptd_series_warm{{{LABELS}}}", "8x120"),                            # over 8 series
        (f'adaptd_drift_events_total{{{QUIET},detector="adwin"}}', "0+0.05x120"),  # 3 per hour
        (f"adaptd_series_warm{{{QUIET}}}", "8x120"),
    ], [
        ("20m", "AdaptdDriftStorm", []),                # not yet for 30 minutes
        ("90m", "AdaptdDriftStorm", [({"job": "adaptd", "instance": INSTANCE}, "75")]),
    ]),
    ("intervals cover 60% at every lead", [
        (f"adaptd_forecast_interval_target_ratio{{{LABELS}}}", "0.9x120"),
        *((f'adaptd_forecast_interval_hits_total{{{LABELS},lead="{lead}"}}', "0+6x120") for lead in (1, 48)),
        *((f'adaptd_forecast_scaled_error_count{{{LABELS},lead="{lead}"}}', "0+10x120") for lead in (1, 48)),
    ], [
        ("20m", "AdaptdIntervalCoverageLow", []),      # pending for 30 minutes
        ("60m", "AdaptdIntervalCoverageLow", [({"job": "adaptd", "instance": INSTANCE}, "30%")]),
        ("110m", "AdaptdIntervalCoverageLowAtSomeLead", [({"job": "adaptd", "instance": INSTANCE}, "30%")]),
    ]),
    ("only the longest lead under target: 90% at lead 1 and 24, 60% at lead 48", [
        (f"adaptd_forecast_interval_target_ratio{{{LABELS}}}", "0.9x120"),
        *((f'adaptd_forecast_interval_hits_total{{{LABELS},lead="{lead}"}}', "0+9x120") for lead in (1, 24)),
        (f'adaptd_forecast_interval_hits_total{{{LABELS},lead="48"}}', "0+6x120"),
        *((f'adaptd_forecast_scaled_error_count{{{LABELS},lead="{lead}"}}', "0+10x120") for lead in (1, 24, 48)),
        (f"adaptd_forecast_interval_target_ratio{{{QUIET}}}", "0.9x120"),      # on target: quiet
        (f'adaptd_forecast_interval_hits_total{{{QUIET},lead="48"}}', "0+9x120"),
        (f'adaptd_forecast_scaled_error_count{{{QUIET},lead="48"}}', "0+10x120"),
    ], [
        ("60m", "AdaptdIntervalCoverageLowAtSomeLead", []),   # pending for an hour
        ("110m", "AdaptdIntervalCoverageLowAtSomeLead", [({"job": "adaptd", "instance": INSTANCE}, "30%")]),
        ("110m", "AdaptdIntervalCoverageLow", []),            # all leads together: 80%, within 15 points
    ]),
    ("the worst lead counts, and a lead with few scored forecasts does not", [
        (f"adaptd_forecast_interval_target_ratio{{{LABELS}}}", "0.9x120"),
        (f'adaptd_forecast_interval_hits_total{{{LABELS},lead="1"}}', "0+9x120"),
        (f'adaptd_forecast_interval_hits_total{{{LABELS},lead="24"}}', "0+7x120"),     # 20 points under
        (f'adaptd_forecast_interval_hits_total{{{LABELS},lead="48"}}', "0+6x120"),     # 30 points under
        (f'adaptd_forecast_interval_hits_total{{{LABELS},lead="12"}}', "0+0x120"),     # 90 under, but
        *((f'adaptd_forecast_scaled_error_count{{{LABELS},lead="{lead}"}}', "0+10x120") for lead in (1, 24, 48)),
        (f'adaptd_forecast_scaled_error_count{{{LABELS},lead="12"}}', "0+0.2x120"),    # 24 in 2 hours
    ], [
        ("110m", "AdaptdIntervalCoverageLowAtSomeLead", [({"job": "adaptd", "instance": INSTANCE}, "30%")]),
    ]),
    ("a tenth of the records rejected", [
        (f'adaptd_records_rejected_total{{{LABELS},reason="ts"}}', "0+10x60"),
        (f"adaptd_records_ingested_total{{{LABELS}}}", "0+90x60"),
        (f'adaptd_records_rejected_total{{{QUIET},reason="value"}}', "0+1x60"),    # 1%: fine
        (f"adaptd_records_ingested_total{{{QUIET}}}", "0+99x60"),
    ], [
        ("40m", "AdaptdIngestRejectedHigh", [({"job": "adaptd", "instance": INSTANCE}, "10%")]),
    ]),
    ("checkpoints stop at 3 minutes (every minute before); one daemon checkpoints on time; one "
     "started at 10 minutes has none yet", [
        (f'adaptd_schedule_interval_seconds{{{LABELS},schedule="checkpoint"}}', "60x60"),
        (f"adaptd_last_checkpoint_timestamp_seconds{{{LABELS}}}", "0 60 120 180x60"),
        (f"process_start_time_seconds{{{LABELS}}}", "0x60"),
        (f'adaptd_schedule_interval_seconds{{{QUIET},schedule="checkpoint"}}', "300x60"),
        (f"adaptd_last_checkpoint_timestamp_seconds{{{QUIET}}}", "0+60x60"),
        (f"process_start_time_seconds{{{QUIET}}}", "0x60"),
        (f'adaptd_schedule_interval_seconds{{{STARTED},schedule="checkpoint"}}', "300x60"),
        (f"adaptd_last_checkpoint_timestamp_seconds{{{STARTED}}}", "0x60"),
        (f"process_start_time_seconds{{{STARTED}}}", "600x60"),
    ], [
        ("6m", "AdaptdCheckpointStale", []),              # 3 intervals (3 minutes) since, not more
        ("11m", "AdaptdCheckpointStale", []),             # pending for 5 minutes
        ("12m", "AdaptdCheckpointStale", [({"job": "adaptd", "instance": INSTANCE}, "9.0")]),
        ("32m", "AdaptdCheckpointStale", [({"job": "adaptd", "instance": INSTANCE}, "29.0"),
                                          ({"job": "adaptd", "instance": STARTED_AT}, "4.4")]),
    ]),
    ("the newest meta-training run failed; on another daemon a later run succeeded", [
        (f'adaptd_meta_training_last_outcome{{{LABELS},outcome="failed"}}', "0 0 1x60"),
        (f'adaptd_meta_training_last_outcome{{{LABELS},outcome="promoted"}}', "1 1 0x60"),
        (f'adaptd_meta_training_last_outcome{{{QUIET},outcome="failed"}}', "1 1 0x60"),
        (f'adaptd_meta_training_last_outcome{{{QUIET},outcome="not_promoted"}}', "0 0 1x60"),
    ], [
        ("4m", "AdaptdMetaTrainingFailing", []),        # pending for 5 minutes
        ("30m", "AdaptdMetaTrainingFailing", [({"job": "adaptd", "instance": INSTANCE}, None)]),
    ]),
    ("hourly meta-training: the newest run ended at 10 minutes; on another daemon none ever did", [
        (f'adaptd_schedule_interval_seconds{{{LABELS},schedule="meta_training"}}', "3600x300"),
        (f"adaptd_meta_training_last_end_timestamp_seconds{{{LABELS}}}", "0x9 600x300"),
        (f'adaptd_schedule_interval_seconds{{{QUIET},schedule="meta_training"}}', "3600x300"),
        (f"adaptd_meta_training_last_end_timestamp_seconds{{{QUIET}}}", "0x300"),
    ], [
        ("185m", "AdaptdMetaTrainingOverdue", []),      # 2 intervals after 10m, pending for an hour
        ("200m", "AdaptdMetaTrainingOverdue", [({"job": "adaptd", "instance": INSTANCE}, "3.2")]),
    ]),
    ("retention every 10 minutes stops getting through at 20 minutes; a long first pass keeps "
     "finishing series; retention off", [
        (f'adaptd_schedule_interval_seconds{{{LABELS},schedule="retention"}}', "600x80"),
        (f"adaptd_retention_last_progress_timestamp_seconds{{{LABELS}}}", "0x9 600x9 1200x60"),
        (f"process_start_time_seconds{{{LABELS}}}", "0x80"),
        (f'adaptd_schedule_interval_seconds{{{QUIET},schedule="retention"}}', "600x80"),
        (f"adaptd_retention_last_progress_timestamp_seconds{{{QUIET}}}", "0+60x80"),
        (f"process_start_time_seconds{{{QUIET}}}", "0x80"),
        (f"adaptd_retention_last_progress_timestamp_seconds{{{STARTED}}}", "0x80"),
        (f"process_start_time_seconds{{{STARTED}}}", "0x80"),
    ], [
        ("50m", "AdaptdRetentionStalled", []),          # 3 intervals since, not more
        ("55m", "AdaptdRetentionStalled", []),          # pending for 5 minutes
        ("56m", "AdaptdRetentionStalled", [({"job": "adaptd", "instance": INSTANCE}, "3.6")]),
    ]),
    ("store commits fail every minute from 10 minutes; another daemon's never", [
        (f"adaptd_store_commit_failures_total{{{LABELS}}}", "0x10 1+1x30"),
        (f"adaptd_store_commit_failures_total{{{QUIET}}}", "0x40"),
    ], [
        ("10m", "AdaptdStoreCommitFailures", []),        # the first: pending for a minute
        ("22m", "AdaptdStoreCommitFailures", [({"job": "adaptd", "instance": INSTANCE}, "10")]),
    ]),
    ("a learning backlog growing 5,000 records a minute; another large but shrinking", [
        (f"adaptd_learning_backlog_records{{{LABELS}}}", "50000+5000x60"),
        (f"adaptd_learning_backlog_records{{{QUIET}}}", "300000-1000x60"),
    ], [
        ("20m", "AdaptdLearningBacklog", []),           # over 100,000 since 11m: pending for 15 minutes
        ("30m", "AdaptdLearningBacklog", [({"job": "adaptd", "instance": INSTANCE}, "200k")]),
    ]),
    ("one learning step fails at 10 minutes; another daemon's never", [
        (f'adaptd_learning_failed_records_total{{{LABELS},stage="learn"}}', "0x10 500x40"),
        (f'adaptd_learning_failed_records_total{{{QUIET},stage="learn"}}', "0x50"),
    ], [
        ("10m", "AdaptdLearningFailing", []),           # pending for a minute
        ("12m", "AdaptdLearningFailing", [({"job": "adaptd", "instance": INSTANCE}, "500")]),
        ("30m", "AdaptdLearningFailing", []),           # 15 minutes without another
    ]),
    ("a checkpoint fails every minute from 10 minutes", [
        (f"adaptd_checkpoint_failures_total{{{LABELS}}}", "0x10 1+1x60"),
        (f"adaptd_checkpoint_failures_total{{{QUIET}}}", "0x70"),
    ], [
        ("14m", "AdaptdCheckpointFailures", []),        # pending for 5 minutes
        ("45m", "AdaptdCheckpointFailures", [({"job": "adaptd", "instance": INSTANCE}, "30")]),
    ]),
    ("half the adaptations of the last hour failed; on another daemon none", [
        (f'adaptd_adaptations_total{{{LABELS},outcome="failed"}}', "0+1x90"),
        (f'adaptd_adaptations_total{{{LABELS},outcome="adapted"}}', "0+1x90"),
        (f'adaptd_adaptations_total{{{QUIET},outcome="failed"}}', "0x90"),
        (f'adaptd_adaptations_total{{{QUIET},outcome="adapted"}}', "0+2x90"),
    ], [
        ("10m", "AdaptdAdaptationsFailing", []),        # pending for 15 minutes
        ("60m", "AdaptdAdaptationsFailing", [({"job": "adaptd", "instance": INSTANCE}, "50%")]),
    ]),
    ("3 of 10 series silent; on another daemon none", [
        (f"adaptd_series_stale{{{LABELS}}}", "3x60"),
        (f"adaptd_series{{{LABELS}}}", "10x60"),
        (f"adaptd_series_stale{{{QUIET}}}", "0x60"),
        (f"adaptd_series{{{QUIET}}}", "10x60"),
    ], [
        ("20m", "AdaptdStaleSeries", []),               # pending for 30 minutes
        ("40m", "AdaptdStaleSeries", [({"job": "adaptd", "instance": INSTANCE}, "30%")]),
    ]),
    ("scaled errors double after a day at 1; another daemon's stay at 1", [
        (f"adaptd_forecast_scaled_error_count{{{LABELS}}}", "0+10x1600"),
        (f"adaptd_forecast_scaled_error_sum{{{LABELS}}}", "0+10x1440 14410+20x160"),
        (f"adaptd_forecast_scaled_error_count{{{QUIET}}}", "0+10x1600"),
        (f"adaptd_forecast_scaled_error_sum{{{QUIET}}}", "0+10x1600"),
    ], [
        ("1470m", "AdaptdAccuracyDegraded", []),        # half an hour after: 1.5x only just
        ("1560m", "AdaptdAccuracyDegraded", [({"job": "adaptd", "instance": INSTANCE}, "1.847")]),   # 2 / (26 / 24)
    ]),
    ("overloaded answers, and none at all", [
        (f'adaptd_requests_total{{{LABELS},op="ingest",outcome="ok"}}', "0+90x40"),
        (f'adaptd_requests_total{{{LABELS},op="ingest",outcome="overloaded"}}', "0+10x40"),
        (f'adaptd_requests_total{{{QUIET},op="ingest",outcome="ok"}}', "0+90x40"),
        (f'adaptd_requests_total{{{QUIET},op="ingest",outcome="overloaded"}}', "0+0x40"),   # exported at 0
    ], [
        ("30m", "AdaptdOverloaded", [({"job": "adaptd", "instance": INSTANCE}, "10%")]),
        # Without its threshold the expression gives 0 (not nothing) for a daemon never overloaded.
        ("expr", "30m", "AdaptdOverloaded", [({"job": "adaptd", "instance": INSTANCE}, 0.1),
                                             ({"job": "adaptd", "instance": "127.0.0.1:9465"}, 0.0)]),
    ]),
]

_TEMPLATE_LABEL = re.compile(r"\{\{\s*\$labels\.(\w+)\s*\}\}")
_TEMPLATE_VALUE = re.compile(r"\{\{\s*\$value[^}]*\}\}")


def _rendered(template: str, labels: dict[str, str], value: str | None) -> str:
    """An annotation as Prometheus renders it, for the templates alerts.yml uses."""
    text = _TEMPLATE_LABEL.sub(lambda m: labels.get(m.group(1), ""), template)
    if _TEMPLATE_VALUE.search(text):
        assert value is not None, f"the scenario must give the rendered $value for: {template}"
        text = _TEMPLATE_VALUE.sub(value, text)
    assert "{{" not in text, f"template construct the test cannot render: {template}"
    return text


def _unit_test_file(rules_file: Path) -> dict[str, Any]:
    by_name = {rule["alert"]: rule for rule in _rules()}
    tests = []
    for name, series, checks in SCENARIOS:
        alert_tests, expr_tests = [], []
        for check in checks:
            if check[0] == "expr":
                _, at, alert, samples = check
                expr_tests.append({"expr": without_thresholds(by_name[alert]["expr"]), "eval_time": at,
                                   "exp_samples": [{"labels": "{" + ",".join(f'{k}="{v}"' for k, v in
                                                                             sorted(lab.items())) + "}",
                                                    "value": val} for lab, val in samples]})
                continue
            at, alert, expected = check
            rule = by_name[alert]
            alerts = []
            for labels, value in expected:
                all_labels = {**labels, **rule["labels"]}
                alerts.append({"exp_labels": all_labels,
                               "exp_annotations": {k: _rendered(v, all_labels, value)
                                                   for k, v in rule["annotations"].items()}})
            alert_tests.append({"eval_time": at, "alertname": alert, "exp_alerts": alerts})
        tests.append({"name": name, "interval": "1m",
                      "input_series": [{"series": s, "values": v} for s, v in series],
                      "alert_rule_test": alert_tests, "promql_expr_test": expr_tests})
    return {"rule_files": [str(rules_file)], "evaluation_interval": "1m", "tests": tests}


def test_alert_rules_unit_tests(tmp_path: Path) -> None:
    promtool = _binary("promtool")
    shutil.copy(ALERTS, tmp_path / "alerts.yml")
    test_file = tmp_path / "alerts_test.yml"
    test_file.write_text(yaml.safe_dump(_unit_test_file(tmp_path / "alerts.yml"), sort_keys=False),
                         encoding="utf-8")
    proc = _run(promtool, "test", "rules", str(test_file))
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}\n--- {test_file.name}:\n{test_file.read_text()}"
    assert "SUCCESS" in proc.stdout + proc.stderr


def test_threshold_removal() -> None:
    assert without_thresholds('up{job="adaptd"} == 0 or absent(up{job="adaptd"})') == \
        'up{job="adaptd"} or absent(up{job="adaptd"})'
    assert without_thresholds('a{le="0.5"} / b >= 1e-3 and c > bool 2') == 'a{le="0.5"} / b and c'
    assert without_thresholds('x{a!="1"} * 3600 > 0.5') == 'x{a!="1"} * 3600'


# -- (b) Grafana dashboards and provisioning ----------------------------------------------------

@pytest.mark.parametrize("name", DASHBOARD_FILES)
def test_dashboard_is_provisionable(name: str) -> None:
    board = _dashboard(name)
    assert board["uid"] == Path(name).stem and board["title"].startswith("adaptd")
    assert 36 <= board["schemaVersion"] <= 41
    assert board.get("id") is None, "a provisioned dashboard must not carry a database id"
    variables = {var["name"]: var for var in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for var in variables.values():
        if var["type"] == "query":
            assert var["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, var["name"]

    panels = list(_panels(board["panels"]))
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), f"duplicate panel ids in {name}"
    occupied: set[tuple[int, int]] = set()
    for panel in panels:
        grid = panel["gridPos"]
        assert set(grid) == {"h", "w", "x", "y"} and 0 <= grid["x"] and grid["x"] + grid["w"] <= 24, panel["title"]
        cells = {(grid["x"] + dx, grid["y"] + dy) for dx in range(grid["w"]) for dy in range(grid["h"])}
        assert not cells & occupied, f"panel {panel['title']!r} overlaps another"
        occupied |= cells
        if panel["type"] == "row":
            continue
        targets = panel["targets"]
        assert targets, f"panel {panel['title']!r} has no query"
        ref_ids = [t["refId"] for t in targets]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        for target in targets:
            if _is_sql(panel, target):
                assert panel["datasource"]["uid"] == target["datasource"]["uid"] == "${pgdatasource}"
                assert target["rawSql"].strip()
                continue
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
            assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
            assert target["expr"].strip(), panel["title"]
            for used in {next(g for g in m.groups() if g) for m in _VARIABLE.finditer(target["expr"])}:
                assert used in variables or used in BUILTIN_VALUES, f"{panel['title']}: ${used} is not defined"


def test_forecast_quality_dashboard_has_per_series_and_sql_panels() -> None:
    board = _dashboard("adaptd-forecast-quality.json")
    variables = {var["name"]: var for var in board["templating"]["list"]}
    series_query = variables["series"]["query"]
    assert (series_query["query"] if isinstance(series_query, dict) else series_query) == \
        "label_values(adaptd_series_forecast, series)"
    assert variables["pgdatasource"]["type"] == "datasource"
    assert variables["pgdatasource"]["query"] == "grafana-postgresql-datasource"
    exprs = " ".join(expr for _, expr in _promql_targets(board))
    for metric in ("adaptd_series_value", "adaptd_series_forecast", "adaptd_series_forecast_lower",
                   "adaptd_series_forecast_upper", "adaptd_series_scaled_error"):
        assert f'{metric}{{job=~"$job", instance=~"$instance", series="$series"}}' in exprs, metric
    sql = [target["rawSql"] for panel in _panels(board["panels"]) for target in panel.get("targets", [])
           if _is_sql(panel, target)]
    assert sql == ["SELECT target_time AS time, value, lo, hi FROM forecast_latest "
                   "WHERE series = '$series' ORDER BY 1"]


def test_dashboard_expressions_parse(tmp_path: Path) -> None:
    """Every dashboard expression, as a recording rule: promtool check rules parses each one."""
    promtool = _binary("promtool")
    rules = []
    for name in DASHBOARD_FILES:
        board = _dashboard(name)
        values = dashboard_values(board, job="adaptd", series="s0")
        rules += [{"record": f"dashboard:check_{len(rules) + i}", "expr": substitute(expr, values)}
                  for i, (_, expr) in enumerate(_promql_targets(board))]
    path = tmp_path / "dashboards_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}), encoding="utf-8")
    proc = _run(promtool, "check", "rules", str(path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"{len(rules)} rules found" in proc.stdout


def test_grafana_provisioning_files() -> None:
    datasources = _load_yaml(PROVISIONING / "datasources" / "adaptd.yml")
    assert datasources["apiVersion"] == 1
    [prometheus] = [ds for ds in datasources["datasources"] if ds["type"] == "prometheus"]
    assert prometheus["url"].startswith("http") and prometheus["access"] == "proxy"
    # The PostgreSQL datasource for the forecast curves is there, commented out.
    text = (PROVISIONING / "datasources" / "adaptd.yml").read_text(encoding="utf-8")
    assert re.search(r"^\s*#\s*type: grafana-postgresql-datasource", text, re.M)

    dashboards = _load_yaml(PROVISIONING / "dashboards" / "adaptd.yml")
    assert dashboards["apiVersion"] == 1
    [provider] = dashboards["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == GRAFANA_DASHBOARD_DIR
    assert sorted(p.name for p in DASHBOARDS.glob("*.json")) == sorted(DASHBOARD_FILES)


# -- (c) integration: a real Prometheus scraping a real daemon ----------------------------------

SERIES = [f"s{i}" for i in range(8)]
EXPORTED = SERIES[:2]            # [metrics] series: the opt-in per-series metrics
STEPS = 300                      # hourly records per series; [model] window is 48
SHIFT_AT = STEPS // 2            # a level shift here makes the drift detectors fire


def _feed_values(index: int) -> list[float]:
    """A daily cycle plus a small wobble; halfway, a regime change: the level jumps by ~30 typical
    steps and the wobble grows and turns irregular. (A level shift alone barely moves the one-step
    errors the detectors watch: the models read inputs relative to the last value.)"""
    out = []
    for t in range(STEPS):
        after = t >= SHIFT_AT
        wobble = 4.0 if after else 0.7
        value = 10.0 * index + 5.0 * math.sin(2 * math.pi * t / 24) + wobble * math.sin(0.91 * t + index)
        if after:
            value += 40.0 + wobble * math.sin(2.3 * t * t + index)
        out.append(value)
    return out


def _http_json(url: str, params: dict[str, str] | None = None) -> dict[str, Any]:
    if params:
        url += "?" + urllib.parse.urlencode(params)
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:  # a bad query is a 400 with a JSON error body
        return json.loads(exc.read())


def _wait(predicate: Any, timeout: float, what: str, log: Path | None = None, detail: Any = None) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            result = predicate()
        except (OSError, ValueError):
            result = None
        if result:
            return result
        time.sleep(0.25)
    extra = f" ({detail()})" if detail else ""
    extra += f"\n--- Prometheus log:\n{log.read_text(errors='replace')[-3000:]}" if log and log.exists() else ""
    pytest.fail(f"timed out after {timeout}s waiting for {what}{extra}", pytrace=False)


def _query(base: str, expr: str) -> dict[str, Any]:
    return _http_json(f"{base}/api/v1/query", {"query": expr})


@pytest.mark.integration
@pytest.mark.slow
def test_every_dashboard_and_alert_expression_has_data(tmp_path: Path) -> None:
    prometheus_bin = _binary("prometheus")
    promtool = _binary("promtool")
    from daemon_harness import free_port, running_daemon

    sections = {"metrics": {"series": EXPORTED},
                "scheduler": {"checkpoint_interval": 1.0},  # the minimum: checkpoint metrics exist
                "store": {"retention": 3e9},   # on (a pass 10 s after start), keeping everything
                "model": {"max_horizon": 24}}
    with running_daemon(metrics=True, naive=False, sections=sections) as daemon:
        listen = daemon.settings.metrics.listen
        shutil.copy(ALERTS, tmp_path / "alerts.yml")
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": ["alerts.yml"],
            "scrape_configs": [{"job_name": "adaptd", "scrape_interval": "1s", "scrape_timeout": "1s",
                                "static_configs": [{"targets": [listen]}]}],
        }), encoding="utf-8")
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        log = tmp_path / "prometheus.log"
        with open(log, "wb") as log_file:
            prometheus = subprocess.Popen(
                [prometheus_bin, f"--config.file={tmp_path / 'prometheus.yml'}",
                 f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
                 "--log.level=warn"],
                stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT, cwd=tmp_path)
        try:
            def target_up() -> bool:
                targets = _http_json(f"{base}/api/v1/targets")["data"]["activeTargets"]
                return any(t["labels"].get("job") == "adaptd" and t["health"] == "up" for t in targets)
            _wait(target_up, 30, "Prometheus to scrape the daemon", log)

            # Feed: chronological batches over all series, a few bad records, some forecasts,
            # one request of each kind that fails.
            start = 1_700_000_000.0
            values = {name: _feed_values(i) for i, name in enumerate(SERIES)}
            for lo in range(0, STEPS, 50):
                batch = [{"series": name, "ts": start + 3600.0 * t, "value": values[name][t]}
                         for t in range(lo, min(lo + 50, STEPS)) for name in SERIES]
                batch += [{"series": "s0", "ts": "not a time", "value": 1.0},
                          {"series": "s1", "ts": start, "value": None}]
                answer = daemon.ingest(batch)
                assert len(answer["rejected"]) == 2, answer["rejected"]
                # A forecast now, so that the later ones raise a counter Prometheus already has.
                assert daemon.forecast(SERIES[lo // 50 % len(SERIES)], 24)["ok"]
            daemon.ingest([{"series": "s0", "ts": start + 3600.0 * (STEPS - 1), "value": values["s0"][-1]}])
            assert not daemon.request({"op": "forecast", "series": "no-such-series", "horizon": 3})["ok"]
            assert not daemon.request({"op": "no-such-op"})["ok"]

            def learnt() -> bool:
                answer = _query(base, 'adaptd_learning_backlog_records == 0 and adaptd_series_warm == 8')
                return bool(answer["data"]["result"])
            _wait(learnt, 60, "the models to learn every record (backlog 0, 8 warm series)", log)
            for name in SERIES:
                answer = daemon.forecast(name, 24)
                assert answer["ok"], answer
            daemon.request({"op": "series"})
            daemon.request({"op": "stats"})

            needed = [f'adaptd_series_forecast{{series="{EXPORTED[0]}"}}',
                      'rate(adaptd_requests_total{op="forecast"}[1m]) > 0',
                      "adaptd_last_checkpoint_timestamp_seconds > 0",
                      "adaptd_retention_last_success_timestamp_seconds > 0",
                      "sum(adaptd_drift_events_total) > 0"]
            missing = list(needed)

            def ready_for_queries() -> bool:
                missing[:] = [expr for expr in needed if not _query(base, expr)["data"]["result"]]
                return not missing
            _wait(ready_for_queries, 30, "forecasts, checkpoints, a retention pass and drift events to be scraped", log,
                  detail=lambda: "still empty: " + ", ".join(missing))

            # Every dashboard and alert expression: it parses, and it returns data.
            checks: list[tuple[str, str]] = []
            for name in DASHBOARD_FILES:
                board = _dashboard(name)
                values_ = dashboard_values(board, job="adaptd", series=EXPORTED[0])
                checks += [(f"{name}: {where}", substitute(expr, values_)) for where, expr in _promql_targets(board)]
            checks += [(f"alerts.yml: {rule['alert']} (thresholds removed)", without_thresholds(rule["expr"]))
                       for rule in _rules()]
            problems = []
            for where, expr in checks:
                answer = _query(base, expr)
                if answer.get("status") != "success":
                    problems.append(f"{where}: {answer.get('error')}\n    {expr}")
                elif not answer["data"]["result"]:
                    problems.append(f"{where}: no data\n    {expr}")
            with urllib.request.urlopen(f"http://{listen}/metrics", timeout=10) as response:
                scraped = response.read().decode()
            assert not problems, (f"{len(problems)} of {len(checks)} expressions failed:\n"
                                  + "\n".join(problems) + "\n--- daemon /metrics:\n" + scraped)
            assert len(checks) > 60

            # Prometheus loaded every alert rule and evaluates it without error.
            rules = [rule for group in _http_json(f"{base}/api/v1/rules")["data"]["groups"]
                     for rule in group["rules"]]
            assert sorted(rule["name"] for rule in rules) == sorted(rule["alert"] for rule in _rules())
            assert all(rule["health"] == "ok" for rule in rules), [(r["name"], r.get("lastError")) for r in rules]
            # The dashboards' $series variable (label_values(adaptd_series_forecast, series)) offers
            # exactly the series the config exports.
            offered = _http_json(f"{base}/api/v1/label/series/values", {"match[]": "adaptd_series_forecast"})
            assert sorted(offered["data"]) == sorted(EXPORTED)

            # The exposition itself passes promtool's linter.
            lint = _run(promtool, "check", "metrics", stdin=scraped)
            assert lint.returncode == 0 and not (lint.stdout + lint.stderr).strip(), lint.stdout + lint.stderr
        finally:
            prometheus.terminate()
            try:
                prometheus.wait(15)
            except subprocess.TimeoutExpired:
                prometheus.kill()
                prometheus.wait(5)
