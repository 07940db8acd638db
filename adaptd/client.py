"""A blocking client for socket protocol v1, used by the CLI, benchmarks and tests.

    with Client("/run/adaptd/adaptd.sock") as client:
        client.request({"op": "ping"})      # {'ok': True, 'version': '0.1.0'}
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any


class ClientError(RuntimeError):
    """The daemon could not be reached or answered something that is not protocol v1."""


class Client:
    def __init__(self, path: str | Path, timeout: float | None = 60.0):
        self.path = str(path)
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._buffer = b""

    def __enter__(self) -> "Client":
        self.connect()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.path)
        except FileNotFoundError:
            sock.close()
            raise ClientError(f"no daemon socket at {self.path}: adaptd is not running "
                              "(start it with `adaptd serve`)") from None
        except ConnectionRefusedError:
            sock.close()
            raise ClientError(f"nothing is listening on {self.path}: adaptd is not running") from None
        except PermissionError:
            sock.close()
            raise ClientError(f"permission denied on {self.path}: join the socket's group") from None
        self._sock = sock

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def send_raw(self, data: bytes) -> None:
        assert self._sock is not None, "connect() first"
        self._sock.sendall(data)

    def read_response(self) -> dict[str, Any]:
        assert self._sock is not None, "connect() first"
        while b"\n" not in self._buffer:
            chunk = self._sock.recv(1 << 16)
            if not chunk:
                raise ClientError("the daemon closed the connection")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        try:
            return json.loads(line)
        except json.JSONDecodeError:
            raise ClientError(f"the daemon answered something that is not JSON: {line[:80]!r}") from None

    def request_nowait(self, payload: dict[str, Any]) -> None:
        """Send a request without waiting; answers come back in order via read_response()."""
        self.send_raw(json.dumps(payload, separators=(",", ":"), allow_nan=False).encode() + b"\n")

    def request(self, payload: dict[str, Any]) -> dict[str, Any]:
        self.request_nowait(payload)
        return self.read_response()
