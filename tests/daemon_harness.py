"""Run the real daemon (`python -m adaptd serve`) as a subprocess and talk to its Unix socket.

Imported by the integration tests as a plain module (`from daemon_harness import ...`): pytest's
default "prepend" import mode puts tests/ on sys.path for test modules in it.

Every daemon gets a short directory under /tmp (AF_UNIX paths must stay under ~100 bytes,
which pytest's tmp_path does not guarantee), a minimal config TOML there, and its stderr in a
file there (a pipe could fill up and block a chatty daemon).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Iterator, Mapping

from adaptd.client import Client, ClientError

START_TIMEOUT = 20.0
STOP_TIMEOUT = 20.0
# Variables of the environment the tests run in that would change what the daemon does.
SCRUBBED_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "ADAPTD_CONFIG", "LISTEN_FDS",
                "LISTEN_PID", "JOURNAL_STREAM")


def short_tempdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="ad", dir="/tmp"))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def _has_engine_setting() -> bool:
    from adaptd.config import ModelSettings

    return "engine" in {f.name for f in dataclasses.fields(ModelSettings)}


def write_config(directory: Path, store_url: str | None = None, metrics: bool = False,
                 sections: Mapping[str, Mapping[str, Any]] | None = None, name: str = "adaptd.toml",
                 socket_name: str = "adaptd.sock", naive: bool = True) -> Path:
    """A minimal config: store, socket and metrics, plus any `sections` overrides.

    `naive` pins `model.engine = "naive"` (where that setting exists): protocol and lifecycle
    tests then know exactly what a forecast must be (the last value, for a short series) and
    the daemon starts without loading torch. Pass naive=False to run the default engine.
    """
    data: dict[str, dict[str, Any]] = {
        "daemon": {"state_dir": str(directory), "shutdown_timeout": 10.0},
        "store": {"url": store_url or f"sqlite:///{directory}/adaptd.db"},
        "server": {"socket": str(directory / socket_name)},
        "metrics": {"listen": f"127.0.0.1:{free_port()}" if metrics else ""},
    }
    if naive and _has_engine_setting():
        data["model"] = {"engine": "naive"}
    for section, values in (sections or {}).items():
        data.setdefault(section, {}).update(values)
    text = "".join(f"[{section}]\n" + "".join(f"{k} = {_toml_value(v)}\n" for k, v in values.items()) + "\n"
                   for section, values in data.items())
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


def daemon_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in SCRUBBED_ENV}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def run_cli(*args: str, config: Path | None = None, stdin: bytes | None = None,
            env: Mapping[str, str] | None = None, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """`python -m adaptd ARGS [--config FILE]`, captured as text."""
    argv = [sys.executable, "-m", "adaptd", *args]
    if config is not None:
        argv += ["--config", str(config)]
    proc = subprocess.run(argv, input=stdin, capture_output=True, timeout=timeout, env=daemon_env(env),
                          cwd=str(config.parent) if config is not None else None)
    return subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout.decode(errors="replace"),
                                       proc.stderr.decode(errors="replace"))


class ConnectedClient(Client):
    """A Client that is connected on creation; `with` closes it (and does not connect again)."""

    def __enter__(self) -> "ConnectedClient":
        if self._sock is None:
            self.connect()
        return self


class DaemonProcess:
    """One `adaptd serve` subprocess. start() waits until the socket answers ping."""

    def __init__(self, config: Path, env: Mapping[str, str] | None = None):
        self.config = config
        self.directory = config.parent
        self.env = daemon_env(env)
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_path: Path | None = None
        self._log_offset = 0
        from adaptd.config import load_config
        self.settings = load_config(str(config))
        self.socket_path = self.settings.socket_path()

    # -- lifecycle ------------------------------------------------------------------------
    def start(self, wait: bool = True, timeout: float = START_TIMEOUT) -> "DaemonProcess":
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self._log_path = self.directory / f"stderr-{uuid.uuid4().hex[:8]}.log"
        with open(self._log_path, "wb") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "adaptd", "serve", "--config", str(self.config)],
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         env=self.env, cwd=str(self.directory))
        if wait:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        last_error = "socket file not there yet"
        while time.monotonic() < deadline:
            rc = self.proc.poll()
            if rc is not None:
                raise AssertionError(f"adaptd serve exited with {rc} before answering ping; output:\n{self.stderr}")
            if self.socket_path.exists():
                try:
                    with Client(self.socket_path, timeout=5.0) as client:
                        answer = client.request({"op": "ping"})
                    if answer.get("ok"):
                        return
                    last_error = f"ping answered {answer}"
                except (ClientError, OSError) as exc:
                    last_error = str(exc)
            time.sleep(0.02)
        self.kill()
        raise AssertionError(f"adaptd serve did not answer ping within {timeout}s ({last_error}); "
                             f"output:\n{self.stderr}")

    def wait_exit(self, timeout: float = STOP_TIMEOUT) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"adaptd serve did not exit within {timeout}s; output:\n{self.stderr}") from None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> tuple[int, str]:
        """Send `sig` (SIGTERM), wait for the exit; (exit code, everything it logged)."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        rc = self.wait_exit(timeout)
        return rc, self.stderr

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs (a crash, as far as the store and socket are concerned)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def stderr(self) -> str:
        """What this run of the daemon logged so far."""
        if self._log_path is None or not self._log_path.exists():
            return ""
        return self._log_path.read_text(encoding="utf-8", errors="replace")

    # -- talking to it --------------------------------------------------------------------
    def client(self, timeout: float = 30.0) -> ConnectedClient:
        client = ConnectedClient(self.socket_path, timeout=timeout)
        client.connect()
        return client

    def request(self, payload: dict[str, Any]) -> dict[str, Any]:
        with Client(self.socket_path, timeout=30.0) as client:
            return client.request(payload)

    def ingest(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        answer = self.request({"op": "ingest", "records": records})
        assert answer.get("ok"), answer
        return answer

    def series(self) -> dict[str, dict[str, Any]]:
        answer = self.request({"op": "series"})
        assert answer.get("ok"), answer
        return {item["series"]: item for item in answer["series"]}

    def forecast(self, series: str, horizon: int) -> dict[str, Any]:
        return self.request({"op": "forecast", "series": series, "horizon": horizon})

    def wait_learnt(self, timeout: float = 120.0) -> None:
        """Until the models have learnt every acknowledged record (forecasts from unlearnt
        records are answered at once, but may differ from the learnt ones)."""
        deadline = time.monotonic() + timeout
        while self.request({"op": "stats"})["learning_backlog_records"]:
            assert time.monotonic() < deadline, "the models did not catch up in time"
            time.sleep(0.05)


@contextlib.contextmanager
def running_daemon(directory: Path | None = None, store_url: str | None = None, metrics: bool = False,
                   sections: Mapping[str, Mapping[str, Any]] | None = None,
                   env: Mapping[str, str] | None = None, keep_dir: bool = False,
                   naive: bool = True) -> Iterator[DaemonProcess]:
    """A started daemon; on exit it is stopped (SIGTERM) if still running and its dir removed."""
    own_dir = directory is None
    directory = directory or short_tempdir()
    daemon = None
    try:
        daemon = DaemonProcess(write_config(directory, store_url, metrics, sections, naive=naive), env)
        daemon.start()
        yield daemon
    finally:
        if daemon is not None and daemon.running:
            daemon.stop()
        if own_dir and not keep_dir:
            shutil.rmtree(directory, ignore_errors=True)


def hourly(series: str, n: int, start: float = 1_700_000_000.0, values: Any = None) -> list[dict[str, Any]]:
    """`n` records of one series, an hour apart; values 0.5, 1.5, ... unless given."""
    vals = list(values) if values is not None else [i + 0.5 for i in range(n)]
    return [{"series": series, "ts": start + 3600.0 * i, "value": vals[i]} for i in range(n)]


def stored_rows(store_url: str, series: str) -> list[tuple[float, float]]:
    """(ts, value) of one series straight from the store (the daemon should be stopped)."""
    from adaptd.store import Store

    store = Store.open(store_url)
    try:
        return store.history(series)
    finally:
        store.close()


def preload(store_url: str, rows: Any) -> None:
    """Write Observations straight into a (new) store, before a daemon starts on it."""
    from adaptd.store import Store

    store = Store.open(store_url)
    try:
        store.migrate()
        store.write(rows)
    finally:
        store.close()


def metric_samples(daemon: DaemonProcess) -> dict[str, float]:
    """Every sample of the daemon's Prometheus endpoint (written with metrics=True), by its
    name with labels as exported, e.g. 'adaptd_requests_total{op="forecast",outcome="ok"}'."""
    import urllib.request

    with urllib.request.urlopen(f"http://{daemon.settings.metrics.listen}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines() if line and not line.startswith("#")}


class ClusterPair:
    """Two members of one cluster (`[cluster] members = 2, member = k`) on the PostgreSQL database
    `store_url`, each in a short directory of its own, with metrics on. Each one's config lists
    both sockets in `[cluster] sockets`, so either config serves the client commands too.

    `with ClusterPair(url) as pair:` starts both and stops them (SIGTERM, checking that they
    exit 0 without a traceback) at the end; `ensure_running()` starts again one a test killed.
    """

    MEMBERS = 2

    def __init__(self, store_url: str):
        self.dirs = [short_tempdir() for _ in range(self.MEMBERS)]
        sockets = [str(d / "adaptd.sock") for d in self.dirs]
        self.daemons = [DaemonProcess(write_config(d, store_url, metrics=True, sections={
            "cluster": {"members": self.MEMBERS, "member": k, "sockets": sockets}}))
            for k, d in enumerate(self.dirs)]

    def __enter__(self) -> "ClusterPair":
        try:
            for daemon in self.daemons:   # side by side: a daemon takes seconds to start
                daemon.start(wait=False)
            for daemon in self.daemons:
                daemon.wait_ready()
        except BaseException:
            self._remove()
            raise
        return self

    def __exit__(self, exc_type: object, *_exc: object) -> None:
        try:
            if exc_type is None:
                for daemon in self.daemons:
                    if daemon.running:
                        rc, log = daemon.stop()
                        assert rc == 0 and "Traceback" not in log, log
        finally:
            self._remove()

    def _remove(self) -> None:
        for daemon in self.daemons:
            daemon.kill()
        for directory in self.dirs:
            shutil.rmtree(directory, ignore_errors=True)

    def __getitem__(self, member: int) -> DaemonProcess:
        return self.daemons[member]

    def __iter__(self) -> Iterator[DaemonProcess]:
        return iter(self.daemons)

    def ensure_running(self) -> None:
        for daemon in self.daemons:
            if not daemon.running:
                daemon.start()

    @property
    def sockets(self) -> list[str]:
        return [str(daemon.socket_path) for daemon in self.daemons]

    def names(self, member: int, n: int, tag: str) -> list[str]:
        """`n` series names starting with `tag` that belong to `member`: a test's own series."""
        from adaptd.ownership import owner

        found = (f"{tag}-{k}" for k in range(100 * n + 100))
        return [name for name in found if owner(name, self.MEMBERS) == member][:n]

    def requests(self, member: int) -> dict[str, float]:
        """Socket requests `member` has answered so far, by op (every outcome)."""
        counts: dict[str, float] = {}
        for sample, value in metric_samples(self.daemons[member]).items():
            if sample.startswith("adaptd_requests_total{"):
                op = sample.split('op="', 1)[1].split('"', 1)[0]
                counts[op] = counts.get(op, 0.0) + value
        return counts

    def stored(self, member: int, names: list[str]) -> dict[str, int]:
        """Observations `member` holds of each of `names` it has any of."""
        listing = self.daemons[member].series()
        return {name: listing[name]["observations"] for name in names if name in listing}
