"""The systemd deployment: deploy/adaptd.service and the config it starts, deploy/config.toml.

systemd itself accepts the unit (`systemd-analyze verify`, with no warning about it: a
misspelt directive is only a warning), the unit keeps the promises deploy/README.md makes
(notify, watchdog, restart, stop timeout, dynamic user, directories, group access), and the
config passes `adaptd check-config` and puts its files where the unit gives the daemon room.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path, PurePosixPath

import pytest

from adaptd.config import Settings, load_config
from adaptd.sdnotify import Notifier
from daemon_harness import run_cli

ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "deploy" / "adaptd.service"
CONFIG = ROOT / "deploy" / "config.toml"
INSTALLED_CONFIG = "/etc/adaptd/config.toml"

# What systemd prints, still exiting 0, for a directive it does not know ("Unknown key" since
# v249, "Unknown lvalue" before); its warnings about our file also name the file.
UNKNOWN_DIRECTIVE = re.compile(r"Unknown (key|lvalue|section)")


def unit_directives(text: str) -> dict[str, dict[str, list[str]]]:
    """Section -> key -> values (a key may repeat), as systemd reads a unit file."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        assert current is not None, f"directive outside a section: {raw!r}"
        key, sep, value = line.partition("=")
        assert sep, f"not a KEY=VALUE line: {raw!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def seconds(span: str) -> float:
    """A systemd time span ("30s", "5min", "2min 30s", "150") in seconds."""
    units = {"us": 1e-6, "ms": 1e-3, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hr": 3600}
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", span)
    assert parts and re.fullmatch(r"(\s*\d+(\.\d+)?\s*[a-z]*)+\s*", span), f"not a time span: {span!r}"
    return sum(float(n) * units[u or "s"] for n, u in parts)


@pytest.fixture(scope="module")
def service() -> dict[str, str]:
    """The [Service] section, one value per key (the last one wins, as in systemd)."""
    return {k: v[-1] for k, v in unit_directives(UNIT.read_text())["Service"].items()}


@pytest.fixture(scope="module")
def settings() -> Settings:
    return load_config(str(CONFIG))


def verify(unit_text: str, directory: Path) -> subprocess.CompletedProcess[str]:
    """`systemd-analyze verify` on a copy whose ExecStart is this venv's real `adaptd`."""
    if shutil.which("systemd-analyze") is None:
        reason = "systemd-analyze is not installed (Debian package `systemd`)"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI must verify the unit (.ci/run installs it)", pytrace=False)
        pytest.skip(reason)
    adaptd = Path(sys.executable).parent / "adaptd"
    assert adaptd.is_file(), f"{adaptd} missing: install the package into this venv (make install)"
    text, n = re.subn(r"^ExecStart=\S+", f"ExecStart={adaptd}", unit_text, flags=re.M)
    assert n == 1, "the unit must have exactly one ExecStart="
    copy = directory / "adaptd.service"
    copy.write_text(text)
    return subprocess.run(["systemd-analyze", "verify", "--man=no", str(copy)],
                          capture_output=True, text=True, timeout=60)


def unit_complaints(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "adaptd.service" in line or UNKNOWN_DIRECTIVE.search(line)]


def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    """systemd loads the unit with no error and no warning (typos are warnings only)."""
    result = verify(UNIT.read_text(), tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert unit_complaints(result.stderr) == [], result.stderr


def test_verify_would_catch_a_misspelt_directive(tmp_path: Path) -> None:
    """The check above is not vacuous: this systemd reports an unknown directive."""
    result = verify(UNIT.read_text().replace("WatchdogSec=", "WatchdogSecs="), tmp_path)
    assert any("WatchdogSecs" in line for line in unit_complaints(result.stderr)), result.stderr


def test_unit_is_a_notify_service_with_watchdog_and_restart(service: dict[str, str]) -> None:
    """systemctl start returns when the daemon says READY=1; a hung daemon is killed and restarted."""
    assert service["Type"] == "notify"
    assert service["NotifyAccess"] == "main"
    assert service["Restart"] == "on-failure"
    assert seconds(service["RestartSec"]) > 0
    watchdog = seconds(service["WatchdogSec"])
    assert watchdog >= 10, "a short watchdog kills a daemon that is merely busy"
    # systemd passes WatchdogSec as WATCHDOG_USEC; the daemon pings at half of it.
    ping = Notifier({"WATCHDOG_USEC": str(int(watchdog * 1e6))}).watchdog_interval()
    assert ping == pytest.approx(watchdog / 2)


def test_unit_waits_for_a_graceful_shutdown(service: dict[str, str], settings: Settings) -> None:
    """SIGTERM gives requests, the store writer and the learning thread shutdown_timeout in
    all, then checkpoints: systemd must not SIGKILL the daemon before the checkpoint is saved."""
    assert seconds(service["TimeoutStopSec"]) >= settings.daemon.shutdown_timeout + 60
    # SIGTERM to the daemon alone: its scheduled meta-training run is its to stop (and record
    # as stopped), not killed beside it and recorded as failed.
    assert service["KillMode"] == "mixed"


def test_unit_gives_startup_time_to_wait_for_the_database(service: dict[str, str], settings: Settings) -> None:
    """Start-up waits up to [store] connect_timeout for an unreachable database, then restores
    state: systemd must not kill a start that is still within its wait."""
    assert seconds(service["TimeoutStartSec"]) >= settings.store.connect_timeout + 120


def test_unit_runs_serve_with_the_installed_config(service: dict[str, str]) -> None:
    argv = service["ExecStart"].split()
    assert argv[0] == "/opt/adaptd/.venv/bin/adaptd"
    assert argv[1:] == ["serve", "--config", INSTALLED_CONFIG]
    assert PurePosixPath(INSTALLED_CONFIG).parent == PurePosixPath("/etc", service["ConfigurationDirectory"])


def test_unit_runs_as_a_dynamic_user_with_hardening(service: dict[str, str]) -> None:
    assert service["DynamicUser"] == "yes"
    assert service["RuntimeDirectory"] == "adaptd"
    assert service["StateDirectory"] == "adaptd"
    expected = {"ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes", "PrivateDevices": "yes",
                "NoNewPrivileges": "yes", "CapabilityBoundingSet": "", "ProtectKernelTunables": "yes",
                "ProtectKernelModules": "yes", "ProtectControlGroups": "yes", "RestrictNamespaces": "yes",
                "LockPersonality": "yes", "SystemCallFilter": "@system-service"}
    assert {k: service.get(k) for k in expected} == expected
    assert set(service["RestrictAddressFamilies"].split()) == {"AF_UNIX", "AF_INET", "AF_INET6"}
    assert int(service["UMask"], 8) & 0o077 == 0o077, "the store's files must not be readable by others"


def test_socket_group_can_reach_the_socket(service: dict[str, str], settings: Settings) -> None:
    """Members of the unit's Group= can traverse /run/adaptd and connect; nobody else can.
    With DynamicUser the daemon can only chgrp the socket to one of its own groups."""
    group = service.get("Group", "")
    assert group, "without Group= no static group can be given access to the socket"
    directory_mode = int(service["RuntimeDirectoryMode"], 8)
    socket_mode = settings.socket_mode()
    assert directory_mode & 0o010 and not directory_mode & 0o007
    assert socket_mode & 0o060 == 0o060 and not socket_mode & 0o007
    socket_group = settings.server.socket_group
    assert socket_group in ("", group) or socket_group in service.get("SupplementaryGroups", "").split()


def test_check_config_accepts_the_deploy_config() -> None:
    out = run_cli("check-config", config=CONFIG)
    assert out.returncode == 0, out.stderr
    assert "OK" in out.stdout


def test_config_paths_lie_in_the_unit_directories(service: dict[str, str], settings: Settings) -> None:
    """ProtectSystem=strict: the daemon can write only in its StateDirectory and RuntimeDirectory."""
    state = Path("/var/lib") / service["StateDirectory"]
    runtime = Path("/run") / service["RuntimeDirectory"]
    assert settings.socket_path().parent == runtime
    assert Path(settings.daemon.state_dir) == state
    url = settings.store.url
    assert url.startswith("sqlite:////"), url
    assert Path(url.removeprefix("sqlite:///")).parent == state


def test_nothing_listens_on_a_public_address(settings: Settings) -> None:
    """The protocol is on the Unix socket only; the metrics endpoint is loopback (or off)."""
    listen = settings.metrics.listen
    if listen:
        host = listen.rpartition(":")[0].strip("[]")
        assert host == "localhost" or ipaddress.ip_address(host).is_loopback, listen
