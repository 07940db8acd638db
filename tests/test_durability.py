"""Crash durability: kill -9 at random moments while clients ingest, twenty times over.

Whatever the daemon acknowledged must be in the store with its value after the crash, and
a series that received nothing new must forecast exactly as before (its model restored from
the last checkpoint, not relearnt differently). On SQLite and on a real PostgreSQL cluster.
"""

from __future__ import annotations

import random
import shutil
import threading
import time
from typing import Any

import pytest

from adaptd.client import ClientError
from adaptd.store import Store

from daemon_harness import DaemonProcess, hourly, short_tempdir, write_config

pytestmark = [pytest.mark.integration, pytest.mark.slow]

T0 = 1_700_000_000.0
H = 3600.0
CRASHES = 20
WRITERS = 3
BATCH = 50
# A small online model (fast to start and learn) with checkpoints every second, so crashes
# land before, during and after checkpoints.
SECTIONS: dict[str, dict[str, Any]] = {
    "model": {"max_horizon": 6, "window": 16, "patch": 4, "rls_lags": 8, "hidden": 8},
    "adapt": {"window": 32, "validation": 4},
    "scheduler": {"checkpoint_interval": 1.0},
    "server": {"forecast_wait": 30.0},
}


class Writer(threading.Thread):
    """Ingests batches of one series until the daemon goes away; remembers what was acked."""

    def __init__(self, daemon: DaemonProcess, name: str, start_index: int, seed: int):
        super().__init__(daemon=True)
        self.d, self.series, self.next = daemon, name, start_index
        self.acked: dict[float, float] = {}
        self.rng = random.Random(seed)

    def run(self) -> None:
        try:
            with self.d.client(timeout=30) as c:
                while True:
                    records = [{"series": self.series, "ts": T0 + (self.next + i) * H,
                                "value": round(self.rng.uniform(-100, 100), 6)} for i in range(BATCH)]
                    answer = c.request({"op": "ingest", "records": records})
                    if not answer.get("ok"):
                        return
                    assert answer["accepted"] == BATCH, answer
                    self.acked.update((r["ts"], r["value"]) for r in records)
                    self.next += BATCH
        except (ClientError, OSError):
            return   # the daemon died: the request in flight was not acknowledged


def stored(url: str, names: list[str]) -> dict[str, dict[float, float]]:
    store = Store.open(url)
    try:
        return {name: dict(store.history(name)) for name in names}
    finally:
        store.close()


def crash_cycles(url: str) -> None:
    directory = short_tempdir()
    d = DaemonProcess(write_config(directory, store_url=url, naive=False, sections=SECTIONS))
    rng = random.Random(7)
    names = [f"crash-{k}" for k in range(WRITERS)]
    acked: dict[str, dict[float, float]] = {name: {} for name in names}
    written = {name: 0 for name in names}
    quiet = [10 + (i % 24) * 0.5 for i in range(60)]
    try:
        d.start(timeout=60)
        d.ingest(hourly("quiet", 60, values=quiet))
        d.wait_learnt()   # the restart promise is about what the models learnt
        expected = d.forecast("quiet", 6)
        assert expected["model"]["kind"] == "online", expected
        time.sleep(2.5)   # at least one checkpoint holds the quiet series' model
        for cycle in range(CRASHES):
            writers = [Writer(d, name, written[name], seed=cycle * 10 + k) for k, name in enumerate(names)]
            for w in writers:
                w.start()
            time.sleep(rng.uniform(0.05, 2.0))
            d.kill()
            for w in writers:
                w.join(10)
                acked[w.series].update(w.acked)
                written[w.series] = w.next
            d.start(timeout=60)
            # The quiet series got nothing new: restored from its checkpoint, it answers as before.
            after = d.forecast("quiet", 6)
            assert after["points"] == expected["points"] and after["origin"] == expected["origin"], (cycle, after)
            counts = d.series()
            for name in names:
                assert counts.get(name, {}).get("observations", 0) >= len(acked[name]), (cycle, name)
        rc, log = d.stop()
        assert rc == 0, log
        found = stored(url, names)
        for name in names:
            missing = {ts: v for ts, v in acked[name].items() if found[name].get(ts) != v}
            assert not missing, f"{len(missing)} acknowledged records of {name} lost or changed"
            assert len(acked[name]) > 0
    finally:
        d.kill()
        shutil.rmtree(directory, ignore_errors=True)


def test_kill_9_never_loses_an_acknowledged_record_on_sqlite() -> None:
    directory = short_tempdir()
    try:
        crash_cycles(f"sqlite:///{directory}/crash.db")
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.mark.postgres
def test_kill_9_never_loses_an_acknowledged_record_on_postgresql(fresh_postgres_url: str) -> None:
    crash_cycles(fresh_postgres_url)
