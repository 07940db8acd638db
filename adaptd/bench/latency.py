"""`adaptd bench latency`: forecast answer times over the socket while ingest runs.

A fresh daemon gets `--series` series with enough history for the online models, waits
until the models have learnt it, then for `--seconds` one client ingests a new observation
of every series every `--interval` seconds (a live feed) while `--clients` clients ask
forecasts of random series. A tenth of the series change regime just before the clients start,
so drift detections and adaptations run while they ask: ADWIN looks for a change once every 32
of a series' observations, and the series' histories start at staggered times, so about 1/32
of the shifted series reach that check in each of the feed's first 32 rounds.

By default the clients ask back to back (closed loop: throughput, latency mostly queueing
behind the other clients); with `--rate` they ask at random (Poisson) times, that many a
second in all, and an answer's time counts from when its request was due, so a client that
fell behind is charged for it (no coordinated omission). Reports answer-time percentiles
(client-side), which model answered (`provisional`: from records not yet learnt), how late the
clients' processes woke to send (their own share of the tail on shared cores), and the
daemon's drift and adaptation counts while the clients asked.

With `--floor`, the same clients and feed first run against a stand-in process that only answers
ready bytes (latency_floor.py): what this machine and these clients leave for the daemon,
reported beside the daemon's own times.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import queue
import random
import shlex
import statistics
import threading
import time

from ..client import Client
from .harness import ScratchDaemon, parse_overrides

STEP = 3600.0
T0 = 1_600_000_000.0
HISTORY = 70         # rows every series has before the clients start (the models need a window)
ADWIN_CLOCK = 32     # river's ADWIN tests for a change once per this many updates
SHIFT_AHEAD = 8      # the shift comes this many rounds before the clients start: ADWIN needs a
                     # few observations on each side of a change before it can cut there
SETUP_ROUNDS = HISTORY + ADWIN_CLOCK
SHIFT_ROUND = SETUP_ROUNDS - SHIFT_AHEAD


def _series_value(k: int, t: int) -> float:
    """A daily ramp; a tenth of the series change regime at SHIFT_ROUND to another level and a
    12-hour cycle. (A level shift alone is not a change to the detectors: the normalisation
    absorbs it within a few steps, and the few huge errors only widen ADWIN's bound.)"""
    if t >= SHIFT_ROUND and k % 10 == 0:
        return 20.0 + (k % 7) + 6.0 * math.sin(2 * math.pi * t / 12) + random.random() * 0.3
    return 10.0 + (k % 7) + 3.0 * ((t % 24) / 24.0) + random.random() * 0.3


def _first_round(k: int) -> int:
    """Series start at staggered rounds so that they reach their detectors' checks in different
    rounds; by k // 10, so that the shifted series (k % 10 == 0) take every offset too."""
    return (k // 10) % ADWIN_CLOCK


def _ingest_round(client: Client, n_series: int, t: int) -> None:
    """Round t's observation of every series that has started."""
    ks = [k for k in range(n_series) if t >= _first_round(k)]
    for start in range(0, len(ks), 1000):
        records = [{"series": f"s{k}", "ts": T0 + t * STEP, "value": _series_value(k, t)}
                   for k in ks[start:start + 1000]]
        answer = client.request({"op": "ingest", "records": records})
        if not answer.get("ok"):
            raise SystemExit(f"ingest failed: {answer}")


def _answer_kind(answer: dict) -> str:
    if not answer.get("ok"):
        return answer["error"]["code"]
    model = answer["model"]
    return "provisional" if model.get("unlearnt") else model["kind"]


Answers = list[tuple[float, float, str]]   # (seconds, of which the client woke late, which model answered)


def _asker(socket: str, n_series: int, seconds: float, rate: float, seed: int, out: "mp.Queue[Answers]") -> None:
    """Ask forecasts for `seconds`: back to back (rate 0) or at Poisson times, `rate` a second."""
    rng = random.Random(seed)
    answers: Answers = []
    clock = time.perf_counter
    with Client(socket) as client:
        deadline = clock() + seconds
        due = free = clock()   # free: when the previous answer came back
        while True:
            line = json.dumps({"op": "forecast", "series": f"s{rng.randrange(n_series)}", "horizon": 24}).encode() + b"\n"
            due = due + rng.expovariate(rate) if rate > 0 else clock()
            if due >= deadline:
                break
            if rate > 0:
                time.sleep(max(0.0, due - clock()))
            sent = clock()
            client.send_raw(line)
            answer = client.read_response()
            # Late waking is the client's own; waiting for its previous answer is the daemon's.
            answers.append((clock() - due, sent - max(due, free), _answer_kind(answer)))
            free = clock()
    out.put(answers)


def _collect(askers: list[mp.process.BaseProcess], out: "mp.Queue[Answers]", timeout: float) -> Answers:
    """Every asker's answers; a client that died says so instead of leaving the bench hanging."""
    results: list[Answers] = []
    deadline = time.monotonic() + timeout
    while len(results) < len(askers):
        try:
            results.append(out.get(timeout=1.0))
        except queue.Empty:
            dead = [p for p in askers if p.exitcode not in (None, 0)]
            late = time.monotonic() > deadline
            if dead or late:
                for p in askers:
                    p.kill()
                if dead:
                    raise SystemExit(f"adaptd bench latency: {len(dead)} forecast client(s) failed "
                                     f"(exit codes {[p.exitcode for p in dead]}); see above") from None
                raise SystemExit(f"adaptd bench latency: the forecast clients did not report within {timeout:.0f}s")
    return [answer for answers in results for answer in answers]


def _seconds(answers: Answers) -> list[float]:
    return [seconds for seconds, _, _ in answers]


def _quantile(times: list[float], q: float) -> float:
    return statistics.quantiles(times, n=1000)[round(q * 1000) - 1] if len(times) > 1 else math.nan


def _percentiles(times: list[float]) -> str:
    if len(times) < 2:
        return "too few to rank"
    q = statistics.quantiles(times, n=1000)
    return f"p50 {q[499] * 1e3:.2f} ms, p99 {q[989] * 1e3:.2f} ms, p99.9 {q[998] * 1e3:.2f} ms"


def _wait_for_learning(client: Client, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while client.request({"op": "stats"})["learning_backlog_records"] and time.monotonic() < deadline:
        time.sleep(0.5)


def main(args: argparse.Namespace) -> int:
    if not 0 <= args.rate < math.inf:
        raise SystemExit("adaptd bench latency: --rate must be a finite number >= 0 (0: back to back)")
    if args.clients < 1 or args.series < 1:
        raise SystemExit("adaptd bench latency: --clients and --series must be at least 1")
    asking = f"{args.rate:g} forecasts/s at random times" if args.rate > 0 else "back to back"
    print(f"adaptd bench latency: {args.series} series, {args.clients} forecast clients asking {asking}, "
          f"{args.seconds}s of ingest (one observation per series every {args.interval}s)"
          + "".join(f", {item}" for item in args.overrides), flush=True)
    floor = {}
    if args.floor:
        from .latency_floor import measure
        floor = measure(args.series, args.clients, args.seconds, args.rate, args.interval)
        print("floor (a stand-in process that only answers, same clients and feed):")
        for scenario, answers in floor.items():
            late = (f"; clients waking late: {_percentiles([late for _, late, _ in answers])}"
                    if args.rate > 0 else "")
            print(f"  {scenario}: {len(answers)} answers, {_percentiles(_seconds(answers))}{late}", flush=True)
    try:
        daemon = ScratchDaemon(parse_overrides(args.overrides))
        daemon.start()
    except (ValueError, RuntimeError) as e:   # a bad --set (ConfigError is a ValueError), or no start
        raise SystemExit(f"adaptd bench latency: {e}") from None
    with daemon, Client(daemon.socket, timeout=600) as feeder:
        setup = time.perf_counter()
        for t in range(SETUP_ROUNDS):
            _ingest_round(feeder, args.series, t)
        _wait_for_learning(feeder, 3600)
        setup_records = sum(SETUP_ROUNDS - _first_round(k) for k in range(args.series))
        print(f"setup: {setup_records} records ingested and learnt in {time.perf_counter() - setup:.0f}s",
              flush=True)
        before = feeder.request({"op": "stats"}).get("engine", {})
        stop = threading.Event()
        rounds = [0]

        def feed() -> None:   # a live feed: every series gets one new observation per interval
            t = SETUP_ROUNDS
            started = time.monotonic()
            while not stop.is_set():
                _ingest_round(feeder, args.series, t)
                t += 1
                rounds[0] += 1
                stop.wait(max(0.0, started + (t - SETUP_ROUNDS) * args.interval - time.monotonic()))

        feeding = threading.Thread(target=feed)
        feeding.start()
        ctx = mp.get_context("fork")
        out: mp.Queue[Answers] = ctx.Queue()
        askers = [ctx.Process(target=_asker,
                              args=(str(daemon.socket), args.series, args.seconds, args.rate / args.clients, k, out))
                  for k in range(args.clients)]
        for p in askers:
            p.start()
        answers = _collect(askers, out, args.seconds + 600)
        for p in askers:
            p.join()
        stop.set()
        feeding.join()
        with Client(daemon.socket) as c:
            stats = c.request({"op": "stats"})
    by_kind: dict[str, list[float]] = {}
    for seconds, _late, kind in answers:
        by_kind.setdefault(kind, []).append(seconds)
    engine = stats.get("engine", {})
    during = {key: engine.get(key, 0) - before.get(key, 0) for key in ("drifts", "adapted", "kept", "failed")}
    # Started while the clients asked: a job is counted once applied, and applied at the next
    # learning step, so take out those pending at the start and add those pending at the end.
    adaptations = (during["adapted"] + during["kept"] + during["failed"]
                   - before.get("adapting", 0) + engine.get("adapting", 0))
    print(f"forecasts answered: {len(answers)} ({len(answers) / args.seconds:,.0f}/s) by "
          f"{ {kind: len(times) for kind, times in by_kind.items()} }")
    print(f"answer time: {_percentiles(_seconds(answers))} (target p99 < 1 ms)")
    if floor and args.rate > 0 and len(answers) > 1:   # (back to back, it would mostly compare queueing)
        closest = list(floor)[-1]   # the feed and a busy core: what the daemon's learning adds to answering
        print(f"  p99 over the floor's ({closest}): "
              f"{_quantile(_seconds(answers), 0.99) / _quantile(_seconds(floor[closest]), 0.99):.1f}x")
    for kind, times in sorted(by_kind.items()):
        print(f"  {kind}: {_percentiles(times)}")
    if args.rate > 0:   # the clients share the CPU: a request they send late counts against its answer
        print(f"  of that, clients waking late to send: {_percentiles([late for _, late, _ in answers])}")
    print(f"meanwhile: {rounds[0]} rounds of ingest ({args.series} records each), {during['drifts']} drifts "
          f"detected, {adaptations} adaptations ran (of those applied: {during['adapted']} replaced the model, "
          f"{during['kept']} kept the old one, {during['failed']} failed); "
          f"learning backlog at the end {stats.get('learning_backlog_records')}")
    if not adaptations:
        print("note: no adaptation ran during this measurement: the shifted series reach their detectors' "
              f"checks (every {ADWIN_CLOCK} observations) one round at a time; give the feed more rounds "
              "(--seconds / --interval) or more series")
    print(f"reproduce: adaptd bench latency --series {args.series} --clients {args.clients} "
          f"--seconds {args.seconds} --interval {args.interval}" + (f" --rate {args.rate:g}" if args.rate > 0 else "")
          + (" --floor" if args.floor else "") + "".join(f" --set {shlex.quote(item)}" for item in args.overrides))
    return 0
