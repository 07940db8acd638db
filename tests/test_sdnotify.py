"""The systemd notify protocol against a real AF_UNIX datagram socket, standing in for systemd."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import statistics
import time
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from adaptd.client import Client
from adaptd.sdnotify import Notifier

from daemon_harness import DaemonProcess, short_tempdir, write_config


class Supervisor:
    """A datagram socket that collects notify messages, as systemd's would."""

    def __init__(self, address: str, bind_to: str):
        self.address = address  # what goes into NOTIFY_SOCKET
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(bind_to)

    def receive(self, timeout: float = 10.0) -> str:
        self.sock.settimeout(timeout)
        return self.sock.recv(65536).decode()

    def receive_until(self, predicate, timeout: float = 10.0) -> list[tuple[float, str]]:
        """Messages (monotonic arrival time, text) up to and including the first that matches."""
        got: list[tuple[float, str]] = []
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no matching notify message within {timeout}s; got {got}")
            try:
                message = self.receive(left)
            except socket.timeout:
                continue
            got.append((time.monotonic(), message))
            if predicate(message):
                return got

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def workdir() -> Iterator[Path]:
    directory = short_tempdir()
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def supervisor(workdir: Path) -> Iterator[Supervisor]:
    path = str(workdir / "notify")
    s = Supervisor(path, path)
    yield s
    s.close()


@pytest.fixture
def abstract_supervisor() -> Iterator[Supervisor]:
    name = f"adaptd-test-{uuid.uuid4().hex}"
    s = Supervisor("@" + name, "\0" + name)
    yield s
    s.close()


# -- Notifier on its own ------------------------------------------------------------------

@pytest.mark.parametrize("which", ["path", "abstract"])
def test_messages_arrive_verbatim(which: str, supervisor: Supervisor, abstract_supervisor: Supervisor) -> None:
    target = supervisor if which == "path" else abstract_supervisor
    notifier = Notifier({"NOTIFY_SOCKET": target.address})
    for message in ("READY=1", "READY=1\nSTATUS=serving 3 series\nMAINPID=42", "WATCHDOG=1", "STOPPING=1",
                    "STATUS=ünïcode ✓"):
        assert notifier.notify(message) is True
        assert target.receive(5) == message


def test_a_long_start_asks_for_more_time_naming_its_phase_and_stops_asking_at_the_limit(
        supervisor: Supervisor, monkeypatch: pytest.MonkeyPatch) -> None:
    """What keeps systemd from killing the start of a daemon with a large store at
    TimeoutStartSec, while a store that hangs still ends it (MAX_EXTENSION)."""
    import asyncio

    from adaptd import sdnotify
    monkeypatch.setattr(sdnotify, "EXTEND_EVERY", 0.05)
    monkeypatch.setattr(sdnotify, "EXTEND_BY", 0.2)
    monkeypatch.setattr(sdnotify, "MAX_EXTENSION", 0.5)
    starting = sdnotify.StillStarting(Notifier({"NOTIFY_SOCKET": supervisor.address}), "counting records")

    async def start() -> float:
        began = time.monotonic()
        await asyncio.wait_for(starting.run(), timeout=10)   # ends by itself at the limit
        return time.monotonic() - began
    took = asyncio.run(start())
    messages = []
    while True:
        try:
            messages.append(supervisor.receive(timeout=0.2))
        except socket.timeout:
            break
    assert 0.25 <= took <= 2.0 and 3 <= len(messages) <= 8, (took, messages)
    assert all(m.startswith("EXTEND_TIMEOUT_USEC=200000\nSTATUS=starting: counting records (") for m in messages)


def test_without_notify_socket_notify_is_a_quiet_no_op() -> None:
    assert Notifier({}).notify("READY=1") is False
    assert Notifier({"NOTIFY_SOCKET": ""}).notify("READY=1") is False


