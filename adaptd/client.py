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


class NoDaemon(ClientError):
    """No daemon at the socket path: none is running, or this is not its path."""


class ClientTimeout(ClientError):
    """The daemon did not accept, read or answer within the client's timeout: it may be hung."""


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
            raise NoDaemon(f"no daemon socket at {self.path}: adaptd is not running "
                           "(start it with `adaptd serve`)") from None
        except ConnectionRefusedError:
            sock.close()
            raise NoDaemon(f"nothing is listening on {self.path}: adaptd is not running") from None
        except PermissionError:
            sock.close()
            raise ClientError(f"permission denied on {self.path}: join the socket's group") from None
        except (TimeoutError, BlockingIOError):   # its listen backlog is full: nobody accepts
            sock.close()
            raise ClientTimeout(f"the daemon at {self.path} accepts no connection (its backlog is full): "
                                "it may be hung (see its log, `systemctl status adaptd`)") from None
        except OSError as exc:   # e.g. a path over the 107 bytes a Unix socket address holds
            sock.close()
            raise ClientError(f"cannot connect to {self.path}: {exc.strerror or exc}") from None
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
            try:
                chunk = self._sock.recv(1 << 16)
            except ConnectionResetError:  # it hung up with requests of ours unread
                chunk = b""
            except TimeoutError:
                raise ClientTimeout(f"no answer from the daemon at {self.path} within {self.timeout:g}s: "
                                  "it may be hung (see its log, `systemctl status adaptd`)") from None
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
        # UTF-8 rather than \uXXXX escapes: a non-ASCII series name costs at most 4 bytes a
        # character instead of 6 or 12, so 1000 records of 200-character names stay under the
        # daemon's default max_line_bytes. A lone surrogate still goes as its JSON escape.
        text = json.dumps(payload, separators=(",", ":"), allow_nan=False, ensure_ascii=False)
        try:
            self.send_raw(text.encode("utf-8", "backslashreplace") + b"\n")
        except (BrokenPipeError, ConnectionResetError):
            raise ClientError(f"the daemon closed the connection{self._last_error()}") from None
        except TimeoutError:   # it stopped reading: its socket buffer stayed full
            raise ClientTimeout(f"the daemon at {self.path} took no request data for {self.timeout:g}s: "
                              "it may be hung") from None

    def _last_error(self) -> str:
        """The error the daemon answered before it hung up (e.g. too_large), if still readable."""
        assert self._sock is not None
        try:
            self._sock.settimeout(1.0)
            while chunk := self._sock.recv(1 << 16):
                self._buffer += chunk
        except OSError:
            pass
        for line in self._buffer.split(b"\n"):
            try:
                answer = json.loads(line)
            except ValueError:
                continue
            if isinstance(answer, dict) and answer.get("ok") is False and isinstance(answer.get("error"), dict):
                return f" after answering {answer['error'].get('code')}: {answer['error'].get('message')}"
        return ""

    def request(self, payload: dict[str, Any]) -> dict[str, Any]:
        self.request_nowait(payload)
        return self.read_response()
