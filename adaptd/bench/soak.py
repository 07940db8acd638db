"""`adaptd bench soak`: many clients for minutes, drift storms, a deliberate overload.

A fresh daemon (online engine, SQLite in a temp dir, or `--store-url`) first gets `--preload`
hourly steps of every series and learns them, so forecasts come from warm models. Then, for
`--seconds`, `--clients` client threads (the blocking `adaptd.client.Client`, one connection
each) mix ingest and forecast requests:

- steady phase: every client owns a share of the series and sends `--batch`-record batches
  of their next hourly steps on a schedule that adds up to `--rate` records/s (the offered
  load: slow answers do not lower it), and `--forecast-ratio` forecasts of random series per
  batch, spread in between (a forecast slot missed while waiting is skipped). A batch refused
  `overloaded` is re-sent after a short pause, as `adaptd ingest` does.
- drift storms: every `--storm-every` seconds a random third of the series jump to a new
  level, scale and dynamics (daily cycle, AR(1), random walk, square wave), so detectors fire
  and adaptations run.
- overload phase (the last `--overload-fraction` of the run): no pacing, `--overload-batch`
  records per batch, a refused batch is re-sent at once; one forecast per batch. Only
  `overloaded` answers are acceptable there (as everywhere).

Measured from the client side: throughput, ingest and forecast answer times (request sent to
answer read), error answers by code; from the daemon: its RSS every second
(/proc/PID/status VmRSS), its CPU time, and its Prometheus metrics every second (drift events,
adaptations, learning backlog, ingest queue). Any answer other than `ok` or `overloaded`, any
client-side failure (time-out, closed connection), a lost acknowledged record, the daemon
dying, or memory growing faster than `--rss-slope-limit` in the second half of the steady
phase (beyond two standard errors of the fitted slope; "inconclusive" when RSS swings too
much to tell, which does not fail) makes the exit status 1.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shlex
import sys
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from ..client import Client, ClientError, ClientTimeout
from ..config import ModelSettings
from .harness import ScratchDaemon

STEP = 3600.0
T0 = 1_600_000_000.0
PROG = "adaptd bench soak"
KINDS = ("daily", "ar1", "walk", "square")
STEADY, OVERLOAD = "steady", "overload"
PRELOAD_BATCH = 10_000
RETRY_PAUSE = 0.1          # steady-phase clients wait this long before re-sending a refused batch
MIN_SLOPE_WINDOW = 20.0    # seconds of samples below which the memory slope is not judged
ADWIN_CLOCK = 32           # river's ADWIN looks for a change once per 32 values
# Every series keeps its newest `[model] history` observations in Python lists (the naive
# fallback's buffer): 70 bytes per observation until full, 0 after (tracemalloc on
# NaiveEngine.record + SeriesCatalog.record, 1000 series). Growth the soak expects by design.
HISTORY_BYTES_PER_OBSERVATION = 70
WATCHED = ("adaptd_drift_events_total", "adaptd_adaptations_total", "adaptd_learning_backlog_records",
           "adaptd_ingest_queue_records", "adaptd_records_ingested_total", "adaptd_records_late_total",
           "adaptd_requests_total", "adaptd_store_commit_failures_total", "adaptd_model_nonfinite_outputs_total",
           "adaptd_series_warm", "adaptd_adaptations_running", "adaptd_connections")


# -- the synthetic series ------------------------------------------------------------------------
class Series:
    """One hourly series: level + scale * (pattern + noise); a storm changes all three."""

    __slots__ = ("name", "t", "rng", "level", "scale", "kind", "phase", "phi", "period", "state")

    def __init__(self, name: str, seed: int):
        self.name = name
        self.t = 0
        self.rng = random.Random(seed)
        self.level = self.rng.uniform(5.0, 50.0)
        self.scale = self.rng.uniform(0.5, 5.0)
        self._new_dynamics()

    def _new_dynamics(self) -> None:
        r = self.rng
        self.kind = r.choice(KINDS)
        self.phase = r.uniform(0.0, 2 * math.pi)
        self.phi = r.uniform(0.5, 0.95)
        self.period = r.choice((6, 12, 24, 48))
        self.state = 0.0

    def storm(self) -> None:
        r = self.rng
        self.level += r.choice((-1.0, 1.0)) * r.uniform(5.0, 20.0) * self.scale
        self.scale = min(50.0, max(0.05, self.scale * r.uniform(0.3, 3.0)))
        self._new_dynamics()

    def next(self) -> tuple[float, float]:
        t, r = self.t, self.rng
        self.t += 1
        if self.kind == "daily":
            x = math.sin(2 * math.pi * t / 24 + self.phase)
        elif self.kind == "ar1":
            self.state = self.phi * self.state + r.gauss(0.0, 0.5)
            x = self.state
        elif self.kind == "walk":
            self.state += r.gauss(0.0, 0.3)
            x = self.state
        else:
            x = 1.0 if (t // (self.period // 2)) % 2 else -1.0
        return T0 + STEP * t, round(self.level + self.scale * (x + r.gauss(0.0, 0.2)), 4)


def _encode(records: list[dict[str, Any]]) -> bytes:
    return json.dumps({"op": "ingest", "records": records}, separators=(",", ":")).encode() + b"\n"


class Feed:
    """A client's own series; batches take their next steps round-robin, so every series'
    timestamps stay in order whatever the other clients do."""

    def __init__(self, series: list[Series]):
        self.series = series
        self.cursor = 0
        self.storms_seen = 0

    def batch(self, n: int) -> tuple[bytes, int]:
        records = []
        for _ in range(n):
            s = self.series[self.cursor]
            self.cursor = (self.cursor + 1) % len(self.series)
            ts, value = s.next()
            records.append({"series": s.name, "ts": ts, "value": value})
        return _encode(records), n

    def catch_up(self, storms: list[frozenset[str]]) -> None:
        while self.storms_seen < len(storms):
            hit = storms[self.storms_seen]
            for s in self.series:
                if s.name in hit:
                    s.storm()
            self.storms_seen += 1


# -- what the clients saw ------------------------------------------------------------------------
@dataclass
class Tally:
    latencies: dict[tuple[str, str], list[float]] = field(default_factory=dict)   # (phase, op) -> s, ok answers
    refused: dict[str, list[float]] = field(default_factory=dict)                 # phase -> s, overloaded answers
    errors: Counter[tuple[str, str, str]] = field(default_factory=Counter)         # (phase, op, code)
    records: Counter[str] = field(default_factory=Counter)                         # phase -> acked records
    forecasts: Counter[str] = field(default_factory=Counter)
    models: Counter[tuple[str, str]] = field(default_factory=Counter)              # (phase, model kind)
    examples: dict[str, str] = field(default_factory=dict)                         # code -> first message
    acked: int = 0              # plain ints, read by the progress line on another thread
    forecasted: int = 0
    overloaded: int = 0
    failures: int = 0

    def ok(self, phase: str, op: str, seconds: float) -> None:
        self.latencies.setdefault((phase, op), []).append(seconds)

    def error(self, phase: str, op: str, code: str, message: str, seconds: float | None = None) -> None:
        self.errors[(phase, op, code)] += 1
        self.examples.setdefault(code, message[:200])
        if code == "overloaded":
            self.overloaded += 1
            if seconds is not None:
                self.refused.setdefault(phase, []).append(seconds)
        else:
            self.failures += 1


class Run:
    """Shared state of one soak: the clock, the phase plan and the storms."""

    def __init__(self, args: argparse.Namespace, names: list[str]):
        self.args = args
        self.names = names
        self.seconds = args.seconds
        self.overload_from = args.seconds * (1.0 - args.overload_fraction)
        self.start = 0.0
        self.preloaded = 0
        self.aborted = False    # the daemon died: clients stop
        self.storms: list[frozenset[str]] = []
        self.storm_log: list[dict[str, float]] = []

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def phase(self) -> str:
        return OVERLOAD if self.elapsed() >= self.overload_from else STEADY

    def over(self) -> bool:
        return self.aborted or self.elapsed() >= self.seconds

    def storm(self, k: int) -> None:
        rng = random.Random(self.args.seed * 1_000_003 + k)
        hit = frozenset(rng.sample(self.names, len(self.names) // 3))
        self.storm_log.append({"t": round(self.elapsed(), 1), "series": len(hit)})
        self.storms.append(hit)


def _client(run: Run, socket: str, k: int, feed: Feed | None, tally: Tally) -> None:
    args = run.args
    rng = random.Random(args.seed * 7919 + k)
    period = args.clients * args.batch / args.rate     # seconds between this client's ingest batches
    gap = period / args.forecast_ratio if args.forecast_ratio else math.inf
    next_ingest = run.start + period * k / args.clients if feed is not None else math.inf   # spread out
    next_forecast = run.start + period * k / args.clients + gap / 2
    client: Client | None = None

    def call(line: bytes, op: str, phase: str) -> dict[str, Any] | None:
        nonlocal client
        sent = time.perf_counter()
        try:
            if client is None:
                client = Client(socket, timeout=args.timeout)
                client.connect()
            client.send_raw(line)
            answer = client.read_response()
        except (ClientError, OSError) as exc:   # time-out, refused, closed: a failure, then reconnect
            code = "client_timeout" if isinstance(exc, (TimeoutError, ClientTimeout)) else "client_" + type(exc).__name__
            tally.error(phase, op, code, f"{exc} after {time.perf_counter() - sent:.1f}s")
            if client is not None:
                client.close()
            client = None
            return None
        took = time.perf_counter() - sent
        if answer.get("ok"):
            tally.ok(phase, op, took)
            return answer
        err = answer.get("error") or {}
        tally.error(phase, op, str(err.get("code")), str(err.get("message")), took)
        return answer

    def ingest(size: int, phase: str) -> None:
        assert feed is not None
        feed.catch_up(run.storms)
        line, n = feed.batch(size)
        while True:   # the same batch until it is acknowledged: refused records were not stored
            answer = call(line, "ingest", phase)
            if answer is None:
                return
            if answer.get("ok"):
                if answer.get("accepted") != n or answer.get("rejected"):
                    tally.error(phase, "ingest", "rejected_records", json.dumps(answer)[:200])
                tally.records[phase] += int(answer.get("accepted", 0))
                tally.acked += int(answer.get("accepted", 0))
                return
            if answer["error"].get("code") != "overloaded" or run.over():
                return
            if run.phase() == STEADY:
                time.sleep(RETRY_PAUSE)

    def forecast(phase: str) -> None:
        series = run.names[rng.randrange(len(run.names))]
        line = json.dumps({"op": "forecast", "series": series, "horizon": args.horizon}).encode() + b"\n"
        answer = call(line, "forecast", phase)
        if answer is not None and answer.get("ok"):
            tally.forecasts[phase] += 1
            tally.forecasted += 1
            tally.models[(phase, str(answer.get("model", {}).get("kind")))] += 1

    try:
        while not run.over():
            phase = run.phase()
            if phase == STEADY:
                # Two schedules: ingest batches every `period` (the offered load: slow forecasts
                # must not lower it) and forecasts every `gap` in between, skipping missed slots.
                now = time.monotonic()
                due = min(next_ingest, next_forecast)
                if now < due:   # sleep in short steps: the phase may change or the run end meanwhile
                    time.sleep(max(0.0, min(due - now, 0.5, run.start + run.overload_from - now)))
                    continue
                if next_ingest <= next_forecast:
                    next_ingest = max(next_ingest + period, now - period)   # a late client does not burst
                    ingest(args.batch, phase)
                else:
                    next_forecast = max(next_forecast + gap, now)
                    forecast(phase)
            else:
                if feed is not None:
                    ingest(args.overload_batch, phase)
                if not run.over():
                    forecast(phase)
    finally:
        if client is not None:
            client.close()


# -- what the daemon did -------------------------------------------------------------------------
def _rss_mb(pid: int) -> tuple[float, float] | None:
    """VmRSS and RssAnon (heap: what a leak grows; the rest is mapped files and shared memory), MB."""
    found: dict[str, float] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "RssAnon"):
                    found[key] = int(rest.split()[0]) / 1024.0
    except (OSError, ValueError, IndexError):
        return None
    return (found["VmRSS"], found.get("RssAnon", math.nan)) if "VmRSS" in found else None


def _cpu_seconds(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def _machine_jiffies() -> tuple[int, int]:
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    return sum(values), values[3] + values[4]    # total, idle + iowait


def _own_cpu() -> float:
    t = os.times()
    return t.user + t.system


def scrape(url: str, timeout: float = 2.0) -> dict[str, float]:
    """The watched samples of one /metrics page, keyed `name` or `name{label=value,...}`."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=timeout) as response:
        text = response.read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name in WATCHED:
                labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
                out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


