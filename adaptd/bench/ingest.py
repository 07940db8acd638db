"""`adaptd bench ingest`: records/s through the socket vs raw sqlite3 executemany, same run.

N client processes each send pre-encoded batches and wait for every ack (an ack means the
records are committed), against a fresh daemon on SQLite. The baseline inserts the same
number of rows into the same table with the same journal mode and synchronous setting,
straight through `sqlite3.executemany`: once committing every batch (what each client asks
for) and once committing every group-commit-sized chunk (the best SQLite can do).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

from ..client import Client
from .harness import ScratchDaemon

SERIES_PER_CLIENT = 50
GROUP = 50_000


def _payloads(client: int, batches: int, batch: int) -> list[bytes]:
    rng = random.Random(client)
    lines = []
    t0 = 1_700_000_000
    for b in range(batches):
        records = [{"series": f"c{client}-s{i % SERIES_PER_CLIENT}",
                    "ts": t0 + 3600 * ((b * batch + i) // SERIES_PER_CLIENT),
                    "value": round(rng.gauss(100, 10), 3)} for i in range(batch)]
        lines.append(json.dumps({"op": "ingest", "records": records}).encode() + b"\n")
    return lines


def _client(socket: str, client: int, batches: int, batch: int, start: "mp.synchronize.Barrier",
            out: "mp.Queue[tuple[int, float, list[float]]]") -> None:
    lines = _payloads(client, batches, batch)
    latencies = []
    with Client(socket, timeout=300) as c:
        start.wait()
        for line in lines:
            sent = time.perf_counter()
            c.send_raw(line)
            answer = c.read_response()
            latencies.append(time.perf_counter() - sent)
            if not answer.get("ok") or answer["accepted"] != batch:
                raise SystemExit(f"client {client}: unexpected answer {answer}")
        out.put((client, time.perf_counter(), latencies))


def socket_rate(clients: int, batches: int, batch: int, synchronous: str, engine: str) -> tuple[float, list[float]]:
    with ScratchDaemon({"store": {"sqlite_synchronous": synchronous}, "model": {"engine": engine}}) as daemon:
        ctx = mp.get_context("fork")
        start = ctx.Barrier(clients + 1)
        out: mp.Queue[tuple[int, float, list[float]]] = ctx.Queue()
        procs = [ctx.Process(target=_client, args=(str(daemon.socket), k, batches, batch, start, out))
                 for k in range(clients)]
        for p in procs:
            p.start()
        start.wait()
        began = time.perf_counter()
        results = [out.get(timeout=600) for _ in procs]
        for p in procs:
            p.join()
        if any(p.exitcode for p in procs):
            raise SystemExit("a benchmark client failed")
        wall = max(r[1] for r in results) - began
        latencies = [x for r in results for x in r[2]]
        return clients * batches * batch / wall, latencies


def sqlite_rate(total: int, commit_every: int, synchronous: str) -> float:
    rng = random.Random(0)
    rows = [(i % 400, 1_700_000_000 + 3600 * (i // 400), round(rng.gauss(100, 10), 3)) for i in range(total)]
    with tempfile.TemporaryDirectory(prefix="adraw") as tmp:
        db = sqlite3.connect(Path(tmp) / "raw.db")
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={synchronous.upper()}")
        db.execute("CREATE TABLE observations (series_id INTEGER NOT NULL, ts FLOAT NOT NULL, value FLOAT NOT NULL,"
                   " PRIMARY KEY (series_id, ts)) WITHOUT ROWID")
        began = time.perf_counter()
        for start in range(0, total, commit_every):
            db.executemany("INSERT INTO observations VALUES (?, ?, ?)", rows[start:start + commit_every])
            db.commit()
        elapsed = time.perf_counter() - began
        db.close()
    return total / elapsed


def main(args: argparse.Namespace) -> int:
    batches = max(1, args.records // (args.clients * args.batch))
    total = batches * args.clients * args.batch
    print(f"adaptd bench ingest: {args.clients} clients x {batches} batches x {args.batch} records "
          f"= {total} records, SQLite synchronous={args.synchronous}, {os.cpu_count()} CPUs", flush=True)
    raw_batch = sqlite_rate(total, args.batch, args.synchronous)
    raw_group = sqlite_rate(total, GROUP, args.synchronous)
    runs = {engine: socket_rate(args.clients, batches, args.batch, args.synchronous, engine)
            for engine in args.engines.split(",")}
    raw_best = max(raw_batch, raw_group)
    width = 52
    print(f"{'path':<{width}}{'records/s':>12}{'ratio':>8}{'ack p50':>10}{'ack p99':>10}")
    print(f"{'raw sqlite3 executemany, commit per batch':<{width}}{raw_batch:>12,.0f}{raw_batch / raw_best:>8.2f}")
    print(f"{'raw sqlite3 executemany, commit per ' + format(GROUP, ',') + ' rows':<{width}}"
          f"{raw_group:>12,.0f}{raw_group / raw_best:>8.2f}")
    for engine, (rate, latencies) in runs.items():
        q = statistics.quantiles(latencies, n=100)
        label = f"adaptd socket ingest, engine={engine} (ack = committed)"
        print(f"{label:<{width}}{rate:>12,.0f}{rate / raw_best:>8.2f}{q[49] * 1e3:>8.1f}ms{q[98] * 1e3:>8.1f}ms")
    print("ratio: to the best raw rate; target >= 0.50")
    print(f"reproduce: adaptd bench ingest --clients {args.clients} --batch {args.batch} "
          f"--records {args.records} --synchronous {args.synchronous} --engines {args.engines}")
    return 0
