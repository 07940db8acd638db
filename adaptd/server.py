"""The asyncio Unix socket server: framing, connections, permissions, graceful close.

Requests on one connection are answered in order; connections are served concurrently.
A line over the limit cannot be framed: it gets `too_large` and the connection is closed.
Opt-in (`request_timeout` > 0): a line begun and not finished in time gets `bad_request` and the
connection is closed too (a stuck or broken writer, and the partial line it buffers, go away);
a connection with nothing half-sent may stay idle as long as its client likes.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import fcntl
import grp
import logging
import os
import socket
import struct
import termios
from pathlib import Path
from typing import Awaitable, Callable

from . import lockfile
from .metrics import Metrics
from .protocol import BAD_REQUEST, OVERLOADED, TOO_LARGE, Conversation, encode, error

log = logging.getLogger(__name__)
# Seconds an idle connection that bytes had reached when the shutdown began has to read a whole
# request line before it is closed.
SPARED_GRACE = 1.0

Handler = Callable[[bytes, Conversation], Awaitable[bytes]]


class SocketInUse(RuntimeError):
    """The socket path cannot be ours: another daemon answers on it, or it cannot be set up."""


def refuse_if_served(path: Path) -> None:
    """Fail when a live daemon answers on `path`. Checked first thing at start-up as well: a
    second instance must not restore, learn or checkpoint the series of the one that serves."""
    if path.is_socket() and _answers(path):
        raise SocketInUse(f"another adaptd is already serving on {path}")


def claim_socket(path: Path) -> int:
    """An exclusive lock on `<socket>.lock`, held (by the returned descriptor) for the life of
    the process and released by the kernel however it ends: of two daemons started together
    on one socket, only one gets past this, before either opens the store."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = path.with_name(path.name + ".lock")
    fd = lockfile.hold(lock)
    if fd is None:
        raise SocketInUse(f"another adaptd is already serving (or starting) on {path} (it holds {lock})")
    return fd


def clear_stale_socket(path: Path) -> None:
    """Remove a socket file left by a crashed run; refuse if a live daemon still answers on it."""
    if not path.exists() and not path.is_symlink():
        return
    if not path.is_socket():
        raise SocketInUse(f"{path} exists and is not a socket; refusing to remove it")
    refuse_if_served(path)
    log.warning("removing stale socket %s left by an earlier run", path)
    path.unlink(missing_ok=True)


def _arrived(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> int:
    """Bytes of a connection received and not yet read as requests: the stream's buffer plus
    the socket's receive queue (FIONREAD). 0 for what cannot be told."""
    buffered = len(getattr(reader, "_buffer", b""))   # CPython's StreamReader keeps it there
    sock = writer.get_extra_info("socket")
    try:
        queued = struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0]
    except (AttributeError, OSError, ValueError):
        queued = 0
    return buffered + queued