def _total(sample: dict[str, float], name: str, **labels: str) -> float:
    want = [f"{k}={v}" for k, v in labels.items()]
    return sum(v for key, v in sample.items()
               if key.partition("{")[0] == name and all(w in key for w in want))


class Sampler(threading.Thread):
    """Every second: the daemon's RSS and CPU time, this process' CPU time, the machine's idle
    time; and (on its own thread, as a slow scrape must not delay the RSS samples) /metrics."""

    def __init__(self, run: Run, pid: int, metrics_url: str):
        super().__init__(name="soak-sampler", daemon=True)
        self.run_ = run
        self.pid = pid
        self.url = metrics_url
        self.stop = threading.Event()
        self.rss: list[tuple[float, float]] = []    # t, VmRSS MB
        self.anon: list[tuple[float, float]] = []   # t, RssAnon MB
        self.cpu: list[tuple[float, float, float, int, int]] = []   # t, daemon s, own s, total, idle
        self.metrics: list[tuple[float, dict[str, float]]] = []
        self.scrape_failures: Counter[str] = Counter()
        self.scraper = threading.Thread(target=self._scrape, name="soak-scraper", daemon=True)

    def sample_cpu(self) -> None:
        daemon = _cpu_seconds(self.pid)
        total, idle = _machine_jiffies()
        self.cpu.append((self.run_.elapsed(), daemon if daemon is not None else math.nan, _own_cpu(), total, idle))

    def run(self) -> None:
        self.scraper.start()
        while not self.stop.is_set():
            t = self.run_.elapsed()
            rss = _rss_mb(self.pid)
            if rss is not None:
                self.rss.append((t, rss[0]))
                self.anon.append((t, rss[1]))
            self.sample_cpu()
            self.stop.wait(max(0.0, 1.0 - (self.run_.elapsed() - t)))

    def _scrape(self) -> None:
        while not self.stop.is_set():
            t = self.run_.elapsed()
            try:
                self.metrics.append((t, scrape(self.url)))
            except Exception as exc:   # noqa: BLE001 - counted and reported, never fatal
                self.scrape_failures[type(exc).__name__] += 1
            self.stop.wait(max(0.0, 1.0 - (self.run_.elapsed() - t)))

    def latest(self) -> dict[str, float]:
        return self.metrics[-1][1] if self.metrics else {}


