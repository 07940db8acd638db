"""A database that is not up yet at start-up: the daemon waits for it (bounded), says so in the
log and to systemd, and still fails at once on what waiting cannot fix."""

from __future__ import annotations

import re
import shutil
import signal
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
import sqlalchemy as sa

from adaptd.store import SCHEMA_VERSION, Store, StoreError, StoreUnreachable

from daemon_harness import DaemonProcess, free_port, hourly, short_tempdir, write_config
from test_sdnotify import Supervisor

PASSWORD = "s3cret-Pw"
ATTEMPT_LINE = re.compile(r"store unreachable \(attempt (\d+)\)")


def refused_url() -> str:
    """A PostgreSQL URL (with a password) at a port where nothing listens."""
    pytest.importorskip("psycopg")
    return f"postgresql+psycopg://postgres:{PASSWORD}@127.0.0.1:{free_port()}/adaptd"


@pytest.fixture
def workdir() -> Iterator[Path]:
    directory = short_tempdir()
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def wait_for_log(d: DaemonProcess, pattern: re.Pattern[str], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not pattern.search(d.stderr):
        assert d.running, f"the daemon exited ({d.proc.returncode}):\n{d.stderr}"  # type: ignore[union-attr]
        assert time.monotonic() < deadline, f"no {pattern.pattern!r} in the log:\n{d.stderr}"
        time.sleep(0.05)


# -- which failures are worth waiting for ---------------------------------------------------

def test_a_database_that_does_not_answer_is_unreachable() -> None:
    with pytest.raises(StoreUnreachable, match=r"cannot open store postgresql\+psycopg://postgres:\*\*\*@"):
        Store.open(refused_url())


def test_what_waiting_cannot_fix_is_not_unreachable(tmp_path: Path) -> None:
    newer = f"sqlite:///{tmp_path}/newer.db"
    Store.open(newer).close()
    engine = sa.create_engine(newer)
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO schema_version VALUES (:v, 0)"), {"v": SCHEMA_VERSION + 1})
    engine.dispose()
    for url, reason in [(newer, "newer than this adaptd"),
                        ("mysql+nosuchdriver://a@b/c", "no driver"),
                        ("oracle://a@b/c", "store.url")]:
        with pytest.raises(StoreError, match=reason) as info:
            Store.open(url)
        assert not isinstance(info.value, StoreUnreachable), info.value


@pytest.mark.postgres
def test_a_login_the_server_refuses_is_not_unreachable(postgres_url: str) -> None:
    server = postgres_url.rsplit("/", 1)[0]
    for url, reason in [(server.replace("//postgres@", "//nobody@") + "/adaptd_test", 'role "nobody" does not exist'),
                        (server + "/no_such_database", 'database "no_such_database" does not exist')]:
        with pytest.raises(StoreError, match=reason) as info:
            Store.open(url)
        assert not isinstance(info.value, StoreUnreachable), info.value


# -- the daemon -----------------------------------------------------------------------------

def store_daemon(workdir: Path, url: str, connect_timeout: float, env: dict[str, str] | None = None,
                 **sections: Any) -> DaemonProcess:
    return DaemonProcess(write_config(workdir, url, sections={"store": {"connect_timeout": connect_timeout},
                                                               **sections}), env)


@pytest.mark.integration
@pytest.mark.postgres
def test_a_daemon_started_before_postgresql_waits_then_serves(workdir: Path, postgres_not_started: Any) -> None:
    port = free_port()
    url = f"postgresql+psycopg://postgres:{PASSWORD}@127.0.0.1:{port}/postgres"   # trust auth: any password
    supervisor = Supervisor(str(workdir / "notify"), str(workdir / "notify"))
    d = store_daemon(workdir, url, 120, env={"NOTIFY_SOCKET": supervisor.address, "WATCHDOG_USEC": "2000000"})
    try:
        d.start(wait=False)
        wait_for_log(d, re.compile(r"store unreachable \(attempt 2\)"))   # waiting, not exited
        assert not d.socket_path.exists()
        proc = postgres_not_started.start_on(port)
        assert proc.returncode == 0, proc.stderr
        d.wait_ready(timeout=60)
        assert d.ingest(hourly("late-db", 5))["accepted"] == 5
        assert d.forecast("late-db", 1)["points"][0]["value"] == 4.5
        assert d.request({"op": "stats"})["store"]["dialect"] == "postgresql"

        got = supervisor.receive_until(lambda m: "READY=1" in m.split("\n"), timeout=30)
        before_ready = [m for _, m in got[:-1]]
        assert any(m.startswith("STATUS=waiting for the store postgresql+psycopg://postgres:***@") for m in
                   before_ready), got
        assert "WATCHDOG=1" not in before_ready   # systemd arms the watchdog at READY=1, not before
        assert supervisor.receive_until(lambda m: m == "WATCHDOG=1", timeout=10)

        rc, log = d.stop()
        assert rc == 0, log
        attempts = [int(n) for n in ATTEMPT_LINE.findall(log)]
        assert attempts == list(range(1, len(attempts) + 1)), log   # one line per failed attempt
        assert "store reachable after" in log
        assert PASSWORD not in log
    finally:
        d.kill()
        supervisor.close()


@pytest.mark.integration
def test_a_database_that_stays_down_ends_startup_after_connect_timeout(workdir: Path) -> None:
    d = store_daemon(workdir, refused_url(), 3)
    d.start(wait=False)
    wait_for_log(d, ATTEMPT_LINE)
    noticed = time.monotonic()
    assert d.wait_exit(30) == 2
    assert time.monotonic() - noticed < 15, "connect_timeout is 3 s"
    log = d.stderr
    attempts = [int(n) for n in ATTEMPT_LINE.findall(log)]
    assert len(attempts) >= 2 and attempts == list(range(1, len(attempts) + 1)), log
    last = log.strip().splitlines()[-1]
    assert "ERROR" in last and "Connection refused" in last, last
    assert f"gave up after {len(attempts) + 1} attempts" in last and "[store] connect_timeout = 3" in last, last
    assert "postgres:***@127.0.0.1" in last and PASSWORD not in log
    assert "Traceback" not in log and not d.socket_path.exists()


@pytest.mark.integration
def test_sigterm_while_waiting_for_the_database_exits_promptly(workdir: Path) -> None:
    d = store_daemon(workdir, refused_url(), 600)
    d.start(wait=False)
    wait_for_log(d, ATTEMPT_LINE)
    started = time.monotonic()
    rc, log = d.stop(signal.SIGTERM, timeout=30)
    assert rc == 0, log
    assert time.monotonic() - started < 5, "SIGTERM waited for the database"
    assert "received SIGTERM" in log and "Traceback" not in log
    assert not d.socket_path.exists()


@pytest.mark.integration
@pytest.mark.postgres
def test_a_login_the_server_refuses_fails_startup_at_once(workdir: Path, postgres_url: str) -> None:
    url = postgres_url.replace("//postgres@", "//nobody@")
    d = store_daemon(workdir, url, 600)
    d.start(wait=False)
    assert d.wait_exit(60) == 2
    assert 'role "nobody" does not exist' in d.stderr, d.stderr
    assert not ATTEMPT_LINE.search(d.stderr), "retried an error that waiting cannot fix"
