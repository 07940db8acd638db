"""`adaptd bench latency`: forecast answer times over the socket while ingest runs.

A fresh daemon gets `--series` series with enough history for the online models, waits
until the models have learnt it, then for `--seconds` one client ingests a new observation
of every series every `--interval` seconds (a live feed; a level shift is injected into a
tenth of them halfway, so adaptations run too) while `--clients` clients ask forecasts of
random series back to back. Reports answer-time percentiles of the forecasts (client-side, request sent
to answer read), which model answered, and the daemon's own counters.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import random
import statistics
import threading
import time

from ..client import Client
from .harness import ScratchDaemon

STEP = 3600.0
T0 = 1_600_000_000.0


def _series_value(k: int, t: int, shifted: bool) -> float:
    base = 10.0 + (k % 7) + 3.0 * ((t % 24) / 24.0)
    return base + (25.0 if shifted and k % 10 == 0 else 0.0) + random.random() * 0.3


def _ingest_round(client: Client, n_series: int, t: int, shifted: bool) -> None:
    for start in range(0, n_series, 1000):
        records = [{"series": f"s{k}", "ts": T0 + t * STEP, "value": _series_value(k, t, shifted)}
                   for k in range(start, min(n_series, start + 1000))]
        answer = client.request({"op": "ingest", "records": records})
        if not answer.get("ok"):
            raise SystemExit(f"ingest failed: {answer}")


def _asker(socket: str, n_series: int, seconds: float, seed: int, out: "mp.Queue[tuple[list[float], dict[str, int]]]") -> None:
    rng = random.Random(seed)
    times: list[float] = []
    kinds: dict[str, int] = {}
    with Client(socket) as client:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            line = json.dumps({"op": "forecast", "series": f"s{rng.randrange(n_series)}", "horizon": 24}).encode() + b"\n"
            sent = time.perf_counter()
            client.send_raw(line)
            answer = client.read_response()
            times.append(time.perf_counter() - sent)
            kind = answer["model"]["kind"] if answer.get("ok") else answer["error"]["code"]
            kinds[kind] = kinds.get(kind, 0) + 1
    out.put((times, kinds))


def _wait_for_learning(client: Client, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while client.request({"op": "stats"})["learning_backlog_records"] and time.monotonic() < deadline:
        time.sleep(0.5)


def main(args: argparse.Namespace) -> int:
    history = 70
    print(f"adaptd bench latency: {args.series} series, {args.clients} forecast clients, {args.seconds}s of "
          f"ingest (one observation per series every {args.interval}s)", flush=True)
    with ScratchDaemon({"metrics": {"listen": ""}}) as daemon, Client(daemon.socket, timeout=600) as feeder:
        setup = time.perf_counter()
        for t in range(history):
            _ingest_round(feeder, args.series, t, shifted=False)
        _wait_for_learning(feeder, 3600)
        print(f"setup: {args.series * history} records ingested and learnt in {time.perf_counter() - setup:.0f}s",
              flush=True)
        stop = threading.Event()
        rounds = [0]

        def feed() -> None:   # a live feed: every series gets one new observation per interval
            t = history
            started = time.monotonic()
            while not stop.is_set():
                _ingest_round(feeder, args.series, t, shifted=time.monotonic() - started > args.seconds / 2)
                t += 1
                rounds[0] += 1
                stop.wait(max(0.0, started + (t - history) * args.interval - time.monotonic()))

        feeding = threading.Thread(target=feed)
        feeding.start()
        ctx = mp.get_context("fork")
        out: mp.Queue[tuple[list[float], dict[str, int]]] = ctx.Queue()
        askers = [ctx.Process(target=_asker, args=(str(daemon.socket), args.series, args.seconds, k, out))
                  for k in range(args.clients)]
        for p in askers:
            p.start()
        results = [out.get(timeout=args.seconds + 600) for _ in askers]
        for p in askers:
            p.join()
        stop.set()
        feeding.join()
        with Client(daemon.socket) as c:
            stats = c.request({"op": "stats"})
    times = sorted(x for r in results for x in r[0])
    kinds: dict[str, int] = {}
    for _, k in results:
        for name, n in k.items():
            kinds[name] = kinds.get(name, 0) + n
    q = statistics.quantiles(times, n=1000)
    engine = stats.get("engine", {})
    print(f"forecasts answered: {len(times)} ({len(times) / args.seconds:,.0f}/s) by {kinds}")
    print(f"answer time: p50 {q[499] * 1e3:.2f} ms, p99 {q[989] * 1e3:.2f} ms, p99.9 {q[998] * 1e3:.2f} ms "
          f"(target p99 < 1 ms)")
    print(f"ingest meanwhile: {rounds[0]} rounds of {args.series} records; drifts {engine.get('drifts')}, "
          f"adapted {engine.get('adapted')}, kept {engine.get('kept')}, "
          f"learning backlog at the end {stats.get('learning_backlog_records')}")
    print(f"reproduce: adaptd bench latency --series {args.series} --clients {args.clients} "
          f"--seconds {args.seconds} --interval {args.interval}")
    return 0
