"""The socket server on its own (in-process, a real Unix socket): what a shutdown does to
connections that were idle when it began."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import time

from adaptd.metrics import Metrics
from adaptd.protocol import Conversation
from adaptd.server import SPARED_GRACE, SocketServer

from daemon_harness import short_tempdir


async def answer(line: bytes, conversation: Conversation) -> bytes:
    """A stand-in for the service's handler: says whether the request was served."""
    request = json.loads(line)
    return (json.dumps({"id": request["id"], "served": not conversation.closing}) + "\n").encode()


def test_requests_reaching_an_idle_connection_as_the_shutdown_begins_each_get_an_answer():
    path = short_tempdir() / "s.sock"
    clients = {name: socket.socket(socket.AF_UNIX) for name in ("late", "half", "quiet")}

    async def scenario() -> tuple[dict[str, list[dict]], float]:
        server = SocketServer(path, answer, Metrics())
        await server.start()
        for sock in clients.values():
            sock.connect(str(path))
            sock.setblocking(False)
        async with asyncio.timeout(10):                    # every connection idle, waiting for a request
            while len(server._connections) < len(clients):
                await asyncio.sleep(0.01)
        clients["late"].sendall(b'{"id": 1}\n{"id": 2}\n')   # in the kernel's queue, not yet read...
        clients["half"].sendall(b'{"id": 3')                 # (a line never finished)
        started = time.monotonic()
        await server.close(timeout=30.0)                   # ... when the shutdown begins
        took = time.monotonic() - started
        answers = {}
        for name, sock in clients.items():
            sock.setblocking(True)
            sock.settimeout(5.0)
            with sock.makefile("rb") as stream:
                answers[name] = [json.loads(line) for line in stream]
        return answers, took

    try:
        answers, took = asyncio.run(scenario())
    finally:
        for sock in clients.values():
            sock.close()
        shutil.rmtree(path.parent, ignore_errors=True)
    assert answers["late"] == [{"id": 1, "served": False}, {"id": 2, "served": False}]   # answered: re-send
    assert answers["quiet"] == []                      # closed at once, nothing owed
    assert answers["half"] == []                       # no request: closed after the grace ...
    assert took < SPARED_GRACE + 2.0, took             # ... not after close()'s whole timeout
