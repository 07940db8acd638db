"""A throwaway daemon for benchmarks: its own temp dir, config, store and socket."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ..client import Client, ClientError


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
        self.config.write_text("".join(
            f"[{name}]\n" + "".join(f"{key} = {json.dumps(value)}\n" for key, value in values.items())
            for name, values in sections.items()))
        self.start_timeout = start_timeout
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> "ScratchDaemon":
        self.process = subprocess.Popen(
            [sys.executable, "-m", "adaptd", "serve", "--config", str(self.config)],
            stderr=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"daemon exited: {self.process.stderr.read().decode()}")  # type: ignore[union-attr]
            try:
                with Client(self.socket, timeout=5) as client:
                    if client.request({"op": "ping"}).get("ok"):
                        return self
            except ClientError:
                time.sleep(0.05)
        raise RuntimeError("daemon did not answer in time")

    def __exit__(self, *_exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process is not None and self.process.stderr is not None:
            self.process.stderr.close()
        shutil.rmtree(self.dir, ignore_errors=True)
