"""Shared fixtures: a throwaway PostgreSQL cluster, a store on each backend, and two adaptd cluster
members on PostgreSQL that the client commands' tests share (`pair`).

`postgres_url` starts a real PostgreSQL (initdb + pg_ctl) once per session, listening on a
Unix socket in its own temp dir and on 127.0.0.1 at a free port, trust auth, fsync off.
Without initdb the PostgreSQL tests are skipped, unless $CI is set: CI must run them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from adaptd.store import Store

from daemon_harness import ClusterPair

# Debian/Ubuntu keep the server binaries off PATH; newest version first.
PG_BIN_DIRS = tuple(sorted((str(p) for p in Path("/usr/lib/postgresql").glob("*/bin")),
                           key=lambda d: int(d.split("/")[-2]) if d.split("/")[-2].isdigit() else 0,
                           reverse=True)) or ("/usr/lib/postgresql/15/bin",)
PG_DATABASE = "adaptd_test"


def _find_pg_binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for directory in PG_BIN_DIRS:
        candidate = Path(directory) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def _unavailable(reason: str) -> None:
    """Skip locally; fail in CI, where the PostgreSQL tests must run."""
    if os.environ.get("CI"):
        pytest.fail(f"PostgreSQL tests must run in CI: {reason}", pytrace=False)
    pytest.skip(reason)


def _scratch_dir() -> str | None:
    """/dev/shm when usable (a RAM disk makes CREATE DATABASE several times faster), else $TMPDIR."""
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() and os.access(shm, os.W_OK | os.X_OK) else None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Cluster:
    def __init__(self, initdb: str, pg_ctl: str):
        self.initdb = initdb
        self.pg_ctl = pg_ctl
        self.as_root = os.geteuid() == 0
        self.root = Path(tempfile.mkdtemp(prefix="adaptd-pg-", dir=_scratch_dir()))
        self.data = self.root / "data"
        self.sockets = self.root / "sock"
        self.log = self.root / "postgres.log"
        self.port = 0
        self.started = False

    def _run(self, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        cmd = list(argv)
        if self.as_root:  # initdb and postgres refuse to run as root
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=self.root,
                              env={**os.environ, "LC_ALL": "C", "LANG": "C"})

    def _check(self, proc: subprocess.CompletedProcess[str], what: str) -> None:
        if proc.returncode != 0:
            log = self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""
            pytest.fail(f"{what} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}\n{log}", pytrace=False)

    def init(self) -> None:
        """initdb: a cluster that exists but does not run yet."""
        self.sockets.mkdir()
        if self.as_root:
            try:
                shutil.chown(self.root, "postgres", "postgres")
                shutil.chown(self.sockets, "postgres", "postgres")
            except LookupError:
                _unavailable("running as root but there is no 'postgres' OS user to run initdb as")
        self._check(self._run(self.initdb, "-D", str(self.data), "-U", "postgres", "-A", "trust",
                              "-E", "UTF8", "--no-locale", "--no-sync"), "initdb")

    def start_on(self, port: int) -> subprocess.CompletedProcess[str]:
        """pg_ctl start on 127.0.0.1:`port`, waiting until it accepts connections."""
        self.port = port
        options = (f"-c listen_addresses=127.0.0.1 -c port={port} "
                   f"-c unix_socket_directories={self.sockets} -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
        proc = self._run(self.pg_ctl, "start", "-w", "-t", "60", "-D", str(self.data),
                         "-l", str(self.log), "-o", options)
        self.started = self.started or proc.returncode == 0
        return proc

    def start(self) -> None:
        self.init()
        for attempt in range(3):
            proc = self.start_on(_free_port())
            if proc.returncode == 0:
                return
            if attempt == 2:  # the port may have been taken between probe and start; retry
                self._check(proc, "pg_ctl start")

    def stop(self) -> None:
        if self.started:
            self._run(self.pg_ctl, "stop", "-m", "immediate", "-D", str(self.data), timeout=60)
        shutil.rmtree(self.root, ignore_errors=True)


def _new_cluster() -> _Cluster:
    """A cluster object (nothing on disk yet), or skip (fail in CI) without PostgreSQL."""
    initdb, pg_ctl = _find_pg_binary("initdb"), _find_pg_binary("pg_ctl")
    if initdb is None or pg_ctl is None:
        _unavailable("PostgreSQL server binaries (initdb, pg_ctl) not found on PATH or in "
                     + ", ".join(PG_BIN_DIRS))
    try:
        import psycopg  # noqa: F401
    except ImportError:
        _unavailable("psycopg is not installed (pip install 'adaptd[postgres]')")
    return _Cluster(initdb, pg_ctl)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """SQLAlchemy URL of an empty database `adaptd_test` on a throwaway PostgreSQL cluster."""
    import sqlalchemy as sa

    cluster = _new_cluster()
    try:
        cluster.start()
        server = f"postgresql+psycopg://postgres@127.0.0.1:{cluster.port}"
        admin = sa.create_engine(f"{server}/postgres", isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{PG_DATABASE}"'))
        admin.dispose()
        yield f"{server}/{PG_DATABASE}"
    finally:
        cluster.stop()


@pytest.fixture
def postgres_not_started() -> Iterator[_Cluster]:
    """A PostgreSQL cluster of its own, initialised but not running: `start_on(port)` starts it
    (trust auth; the database `postgres` exists). Stopped and removed after the test."""
    cluster = _new_cluster()
    try:
        cluster.init()
        yield cluster
    finally:
        cluster.stop()


@contextlib.contextmanager
def _new_database(postgres_url: str) -> Iterator[str]:
    """A new, empty database on the session's PostgreSQL, dropped on exit."""
    import sqlalchemy as sa

    name = f"adaptd_{uuid.uuid4().hex[:12]}"
    server = postgres_url.rsplit("/", 1)[0]
    admin = sa.create_engine(f"{server}/postgres", isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}" STRATEGY FILE_COPY'))
    try:
        yield f"{server}/{name}"
    finally:
        with contextlib.suppress(Exception), admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def fresh_postgres_url(postgres_url: str) -> Iterator[str]:
    """A new, empty database on the session cluster for one test; dropped afterwards."""
    with _new_database(postgres_url) as url:
        yield url


@pytest.fixture(scope="session")
def shared_pair(postgres_url: str) -> Iterator[ClusterPair]:
    """Two cluster members (`[cluster] members = 2`) on a database of their own, started once for
    the session: the client commands' tests (test_route.py, test_upload.py, test_cluster.py) share
    them, each with series names of its own. Use it through `pair`."""
    with _new_database(postgres_url) as url, ClusterPair(url) as started:
        yield started


@pytest.fixture
def pair(shared_pair: ClusterPair) -> ClusterPair:
    """The session's two members, both running (one a test killed is started again first)."""
    shared_pair.ensure_running()
    return shared_pair


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database for each test, on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    return request.getfixturevalue("fresh_postgres_url")


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    """An open `adaptd.store.Store` on `store_url`, closed after the test."""
    opened = Store.open(store_url)
    try:
        yield opened
    finally:
        opened.close()