def _answers(path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(str(path))
        return True
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    except BlockingIOError:   # EAGAIN: a listener whose backlog is full is a live (if busy) daemon
        return True
    except OSError as exc:
        if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
            raise
        return False
    finally:
        probe.close()


@dataclasses.dataclass(slots=True)
class _Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    busy: bool = False                          # answering a request
    grace: asyncio.TimerHandle | None = None    # idle but spared at close(): cancels the task when due

    def spare(self) -> None:
        """No longer at risk of being cut off by close()'s grace (a whole line read, or gone)."""
        if self.grace is not None:
            self.grace.cancel()
            self.grace = None


class SocketServer:
    def __init__(self, path: Path, handler: Handler, metrics: Metrics, *, mode: int = 0o660,
                 group: str = "", max_line_bytes: int = 1 << 20, max_connections: int = 1024,
                 request_timeout: float = 0.0):
        self.path = path
        self.handler = handler
        self.metrics = metrics
        self.mode = mode
        self.group = group
        self.max_line_bytes = max_line_bytes
        self.max_connections = max_connections
        self.request_timeout = request_timeout or None   # 0: no limit
        self._server: asyncio.AbstractServer | None = None
        self._connections: dict[asyncio.Task[None], _Connection] = {}
        self._closing = False

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        clear_stale_socket(self.path)
        # The umask keeps the socket private between bind() and chmod().
        old_umask = os.umask(0o177)
        try:
            # The limit applies to the rest of a line after its first byte (`_converse`).
            self._server = await asyncio.start_unix_server(
                self._serve_client, path=str(self.path), limit=self.max_line_bytes - 1)
        finally:
            os.umask(old_umask)
        try:
            if self.group:
                os.chown(self.path, -1, grp.getgrnam(self.group).gr_gid)
            os.chmod(self.path, self.mode)
        except (KeyError, OSError) as exc:
            self.path.unlink(missing_ok=True)
            reason = f"no group named {self.group!r}" if isinstance(exc, KeyError) else str(exc)
            raise SocketInUse(f"server.socket_group / socket_mode: cannot set on {self.path}: {reason}") from None
        log.info("listening on %s (mode %04o%s)", self.path, self.mode, f", group {self.group}" if self.group else "")

    async def close(self, timeout: float) -> None:
        """Stop accepting, let requests in flight finish (bounded), close every connection."""
        self._closing = True
        if self._server is not None:
            self._server.close()
        loop = asyncio.get_running_loop()
        for task, connection in list(self._connections.items()):
            # An idle connection is dropped, unless bytes had reached it as the shutdown began:
            # its task then has SPARED_GRACE to read a whole request line (a half-sent one must
            # not hold the shutdown up), and answers it and the rest that had arrived
            # (`overloaded`: not served), as a busy connection's are (`_turn_away`).
            if connection.busy:
                continue
            if _arrived(connection.reader, connection.writer):
                connection.grace = loop.call_later(min(SPARED_GRACE, timeout), task.cancel)
            else:
                task.cancel()
        if self._connections:
            _done, pending = await asyncio.wait(list(self._connections), timeout=timeout)
            for task in pending:
                log.warning("closing a connection whose request did not finish in %.0fs", timeout)
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1.0)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _serve_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(self._connections) >= self.max_connections:   # memory per connection is bounded, their number too
            self.metrics.requests.labels("connect", OVERLOADED).inc()
            with contextlib.suppress(Exception):
                writer.write(encode(error(OVERLOADED, f"{len(self._connections)} connections are open "
                                          "([server] max_connections); retry later")))
                await asyncio.wait_for(writer.drain(), 1.0)
            writer.close()
            return
        connection = self._connections[task] = _Connection(reader, writer)
        self.metrics.connections.inc()
        try:
            await self._converse(connection)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._connections.pop(task, None)
            connection.spare()
            self.metrics.connections.dec()
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1.0)

    async def _refuse(self, writer: asyncio.StreamWriter, code: str, message: str, op: str = "invalid") -> None:
        """Answer a line that cannot be served as a request (the caller then closes the connection).
        `op` labels it in `adaptd_requests_total`: "unfinished" for a line cut off by
        request_timeout, so an SRE can tell stalled writers from malformed requests."""
        writer.write(encode(error(code, message)))
        self.metrics.requests.labels(op, code).inc()
        await writer.drain()

    async def _converse(self, connection: _Connection) -> None:
        reader, writer = connection.reader, connection.writer
        ended = False
        conversation = Conversation()
        consumed = refused_through = 0   # bytes of this connection read so far / that had arrived at a refusal
        while not self._closing and not ended:
            line = b""
            try:
                line = await reader.readexactly(1)        # idle: wait for a request (until close())
                if line != b"\n":                         # a blank line is whole already
                    rest = reader.readuntil(b"\n")
                    if self.request_timeout is None:      # no timeout context: it costs ~8 µs a request
                        line += await rest
                    else:
                        async with asyncio.timeout(self.request_timeout):   # begun: it must end in time
                            line += await rest
            except TimeoutError:
                await self._refuse(writer, BAD_REQUEST, f"request line not finished within {self.request_timeout:g} s "
                                   "([server] request_timeout); end each request with a newline", op="unfinished")
                return
            except asyncio.IncompleteReadError as exc:
                # End of input. A last request without its newline (`printf ... | nc -U`) is
                # answered like any other; a line cut off mid-way is not valid JSON and is
                # refused as such, to a client that may be gone already.
                line, ended = line + exc.partial, True
            except asyncio.LimitOverrunError:
                await self._refuse(writer, TOO_LARGE,
                                   f"request line is over {self.max_line_bytes} bytes; split the batch")
                return
            start, consumed = consumed, consumed + len(line)
            if self._closing:
                connection.spare()   # a whole line read: answered now, within close()'s bounds
            if not line.strip():
                continue  # blank lines between requests are harmless
            connection.busy = True
            conversation.behind_refusal, conversation.refused = start < refused_through, False
            conversation.closing = self._closing   # read after the shutdown began: answered, not served
            response = await self.handler(line, conversation)
            if conversation.refused:   # counted before the answer leaves: what arrived was sent without it
                refused_through = consumed + _arrived(reader, writer)
            writer.write(response)
            await writer.drain()
            connection.busy = False
        if self._closing and not ended:
            await self._turn_away(reader, writer, conversation)

    async def _turn_away(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                         conversation: Conversation) -> None:
        """The daemon is closing: each request that had reached it (sent behind the one it just
        answered) gets an answer, `overloaded`, saying it was not served, instead of silence.
        Exactly one answer per request, and the client knows what to re-send. What arrives later
        is not read."""
        conversation.closing = True
        left = _arrived(reader, writer)
        while left > 0:
            try:
                line = await asyncio.wait_for(reader.readuntil(b"\n"), 1.0)
            except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                break
            left -= len(line)
            if line.strip():
                writer.write(await self.handler(line, conversation))
        await writer.drain()
