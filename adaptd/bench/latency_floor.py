"""The floor under `adaptd bench latency --floor`: the same clients against a stand-in.

The stand-in is a process that does nothing but answer: an asyncio Unix-socket server that
decodes each request and answers a forecast with that series' answer encoded once, at its first
ask (what an answering process that kept each learnt forecast ready as bytes would send). It
stores nothing and learns nothing. It is measured alone, with the bench's ingest feed decoded
in it, and with that feed and a process keeping the other core busy (what a learner in its own
process would do). Its p99 is what the machine and these clients leave for the daemon: the
clients, the kernel and the socket are the same.
"""

from __future__ import annotations

import asyncio
import gc
import json
import multiprocessing as mp
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HORIZON = 24


def _stand_in(path: str) -> None:
    """Serve until killed (a child process)."""
    _like_the_daemon()
    points = [{"ts": 1.6e9 + 3600.0 * h, "value": 0.1234 * h, "lo": -1.5, "hi": 1.5} for h in range(1, HORIZON + 1)]
    model = {"kind": "online", "version": 1, "init": "meta", "last_drift": None, "adaptations": 0}
    ready: dict[str, bytes] = {}   # each series' answer, encoded once

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := await reader.readline():
            request = json.loads(line)
            op = request.get("op")
            if op == "forecast":
                series = request["series"]
                answer = ready.get(series)
                if answer is None:
                    answer = ready[series] = json.dumps(
                        {"ok": True, "series": series, "origin": 1.6e9, "step": 3600.0,
                         "points": points[:request["horizon"]], "model": model}).encode() + b"\n"
                writer.write(answer)
            else:
                reply = ({"ok": True, "accepted": len(request["records"]), "rejected": []} if op == "ingest"
                         else {"ok": True, "learning_backlog_records": 0, "engine": {}})
                writer.write(json.dumps(reply).encode() + b"\n")
            await writer.drain()

    async def serve() -> None:
        server = await asyncio.start_unix_server(handle, path)
        async with server:
            await server.serve_forever()

    asyncio.run(serve())


def _like_the_daemon() -> None:
    """What the daemon does for its own answers (daemon.py): a short GIL switch interval, the
    start-up heap out of the collector's passes."""
    import sys

    from ..daemon import GIL_SWITCH_INTERVAL
    sys.setswitchinterval(GIL_SWITCH_INTERVAL)
    gc.freeze()


def _busy_core() -> None:
    """Keep exactly one core busy until killed (a learner in its own process). Plain Python: a
    BLAS loop would spread over every core its thread pool was started with."""
    x = 1.0
    while True:
        x = (x * 1.000001 + 1.0) % 1e6


SCENARIOS = ("alone", "with the ingest feed", "with the feed and a busy core")
Answers = list[tuple[float, float, str]]   # as the latency bench's


def measure(n_series: int, clients: int, seconds: float, rate: float, interval: float) -> dict[str, Answers]:
    """Each scenario's answers, asked and fed exactly as the latency bench does."""
    ctx = mp.get_context("fork")
    results = {}
    for scenario in SCENARIOS:
        with tempfile.TemporaryDirectory(prefix="adfloor") as directory:
            path = str(Path(directory) / "floor.sock")
            helpers = [ctx.Process(target=_stand_in, args=(path,), daemon=True)]
            if scenario.endswith("busy core"):
                helpers.append(ctx.Process(target=_busy_core, daemon=True))
            for p in helpers:
                p.start()
            try:
                _wait_until_it_answers(path, helpers[0])
                feed = scenario != "alone"
                results[scenario] = _ask(ctx, path, feed, n_series, clients, seconds, rate, interval)
                if not all(p.is_alive() for p in helpers):
                    raise SystemExit(f"adaptd bench latency --floor: a helper process died during '{scenario}'")
            finally:
                for p in helpers:
                    p.kill()
                    p.join()
    return results


def _wait_until_it_answers(path: str, server: Any) -> None:
    from ..client import Client, ClientError

    deadline = time.monotonic() + 30
    while True:
        try:
            with Client(path, timeout=5) as client:
                client.request({"op": "ping"})
            return
        except (ClientError, OSError):
            if time.monotonic() > deadline or not server.is_alive():
                raise SystemExit("adaptd bench latency --floor: the stand-in server did not start") from None
            time.sleep(0.02)


def _ask(ctx: Any, path: str, feed: bool, n_series: int, clients: int, seconds: float, rate: float,
         interval: float) -> Answers:
    from ..client import Client
    from .latency import SETUP_ROUNDS, _asker, _collect, _ingest_round

    stop = threading.Event()
    failed: list[BaseException] = []

    def feeder() -> None:   # one observation of every series per interval, as the bench's feed
        try:
            with Client(path, timeout=60) as client:
                t, started = SETUP_ROUNDS, time.monotonic()   # (every series has started by then)
                while not stop.is_set():
                    _ingest_round(client, n_series, t)
                    t += 1
                    stop.wait(max(0.0, started + (t - SETUP_ROUNDS) * interval - time.monotonic()))
        except BaseException as exc:   # the scenario would be mislabelled: say so after the clients
            failed.append(exc)

    feeding = threading.Thread(target=feeder, daemon=True)
    if feed:
        feeding.start()
    out = ctx.Queue()
    askers = [ctx.Process(target=_asker, args=(path, n_series, seconds, rate / clients, k, out))
              for k in range(clients)]
    for p in askers:
        p.start()
    try:
        return _collect(askers, out, seconds + 120)
    finally:
        for p in askers:
            p.join()
        stop.set()
        if feed:
            feeding.join()
        if failed:
            raise SystemExit(f"adaptd bench latency --floor: the ingest feed failed: {failed[0]!r}")
