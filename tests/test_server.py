"""The socket server on its own (in-process, a real Unix socket): what a shutdown does to a
connection that was idle when it began."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket

from adaptd.metrics import Metrics
from adaptd.protocol import Conversation
from adaptd.server import SocketServer

from daemon_harness import short_tempdir


async def answer(line: bytes, conversation: Conversation) -> bytes:
    """A stand-in for the service's handler: says whether the request was served."""
    request = json.loads(line)
    return (json.dumps({"id": request["id"], "served": not conversation.closing}) + "\n").encode()


def test_requests_reaching_an_idle_connection_as_the_shutdown_begins_each_get_an_answer():
    path = short_tempdir() / "s.sock"

    async def scenario() -> tuple[list[dict], list[dict]]:
        server = SocketServer(path, answer, Metrics())
        await server.start()
        late, quiet = socket.socket(socket.AF_UNIX), socket.socket(socket.AF_UNIX)
        for sock in (late, quiet):
            sock.connect(str(path))
            sock.setblocking(False)
        async with asyncio.timeout(10):                    # both connections idle, waiting for a request
            while len(server._connections) < 2:
                await asyncio.sleep(0.01)
        late.sendall(b'{"id": 1}\n{"id": 2}\n')              # in the kernel's queue, not yet read...
        await server.close(timeout=5.0)                    # ... when the shutdown begins
        answers = []
        for sock in (late, quiet):
            sock.setblocking(True)
            sock.settimeout(5.0)
            with sock, sock.makefile("rb") as stream:
                answers.append([json.loads(line) for line in stream])
        return answers[0], answers[1]

    try:
        late, quiet = asyncio.run(scenario())
    finally:
        shutil.rmtree(path.parent, ignore_errors=True)
    assert late == [{"id": 1, "served": False}, {"id": 2, "served": False}]   # answered: not served, re-send
    assert quiet == []                                                       # closed at once, nothing owed