def test_an_unreachable_notify_socket_fails_softly(workdir: Path) -> None:
    assert Notifier({"NOTIFY_SOCKET": str(workdir / "nobody-here")}).notify("READY=1") is False
    assert Notifier({"NOTIFY_SOCKET": f"@adaptd-nobody-{uuid.uuid4().hex}"}).notify("READY=1") is False


def test_notifier_reads_the_process_environment_by_default(supervisor: Supervisor,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", supervisor.address)
    assert Notifier().notify("STATUS=from env") is True
    assert supervisor.receive(5) == "STATUS=from env"


@pytest.mark.parametrize("env, expected", [
    ({}, None),
    ({"WATCHDOG_USEC": "400000"}, 0.2),
    ({"WATCHDOG_USEC": "30000000"}, 15.0),
    ({"WATCHDOG_USEC": "400000", "WATCHDOG_PID": "<self>"}, 0.2),
    ({"WATCHDOG_USEC": "400000", "WATCHDOG_PID": "<other>"}, None),
    ({"WATCHDOG_USEC": "soon"}, None),
    ({"WATCHDOG_USEC": "4e5"}, None),
    ({"WATCHDOG_USEC": ""}, None),
    ({"WATCHDOG_USEC": "0"}, None),
    ({"WATCHDOG_USEC": "-400000"}, None),
])
def test_watchdog_interval_is_half_the_timeout(env: dict[str, str], expected: float | None) -> None:
    env = dict(env)
    if env.get("WATCHDOG_PID") == "<self>":
        env["WATCHDOG_PID"] = str(os.getpid())
    elif env.get("WATCHDOG_PID") == "<other>":
        env["WATCHDOG_PID"] = str(os.getpid() + 1)
    interval = Notifier(env).watchdog_interval()
    if expected is None:
        assert interval is None
    else:
        assert interval == pytest.approx(expected)


# -- the daemon under a supervisor --------------------------------------------------------

@pytest.mark.integration
def test_daemon_notifies_ready_after_the_socket_answers_then_watchdog_then_stopping(
        workdir: Path, supervisor: Supervisor) -> None:
    config = write_config(workdir)
    d = DaemonProcess(config, env={"NOTIFY_SOCKET": supervisor.address, "WATCHDOG_USEC": "400000"})
    try:
        d.start(wait=False)
        got = supervisor.receive_until(lambda m: "READY=1" in m.split("\n"), timeout=30)
        # READY=1 means "answers as before the restart": the socket must answer right now.
        assert d.socket_path.is_socket(), "READY=1 arrived before the socket was bound"
        with Client(d.socket_path, timeout=5) as client:
            assert client.request({"op": "ping"})["ok"] is True
        ready_at, ready = got[-1]
        assert not any("WATCHDOG=1" in m for _, m in got[:-1]), got  # nothing claims health before READY
        fields = dict(line.split("=", 1) for line in ready.split("\n"))
        assert fields["READY"] == "1"
        assert fields["MAINPID"] == str(d.pid)
        assert "STATUS" in fields

        # WATCHDOG=1 every WATCHDOG_USEC/2 = 0.2 s: at least 3 in the next ~1.2 s.
        pings: list[float] = []
        deadline = ready_at + 1.2
        while time.monotonic() < deadline:
            try:
                message = supervisor.receive(max(0.01, deadline - time.monotonic()))
            except socket.timeout:
                break
            if message == "WATCHDOG=1":
                pings.append(time.monotonic())
        assert len(pings) >= 3, f"only {len(pings)} WATCHDOG=1 in 1.2 s; log:\n{d.stderr}"
        gaps = [b - a for a, b in zip(pings, pings[1:])]
        assert statistics.median(gaps) < 0.35, gaps  # about every 0.2 s, well inside the 0.4 s timeout

        d.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        supervisor.receive_until(lambda m: m == "STOPPING=1", timeout=10)
        assert d.wait_exit() == 0, d.stderr
        assert not d.socket_path.exists()
    finally:
        d.kill()