# -- numbers -------------------------------------------------------------------------------------
def percentiles(values: list[float]) -> dict[str, float | int | None]:
    """p50/p99/p99.9/max in ms (nearest rank)."""
    if not values:
        return {"n": 0, "p50": None, "p99": None, "p99_9": None, "max": None}
    v = sorted(values)

    def rank(q: float) -> float:
        return round(v[min(len(v) - 1, max(0, math.ceil(q * len(v)) - 1))] * 1e3, 2)

    return {"n": len(v), "p50": rank(0.5), "p99": rank(0.99), "p99_9": rank(0.999), "max": round(v[-1] * 1e3, 2)}


def slope_per_minute(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, MB) points, in MB per minute."""
    fit = _fit(points)
    return fit[0] if fit else None


def _fit(points: list[tuple[float, float]]) -> tuple[float, float] | None:
    """Least-squares slope and its standard error, both in MB per minute."""
    if len(points) < 3:
        return None
    n = len(points)
    mt = sum(t for t, _ in points) / n
    my = sum(y for _, y in points) / n
    var = sum((t - mt) ** 2 for t, _ in points)
    if var == 0:
        return None
    b = sum((t - mt) * (y - my) for t, y in points) / var
    residual = sum((y - my - b * (t - mt)) ** 2 for t, y in points) / (n - 2)
    return 60.0 * b, 60.0 * math.sqrt(residual / var)


def _at(points: list[tuple[float, float]], t: float) -> float | None:
    """The sample nearest to time t."""
    return min(points, key=lambda p: abs(p[0] - t))[1] if points else None


def _cores(cpu: list[tuple[float, float, float, int, int]], t0: float, t1: float) -> dict[str, float | None]:
    inside = [c for c in cpu if t0 <= c[0] <= t1]
    if len(inside) < 2:
        return {"daemon": None, "bench_clients": None, "machine_busy": None, "other_processes": None}
    a, b = inside[0], inside[-1]
    wall = b[0] - a[0]
    cpus = os.cpu_count() or 1
    busy = 1.0 - (b[4] - a[4]) / max(1, b[3] - a[3])
    daemon, clients = (b[1] - a[1]) / wall, (b[2] - a[2]) / wall
    return {"daemon": round(daemon, 2), "bench_clients": round(clients, 2), "machine_busy": round(busy * cpus, 2),
            "other_processes": round(max(0.0, busy * cpus - daemon - clients), 2)}


def _command(args: argparse.Namespace) -> str:
    from ..store import redact

    parts = shlex.split(PROG)
    for flag in ("clients", "seconds", "series", "rate", "batch", "forecast_ratio", "horizon", "storm_every",
                 "overload_fraction", "overload_batch", "preload", "timeout", "rss_slope_limit", "seed"):
        value = getattr(args, flag)
        parts += [f"--{flag.replace('_', '-')}", f"{value:g}" if isinstance(value, float) else str(value)]
    if args.store_url:
        parts += ["--store-url", redact(args.store_url)]
    if args.json:
        parts.append("--json")
    return shlex.join(parts)


def _free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- the run -------------------------------------------------------------------------------------
def _preload(client: Client, series: list[Series], steps: int, storm_at: int | None,
             timeout: float) -> tuple[int, float, float, dict[str, Any]]:
    """`steps` hourly steps of every series (a third of them changing at step `storm_at`), then
    wait until the models have learnt them."""
    started = time.perf_counter()
    records: list[dict[str, Any]] = []
    sent = 0

    def flush() -> None:
        nonlocal records, sent
        while records:
            answer = client.request({"op": "ingest", "records": records})
            if answer.get("ok"):
                sent += len(records)
                records = []
            elif answer.get("error", {}).get("code") == "overloaded":
                time.sleep(0.5)
            else:
                raise SystemExit(f"{PROG}: preload refused: {answer}")

    for step in range(steps):
        if step == storm_at:
            for s in random.Random(-1).sample(series, len(series) // 3):
                s.storm()
        for s in series:
            ts, value = s.next()
            records.append({"series": s.name, "ts": ts, "value": value})
            if len(records) >= PRELOAD_BATCH:
                flush()
    flush()
    acked = time.perf_counter() - started
    deadline = time.monotonic() + timeout
    while (stats := client.request({"op": "stats"}))["learning_backlog_records"] and time.monotonic() < deadline:
        time.sleep(0.25)
    while stats["engine"].get("adapting") and time.monotonic() < deadline:   # adaptations still running
        time.sleep(0.25)
        stats = client.request({"op": "stats"})
    return sent, acked, time.perf_counter() - started, stats["engine"]


def _progress(run: Run, tallies: list[Tally], sampler: Sampler, final: bool = False) -> str:
    t = max(run.elapsed(), 1e-9)
    acked = sum(x.acked for x in tallies)
    fc = sum(x.forecasted for x in tallies)
    failures = sum(x.failures for x in tallies)
    overloaded = sum(x.overloaded for x in tallies)
    rss = sampler.rss[-1][1] if sampler.rss else math.nan
    m = sampler.latest()
    return (f"soak: {min(t, run.seconds):5.0f}/{run.seconds:g}s {run.phase() if not final else 'done':8} "
            f"{acked / t:8,.0f} records/s {fc / t:6,.0f} forecasts/s  RSS {rss:6.0f} MB  "
            f"backlog {_total(m, 'adaptd_learning_backlog_records'):9,.0f}  "
            f"queue {_total(m, 'adaptd_ingest_queue_records'):8,.0f}  "
            f"drifts {_total(m, 'adaptd_drift_events_total'):5.0f}  overloaded {overloaded}  failures {failures}")


def soak(args: argparse.Namespace) -> dict[str, Any]:
    names = [f"soak{k}" for k in range(args.series)]
    series = [Series(name, args.seed * 1_000_003 + k) for k, name in enumerate(names)]
    feeds = [Feed(series[k::args.clients]) if series[k::args.clients] else None for k in range(args.clients)]
    # A storm inside the preload, after the models are warm: ADWIN needs dozens of values after
    # a change, so its detections come early in the steady phase, and the first adaptations (and
    # what they allocate once) fall in the warm-up half rather than in the measured one.
    window = ModelSettings().window
    storm_at = window + 24 if args.preload >= window + 24 + 2 * ADWIN_CLOCK else None
    port = _free_port()
    settings: dict[str, dict[str, object]] = {"model": {"engine": "online"},
                                              "metrics": {"listen": f"127.0.0.1:{port}"}}
    if args.store_url:
        settings["store"] = {"url": args.store_url}
    run = Run(args, names)
    tallies = [Tally() for _ in range(args.clients)]
    report: dict[str, Any] = {}
    tty = sys.stderr.isatty()
    daemon = ScratchDaemon(settings)
    with daemon:
        assert daemon.process is not None and daemon.log is not None
        drain = daemon.log
        pid = daemon.process.pid
        with Client(daemon.socket, timeout=600) as feeder:
            sent, acked_s, learnt_s, engine = _preload(feeder, series, args.preload, storm_at, timeout=1800)
        run.preloaded = sent
        report["setup"] = {"records": sent, "acked_s": round(acked_s, 1), "learnt_s": round(learnt_s, 1),
                           "steps_per_series": args.preload, "storm_at_step": storm_at,
                           "drift_events": engine.get("drifts"),
                           "adaptations": engine.get("adapted", 0) + engine.get("kept", 0) + engine.get("failed", 0),
                           "initializer": f"{engine.get('init')} (version {engine.get('init_version')})", "daemon_pid": pid}
        print(f"setup: {sent:,} records ({args.preload} hourly steps of {args.series} series) acknowledged in "
              f"{acked_s:.1f}s, learnt in {learnt_s:.1f}s; {report['setup']['drift_events']} drift events, "
              f"{report['setup']['adaptations']} adaptations", file=sys.stderr, flush=True)
        run.start = time.monotonic()
        sampler = Sampler(run, pid, f"http://127.0.0.1:{port}/metrics")
        sampler.start()
        threads = [threading.Thread(target=_client, args=(run, str(daemon.socket), k, feeds[k], tallies[k]),
                                    name=f"soak-client-{k}", daemon=True) for k in range(args.clients)]
        for th in threads:
            th.start()
        storms = 0
        last_line = 0.0
        while not run.over():
            t = run.elapsed()
            if args.storm_every > 0 and t >= (storms + 1) * args.storm_every:
                storms += 1
                run.storm(storms)
            if tty or t - last_line >= 10.0:
                print(("\r" if tty else "") + _progress(run, tallies, sampler), end="" if tty else "\n",
                      file=sys.stderr, flush=True)
                last_line = t
            if daemon.process.poll() is not None:
                run.aborted = True
                break
            time.sleep(min(0.25, max(0.0, run.seconds - t)))
        ended = run.elapsed()
        for th in threads:   # requests in flight finish (or time out) before the daemon stops
            th.join(max(0.0, run.start + run.seconds + args.timeout + 10 - time.monotonic()))
        drained = run.elapsed()
        stuck = sum(th.is_alive() for th in threads)
        print(("\r" if tty else "") + _progress(run, tallies, sampler, final=True), file=sys.stderr, flush=True)
        time.sleep(1.5)     # one more scrape after the clients stopped
        sampler.stop.set()
        sampler.join(5)
        sampler.scraper.join(5)
        died = daemon.process.poll()
        stopping = time.monotonic()
    shutdown_s = time.monotonic() - stopping
    report.update(_report(args, run, tallies, sampler, ended, drained, stuck))
    report["daemon"] = {"pid": pid, "died_during_run": died is not None,
                        "exit_code": daemon.process.returncode, "shutdown_s": round(shutdown_s, 1),
                        "log": drain.summary()}
    clean = died is None and daemon.process.returncode == 0 and "Traceback" not in report["daemon"]["log"]["by_level"]
    report["verdicts"]["daemon_survived_and_stopped_cleanly"] = "pass" if clean else "FAIL"
    report["ok"] = report["ok"] and clean
    return report


def _report(args: argparse.Namespace, run: Run, tallies: list[Tally], sampler: Sampler, ended: float,
            drained: float, stuck: int) -> dict[str, Any]:
    steady_s = min(run.overload_from, ended)
    overload_s = max(0.0, ended - run.overload_from) if args.overload_fraction > 0 else 0.0
    phases: dict[str, Any] = {}
    errors: Counter[str] = Counter()
    failures: Counter[str] = Counter()
    examples: dict[str, str] = {}
    for x in tallies:
        for (phase, op, code), n in x.errors.items():
            errors[f"{phase}/{op}/{code}"] += n
            if code != "overloaded":
                failures[f"{phase}/{op}/{code}"] += n
        for code, message in x.examples.items():
            examples.setdefault(code, message)
    for phase, seconds in ((STEADY, steady_s), (OVERLOAD, overload_s)):
        if seconds <= 0:
            continue
        records = sum(x.records[phase] for x in tallies)
        forecasts = sum(x.forecasts[phase] for x in tallies)
        models: Counter[str] = Counter()
        for x in tallies:
            for (p, kind), n in x.models.items():
                if p == phase:
                    models[kind] += n
        phases[phase] = {
            "seconds": round(seconds, 1),
            "target_records_per_s": args.rate if phase == STEADY else None,
            "target_forecasts_per_s": round(args.rate / args.batch * args.forecast_ratio, 1) if phase == STEADY
            else None,
            "records": records, "records_per_s": round(records / seconds, 1),
            "forecasts": forecasts, "forecasts_per_s": round(forecasts / seconds, 1),
            "ingest_ms": percentiles([v for x in tallies for v in x.latencies.get((phase, "ingest"), [])]),
            "ingest_refused_ms": percentiles([v for x in tallies for v in x.refused.get(phase, [])]),
            "forecast_ms": percentiles([v for x in tallies for v in x.latencies.get((phase, "forecast"), [])]),
            "forecast_models": dict(models.most_common()),
            "errors": {k.split("/", 1)[1]: n for k, n in errors.items() if k.startswith(phase + "/")},
        }
    acked = sum(x.acked for x in tallies)
    fc = sum(sum(x.forecasts.values()) for x in tallies)
    steady_records = sum(x.records[STEADY] for x in tallies)
    memory = _memory(args, run, sampler, steady_s, args.preload + steady_records / args.series,
                     steady_records / max(steady_s, 1e-9))
    daemon_metrics = _daemon_metrics(sampler)
    ingested = daemon_metrics["end"].get("records_ingested")
    preloaded = run.preloaded   # the setup's records are counted by the daemon too
    consistency = {"acked_by_clients": acked + preloaded, "committed_by_daemon": ingested,
                   "ok": ingested is not None and ingested >= acked + preloaded,
                   "late_records": daemon_metrics["end"].get("records_late")}
    if stuck:
        failures["end/any/client_still_waiting"] += stuck
    if not consistency["ok"]:
        failures["end/ingest/acked_records_missing"] += 1
    verdicts = {"errors": "pass" if not failures else "FAIL", "memory": memory["verdict"],
                "acked_records_stored": "pass" if consistency["ok"] else "FAIL"}
    return {
        "config": {"clients": args.clients, "seconds": args.seconds, "series": args.series, "rate": args.rate,
                   "batch": args.batch, "forecast_ratio": args.forecast_ratio, "horizon": args.horizon,
                   "storm_every": args.storm_every, "overload_fraction": args.overload_fraction,
                   "overload_batch": args.overload_batch, "preload": args.preload, "timeout": args.timeout,
                   "store": "postgresql" if args.store_url else "sqlite (temp dir)", "cpus": os.cpu_count()},
        "elapsed_s": round(ended, 1), "clients_done_s": round(drained, 1),
        "throughput": {"records_per_s": round(acked / max(ended, 1e-9), 1),
                       "forecasts_per_s": round(fc / max(ended, 1e-9), 1)},
        "phases": phases,
        "errors": dict(errors.most_common()), "failures": dict(failures.most_common()),
        "error_examples": examples,
        "storms": run.storm_log,
        "memory": memory,
        "daemon_metrics": daemon_metrics,
        "cpu": {"run": _cores(sampler.cpu, 0.0, ended), STEADY: _cores(sampler.cpu, 0.0, steady_s),
                OVERLOAD: _cores(sampler.cpu, run.overload_from, ended), "cpus": os.cpu_count()},
        "consistency": consistency,
        "verdicts": verdicts,
        "ok": all(v in ("pass", "n/a", "inconclusive") for v in verdicts.values()),
        "reproduce": _command(args),
    }


def _memory(args: argparse.Namespace, run: Run, sampler: Sampler, steady_s: float,
            steps_per_series: float, records_per_s: float) -> dict[str, Any]:
    """RSS over time. The verdict is on the slope over the second half of the steady phase (the
    first half is warm-up) less the growth expected by design while the per-series history
    buffers fill; the overload phase is reported apart (its queues are bounded, but large)."""
    rss, anon = sampler.rss, sampler.anon
    half = steady_s / 2
    last = steady_s - (1.0 if steady_s < run.seconds else 0.0)   # not the first overload second

    def window(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
        return [p for p in points if half <= p[0] <= last and math.isfinite(p[1])]

    history = ModelSettings().history
    filling = steps_per_series < history
    expected = records_per_s * HISTORY_BYTES_PER_OBSERVATION * 60 / 2**20 if filling else 0.0
    fit, anon_slope = _fit(window(rss)), slope_per_minute(window(anon))
    slope, error = fit if fit else (None, None)
    limit = args.rss_slope_limit
    if last - half < MIN_SLOPE_WINDOW or fit is None:
        verdict = "n/a"                                  # too short to tell growth from noise
    elif slope - expected + 2 * error <= limit:          # type: ignore[operator]
        verdict = "pass"
    elif slope - expected - 2 * error > limit:           # type: ignore[operator]
        verdict = "FAIL"
    else:
        verdict = "inconclusive"                         # RSS swings more than the limit here
    overload = [y for t, y in rss if t >= run.overload_from]
    every = max(1, round(len(rss) / 24))

    def mb(value: float | None) -> float | None:
        return round(value, 1) if value is not None and math.isfinite(value) else None

    inside = [y for _, y in window(rss)]
    return {
        "start_mb": mb(rss[0][1]) if rss else None,
        "warmup_end_mb": mb(_at(rss, half)),
        "steady_end_mb": mb(_at(rss, last)),
        "overload_peak_mb": mb(max(overload)) if overload else None,
        "end_mb": mb(rss[-1][1]) if rss else None,
        "peak_mb": mb(max(y for _, y in rss)) if rss else None,
        "anon_warmup_end_mb": mb(_at(anon, half)), "anon_steady_end_mb": mb(_at(anon, last)),
        "slope_window_s": [round(half, 1), round(last, 1)],
        "window_min_max_mb": [mb(min(inside)), mb(max(inside))] if inside else None,
        "slope_mb_per_min": round(slope, 2) if slope is not None else None,
        "slope_stderr_mb_per_min": round(error, 2) if error is not None else None,
        "anon_slope_mb_per_min": round(anon_slope, 2) if anon_slope is not None else None,
        "expected_mb_per_min": round(expected, 2),
        "limit_mb_per_min": limit,
        "verdict": verdict,
        "history_steps_per_series": round(steps_per_series), "history_capacity": history,
        "series": [[round(t), round(y)] for t, y in rss[::every]],
        "samples": len(rss),
    }


def _daemon_metrics(sampler: Sampler) -> dict[str, Any]:
    m = sampler.metrics
    end = m[-1][1] if m else {}
    outcomes = {key.split("outcome=")[1].rstrip("}"): int(v) for key, v in end.items()
                if key.startswith("adaptd_adaptations_total{")}
    requests = {key.partition("{")[2].rstrip("}"): int(v) for key, v in end.items()
                if key.startswith("adaptd_requests_total{") and v}
    backlog = [(t, _total(s, "adaptd_learning_backlog_records")) for t, s in m]
    queue = [(t, _total(s, "adaptd_ingest_queue_records")) for t, s in m]
    every = max(1, round(len(m) / 24))
    return {
        "scrapes": len(m), "scrape_failures": dict(sampler.scrape_failures),
        "end": {
            "drift_events": int(_total(end, "adaptd_drift_events_total")),
            "adaptations": outcomes,
            "learning_backlog_records": int(_total(end, "adaptd_learning_backlog_records")),
            "ingest_queue_records": int(_total(end, "adaptd_ingest_queue_records")),
            "records_ingested": int(_total(end, "adaptd_records_ingested_total")) if end else None,
            "records_late": int(_total(end, "adaptd_records_late_total")) if end else None,
            "commit_failures": int(_total(end, "adaptd_store_commit_failures_total")),
            "nonfinite_outputs": int(_total(end, "adaptd_model_nonfinite_outputs_total")),
            "series_warm": int(_total(end, "adaptd_series_warm")),
            "requests": requests,
        },
        "max": {"learning_backlog_records": int(max((v for _, v in backlog), default=0)),
                "ingest_queue_records": int(max((v for _, v in queue), default=0))},
        # t, backlog, queue, drift events, adaptations (all outcomes) — a compact time series
        "series": [[round(t), int(_total(s, "adaptd_learning_backlog_records")),
                    int(_total(s, "adaptd_ingest_queue_records")), int(_total(s, "adaptd_drift_events_total")),
                    int(_total(s, "adaptd_adaptations_total"))] for t, s in m[::every]],
    }


# -- output --------------------------------------------------------------------------------------
def _ms(p: dict[str, Any]) -> str:
    if not p["n"]:
        return "-"
    return f"p50 {p['p50']:.1f} / p99 {p['p99']:.1f} / p99.9 {p['p99_9']:.1f} ms (n={p['n']:,})"


def render(r: dict[str, Any]) -> str:
    c, mem, dm, cpu, setup = r["config"], r["memory"], r["daemon_metrics"], r["cpu"], r["setup"]
    storm = f", a third changing at step {setup['storm_at_step']}" if setup["storm_at_step"] else ""
    lines = [f"{PROG}: {c['clients']} clients, {c['series']} series, {c['seconds']:g}s on {c['store']}, "
             f"{c['cpus']} CPUs",
             f"setup: {r['setup']['records']:,} records ({r['setup']['steps_per_series']} steps per series{storm}"
             f") learnt in {r['setup']['learnt_s']:.1f}s: {r['setup']['drift_events']} drift events, "
             f"{r['setup']['adaptations']} adaptations; initializer {setup.get('initializer')}",
             f"throughput: {r['throughput']['records_per_s']:,.0f} records/s, "
             f"{r['throughput']['forecasts_per_s']:,.0f} forecasts/s over {r['elapsed_s']:.0f}s"]
    for name, p in r["phases"].items():
        target = (f" (offered {p['target_records_per_s']:,.0f} and {p['target_forecasts_per_s']:,.0f})"
                  if p["target_records_per_s"] else " (unpaced)")
        lines.append(f"{name} phase ({p['seconds']:.0f}s): {p['records_per_s']:,.0f} records/s acked, "
                     f"{p['forecasts_per_s']:,.0f} forecasts/s{target}")
        lines.append(f"  ingest ack   {_ms(p['ingest_ms'])}")
        if p["ingest_refused_ms"]["n"]:
            lines.append(f"  overloaded   {_ms(p['ingest_refused_ms'])}")
        lines.append(f"  forecast     {_ms(p['forecast_ms'])}")
        lines.append(f"  answered by  {', '.join(f'{k} {n:,}' for k, n in p['forecast_models'].items()) or '-'}")
        lines.append(f"  errors       {', '.join(f'{k} {n:,}' for k, n in p['errors'].items()) or 'none'}")
    lines.append(f"failures (anything but overloaded): "
                 f"{', '.join(f'{k} {n:,}' for k, n in r['failures'].items()) or 'none'}")
    for code, message in r["error_examples"].items():
        lines.append(f"  e.g. {code}: {message}")
    end = dm["end"]
    lines.append(f"drift storms: {len(r['storms'])} ({', '.join(str(s['t']) + 's' for s in r['storms']) or '-'}), "
                 f"a third of the series each; daemon: {end['drift_events']:,} drift events, adaptations "
                 f"{', '.join(f'{k} {v:,}' for k, v in end['adaptations'].items()) or '-'}")
    lines.append(f"learning backlog: max {dm['max']['learning_backlog_records']:,}, at the end "
                 f"{end['learning_backlog_records']:,} records; ingest queue: max "
                 f"{dm['max']['ingest_queue_records']:,}, at the end {end['ingest_queue_records']:,}")
    lines.append("  t(s)  backlog  queue  drifts  adaptations")
    lines += [f"  {t:4d} {b:8,d} {q:6,d} {d:7,d} {a:12,d}" for t, b, q, d, a in dm["series"]]
    lines.append(f"RSS (MB) every ~{max(1, round(mem['samples'] / 24))}s: "
                 + " ".join(f"{t}:{y}" for t, y in mem["series"]))
    lines.append(f"RSS: {mem['start_mb']} MB at start, {mem['warmup_end_mb']} after warm-up "
                 f"({mem['slope_window_s'][0]:.0f}s), {mem['steady_end_mb']} at the end of the steady phase "
                 f"(anonymous {mem['anon_warmup_end_mb']} -> {mem['anon_steady_end_mb']}), "
                 f"peak {mem['peak_mb']}, {mem['end_mb']} at the end")
    slope, anon, error = mem["slope_mb_per_min"], mem["anon_slope_mb_per_min"], mem["slope_stderr_mb_per_min"]
    span = mem["window_min_max_mb"]
    lines.append(f"memory slope {mem['slope_window_s'][0]:.0f}-{mem['slope_window_s'][1]:.0f}s: "
                 f"{'-' if slope is None else f'{slope:+.2f} ± {2 * error:.2f}'} MB/min RSS (2 s.e.; "
                 f"{'-' if anon is None else f'{anon:+.2f}'} anonymous; RSS {span[0] if span else '-'}.."
                 f"{span[1] if span else '-'} MB in the window), expected by design "
                 f"{mem['expected_mb_per_min']:+.2f}; limit on the rest {mem['limit_mb_per_min']:g} MB/min: "
                 f"{mem['verdict']}")
    if mem["expected_mb_per_min"]:
        lines.append(f"  expected: the per-series history buffers were still filling "
                     f"({mem['history_steps_per_series']} of {mem['history_capacity']} steps per series; "
                     f"{HISTORY_BYTES_PER_OBSERVATION} bytes per observation until full)")
    run_cpu = cpu["run"]
    lines.append(f"CPU (cores of {cpu['cpus']}): daemon {run_cpu['daemon']}, this bench's client threads "
                 f"{run_cpu['bench_clients']}, other processes {run_cpu['other_processes']} (machine busy "
                 f"{run_cpu['machine_busy']}); daemon/clients steady "
                 f"{cpu[STEADY]['daemon']}/{cpu[STEADY]['bench_clients']}"
                 + (f", overload {cpu[OVERLOAD]['daemon']}/{cpu[OVERLOAD]['bench_clients']}"
                    if OVERLOAD in r["phases"] else "")
                 + ". Everything shares the machine: client-side times include waiting for a CPU (and, "
                 "in the daemon, for the GIL)")
    if (run_cpu["other_processes"] or 0) > 0.25:
        server = " (the PostgreSQL server among them)" if c["store"] == "postgresql" else ""
        lines.append(f"  WARNING: the machine was not idle: other processes{server} used {run_cpu['other_processes']} "
                     "cores during the run, so the daemon's throughput and times here are worse than its own")
    cons = r["consistency"]
    lines.append(f"acknowledged {cons['acked_by_clients']:,} records, daemon committed "
                 f"{cons['committed_by_daemon']}, late {cons['late_records']}")
    d = r["daemon"]
    lines.append(f"daemon: exit {d['exit_code']} after SIGTERM in {d['shutdown_s']:.1f}s"
                 f"{' (DIED during the run)' if d['died_during_run'] else ''}; log: {d['log']['lines']} lines, "
                 f"{d['log']['by_level'] or 'no warnings'}")
    lines += [f"  {line}" for line in d["log"]["first"]]
    lines.append("verdicts: " + ", ".join(f"{k} {v}" for k, v in r["verdicts"].items()))
    lines.append(f"reproduce: {r['reproduce']}")
    return "\n".join(lines)



def main(args: argparse.Namespace) -> int:
    if args.clients < 1 or args.series < 1 or args.rate <= 0 or args.batch < 1 or args.seconds <= 0 \
            or not 0 <= args.overload_fraction < 1 or args.overload_batch < 1 or args.preload < 0 \
            or args.forecast_ratio < 0:
        print(f"{PROG}: --clients, --series, --batch, --overload-batch and --seconds must be positive, --rate > 0, "
              "--overload-fraction in [0, 1)", file=sys.stderr)
        return 2
    print(f"{PROG}: {args.clients} clients, {args.series} series, {args.seconds:g}s "
          f"(overload phase: last {args.overload_fraction:.0%})", file=sys.stderr, flush=True)
    report = soak(args)
    print(json.dumps(report) if args.json else render(report))
    return 0 if report["ok"] else 1
