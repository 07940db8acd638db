"""A throwaway daemon for benchmarks: its own temp dir, config, store and socket."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from collections import Counter, deque
from pathlib import Path
from typing import Any

from ..client import Client, ClientError
from ..config import parse_config


LEVELS = ("WARNING", "ERROR", "CRITICAL", "Traceback")


class LogDrain(threading.Thread):
    """Reads the daemon's stderr (a full pipe would block it): counts its lines by level, keeps
    the first distinct problems and the newest lines. Bounded, so an hours-long soak whose daemon
    logs a line a second does not grow the bench's memory."""

    TAIL = 200
    FIRST = 12

    def __init__(self, stream: Any):
        super().__init__(name="daemon-log", daemon=True)
        self.stream = stream
        self.lines: deque[str] = deque(maxlen=self.TAIL)   # the newest lines, for error messages
        self.count = 0
        self.levels: Counter[str] = Counter()
        self.first: list[str] = []

    def run(self) -> None:
        for raw in iter(self.stream.readline, b""):
            line = raw.decode(errors="replace").rstrip()
            self.lines.append(line)
            self.count += 1
            found = [word for word in LEVELS if word in line]
            self.levels.update(found)
            if found and len(self.first) < self.FIRST:
                text = line.split(" ", 2)[-1] if line[:4].isdigit() else line   # drop the time stamp
                if text not in self.first:
                    self.first.append(text)

    def summary(self) -> dict[str, Any]:
        return {"lines": self.count, "by_level": dict(self.levels), "first": list(self.first)}


# The bench's own scratch daemon lives in a temp dir: these stay the harness's.
SCRATCH_KEYS = ("store.url", "server.socket", "daemon.state_dir")
_NAME = re.compile(r"[a-z_][a-z0-9_]*")


def parse_overrides(items: list[str]) -> dict[str, dict[str, object]]:
    """`--set section.key=value` options as config sections; the value is read as a TOML number,
    boolean or quoted string, and anything else is taken as a plain string.

    >>> parse_overrides(["model.train_every=1", "adapt.init=meta", "server.forecast_wait=0.2"])
    {'model': {'train_every': 1}, 'adapt': {'init': 'meta'}, 'server': {'forecast_wait': 0.2}}
    """
    sections: dict[str, dict[str, object]] = {}
    for item in items:
        name, sep, text = item.partition("=")
        section, dot, key = name.strip().partition(".")
        if not (sep and dot and _NAME.fullmatch(section) and _NAME.fullmatch(key)):
            raise ValueError(f"--set {item!r}: expected section.key=value, e.g. model.train_every=1")
        if f"{section}.{key}" in SCRATCH_KEYS:
            raise ValueError(f"--set {section}.{key}: the bench runs its daemon on a scratch store and socket; "
                             f"{', '.join(SCRATCH_KEYS)} cannot be set")
        try:
            value = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            value = text
        if not isinstance(value, (bool, int, float, str)) or (isinstance(value, float) and not math.isfinite(value)):
            value = text   # dates, tables, lists, inf/nan: the config check gives its own message
        sections.setdefault(section, {})[key] = value
    return sections


class ScratchDaemon:
    """`with ScratchDaemon({"model": {...}}) as d:` runs `adaptd serve` on a fresh SQLite store."""

    def __init__(self, settings: dict[str, dict[str, object]] | None = None, start_timeout: float = 60.0):
        self.dir = Path(tempfile.mkdtemp(prefix="adbench"))
        self.socket = self.dir / "adaptd.sock"
        self.db = self.dir / "adaptd.db"
        self.config = self.dir / "config.toml"
        sections: dict[str, dict[str, object]] = {
            "store": {"url": f"sqlite:///{self.db}"}, "server": {"socket": str(self.socket)},
            "metrics": {"listen": ""}, "daemon": {"log_level": "warning"}}
        for name, values in (settings or {}).items():
            sections.setdefault(name, {}).update(values)
        try:
            # Checked as the daemon will check it, before it starts; the message names "--set".
            parse_config(sections, "bench settings (--set)", self.dir)
            self.config.write_text("".join(
                f"[{name}]\n" + "".join(f"{key} = {json.dumps(value)}\n" for key, value in values.items())
                for name, values in sections.items()))
        except Exception:
            shutil.rmtree(self.dir, ignore_errors=True)
            raise
        self.start_timeout = start_timeout
        self.process: subprocess.Popen[bytes] | None = None
        self.log: LogDrain | None = None

    def __enter__(self) -> "ScratchDaemon":
        if self.process is None:
            self.start()
        return self

    def start(self) -> None:
        """Start the daemon and wait until it answers; RuntimeError (with its log) if it does not."""
        self.process = subprocess.Popen(
            [sys.executable, "-m", "adaptd", "serve", "--config", str(self.config)],
            stderr=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.log = LogDrain(self.process.stderr)
        self.log.start()
        try:
            self._wait_until_answering()
        except BaseException:
            self.__exit__()
            raise

    def _wait_until_answering(self) -> None:
        assert self.process is not None and self.log is not None
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.log.join(5)
                raise RuntimeError("daemon exited: " + ("\n".join(self.log.lines) or "(no log output)"))
            try:
                with Client(self.socket, timeout=5) as client:
                    if client.request({"op": "ping"}).get("ok"):
                        return
            except ClientError:
                time.sleep(0.05)
        raise RuntimeError(f"daemon did not answer on {self.socket} within {self.start_timeout:g} s: "
                           + ("\n".join(list(self.log.lines)[-20:]) or "(no log output)"))

    def __exit__(self, *_exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.log is not None:
            self.log.join(5)   # the pipe reaches its end with the process
        if self.process is not None and self.process.stderr is not None:
            self.process.stderr.close()
        shutil.rmtree(self.dir, ignore_errors=True)
