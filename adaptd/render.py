"""Human-readable views of the daemon's answers for the CLI."""

from __future__ import annotations

import time
from typing import Any

from .records import format_ts


def _num(x: float) -> str:
    return f"{x:.6g}"


def _duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def _span(seconds: float) -> str:
    """A rough length of time: 2d3h, 3h12min, 4min10s, 12s."""
    seconds = max(0, int(seconds))
    for big, small, unit, sub_unit in ((86400, 3600, "d", "h"), (3600, 60, "h", "min"), (60, 1, "min", "s")):
        if seconds >= big:
            rest = (seconds % big) // small
            return f"{seconds // big}{unit}" + (f"{rest}{sub_unit}" if rest else "")
    return f"{seconds}s"


def meta_training_text(state: dict[str, Any], now: float | None = None) -> str:
    """One line on the scheduled meta-training (the `meta_training` part of stats)."""
    now = time.time() if now is None else now
    parts = []
    if state.get("running_since") is not None:
        progress = state.get("progress")
        far = "" if not progress else (
            f" (iteration {progress['iteration']} of {progress['iterations']}, about "
            f"{_span(progress['eta_s'] - (now - progress.get('at', now)))} left)"
            if progress["iteration"] < progress["iterations"] else
            f" (all {progress['iterations']} iterations done: validating)")
        parts.append(f"running for {_span(now - state['running_since'])}{far}")
    last = state.get("last_run")
    if last is not None:
        parts.append(_last_run(last, now))
    elif state.get("here") and state.get("running_since") is None:
        parts.append("no run yet")
    if not state.get("interval_s"):
        parts.append("off ([meta] retrain_interval = 0)")
    elif not state.get("here"):
        parts.append("cluster member 0 runs it")
    elif state.get("running_since") is None and state.get("next_run") is not None:
        parts.append(f"next in {_span(state['next_run'] - now)}")
    return "; ".join(parts)


def _last_run(last: dict[str, Any], now: float) -> str:
    """How the newest finished meta-training run ended, when, and (if it stored nothing) why."""
    what = {"interrupted": "cut off when its daemon stopped", "stopped": "stopped at shutdown"}.get(
        last["outcome"], last["outcome"].replace("_", " "))
    done = [f"version {last['version']}"] if last.get("version") is not None else []
    if last.get("seconds") is not None:
        done.append(f"took {_span(last['seconds'])}")
    if last.get("finished") is None:   # cut off: when it ended is not known
        done.append(f"started {_span(now - last['started'])} ago")
    line = f"last run {what}" + (f" ({', '.join(done)})" if done else "")
    if last.get("finished") is not None:
        line += f" {_span(now - last['finished'])} ago"
    return line + (f": {last['detail']}" if last.get("detail") else "")


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)


def forecast_table(answer: dict[str, Any], coverage: float) -> str:
    model = answer.get("model", {})
    pct = f"{coverage * 100:g}%"
    title = (f"{answer['series']}: {len(answer['points'])} steps of {_duration(answer['step'])} after "
             f"{format_ts(answer['origin'])}; model {model.get('kind')}"
             f" (init {model.get('init') or '-'}, adaptations {model.get('adaptations', 0)})")
    rows = [[format_ts(p["ts"]), _num(p["value"]), _num(p["lo"]), _num(p["hi"])] for p in answer["points"]]
    return title + "\n" + _table(["time (UTC)", "forecast", f"lo {pct}", f"hi {pct}"], rows)


def series_table(listing: list[dict[str, Any]]) -> str:
    if not listing:
        return "no series yet: send records with `adaptd ingest FILE`"
    rows = [[s["series"], str(s["observations"]), format_ts(s["first_ts"]), format_ts(s["last_ts"])]
            for s in listing]
    return _table(["series", "observations", "first (UTC)", "last (UTC)"], rows)


def _engine_detail(engine: dict[str, Any]) -> str:
    """The online engine's initializer and what its drift detectors set off, for status."""
    if engine.get("init") is None:
        return ""
    label = str(engine.get("init_version"))
    which = "" if label == "0" else " shipped with adaptd" if label == "packaged" else f" version {label}"
    return (f" (series restart from the {engine['init']} initializer{which}; "
            f"{engine.get('drifts', 0)} drifts detected, {engine.get('adapted', 0)} adaptations applied, "
            f"{engine.get('adapting', 0)} running)")


def _retention_text(retention: dict[str, Any] | None, now: float | None = None) -> str:
    """What `[store] retention` keeps, when `forget_after` forgets a series, and what the newest
    pass did, for status."""
    if retention is None:
        return ""
    keep, forget = retention.get("keep_s"), retention.get("forget_after_s")
    if not keep and not forget:
        return " (keeps every observation)"
    kept = f"keeps {_span(keep)} of each series" if keep else "keeps each series' whole history"
    text = f" ({kept}" + (f", forgets a series silent for {_span(forget)}" if forget else "")
    last = retention.get("last_pass")
    if last is not None:
        now = time.time() if now is None else now
        deleted = f"{last['deleted']} observations of {last['series'] + last.get('forgotten', 0)} series"
        if last.get("forgotten"):
            deleted += f" ({last['forgotten']} series forgotten)"
        how = (f"deleted {deleted}" if not last.get("error") else
               f"stopped by a store error after deleting {deleted}: {last['error']}")
        text += f"; last pass {_span(now - last['at'])} ago {how}"
    return text + ")"


def status_text(stats: dict[str, Any]) -> str:
    engine = stats.get("engine", {})
    store = stats.get("store", {})
    lines = [
        f"health:            {stats.get('health')}",
        f"version:           {stats.get('version')}",
        f"uptime:            {stats.get('uptime_s', 0):.0f}s",
        f"series:            {stats.get('series')}",
        f"records ingested:  {stats.get('records_ingested')} (rejected {stats.get('records_rejected')}, "
        f"late {stats.get('records_late')})",
        f"ingest queue:      {stats.get('ingest_queue_records')} records",
        f"connections:       {stats.get('connections')}",
        f"engine:            {engine.get('kind')}{_engine_detail(engine)}",
    ]
    if engine.get("kind") == "online":
        lines.append(f"learning backlog:  {stats.get('learning_backlog_records')} records")
    lines += [f"store:             {store.get('url')}{_retention_text(store.get('retention'))}",
              f"config:            {stats.get('config')}"]
    if "meta_training" in stats:
        lines.append(f"meta-training:     {meta_training_text(stats['meta_training'])}")
    cluster = stats.get("cluster") or {}
    if cluster.get("members", 1) > 1:
        lines.insert(3, f"cluster:           member {cluster.get('member')} of {cluster['members']}")
    return "\n".join(lines)
