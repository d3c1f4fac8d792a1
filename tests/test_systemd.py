"""sd_notify against real AF_UNIX datagram sockets: READY=1, the abstract "@" form, the no-op
outside systemd, the watchdog period, and ``air-relay serve`` speaking it end to end."""

from __future__ import annotations

import asyncio
import configparser
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from air_relay import systemd
from air_relay.config import Config
from air_relay.runtime import open_files_needed
from tests.fault.relay import SOCKET_ACTIVATE
from tests.support import INGEST_TOKEN, TENANT

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "air-relay.service"
SOCKET_UNIT = ROOT / "systemd" / "air-relay.socket"
ENV_EXAMPLE = ROOT / "systemd" / "air-relay.env.example"
AIR_RELAY = Path(sys.executable).parent / "air-relay"
if not AIR_RELAY.exists():
    AIR_RELAY = Path(shutil.which("air-relay") or AIR_RELAY)


def popen_serve(cfg_path: Path, env: dict[str, str], *, stdout: int) -> subprocess.Popen[bytes]:
    """``air-relay serve --config cfg_path`` under ``env``: no stdin, its log on a pipe."""
    return subprocess.Popen(
        [str(AIR_RELAY), "serve", "--config", str(cfg_path)],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=subprocess.PIPE,
    )


class Listener:
    """A bound AF_UNIX datagram socket standing in for systemd's notification socket."""

    def __init__(self, sock: socket.socket, address: str) -> None:
        self.sock = sock
        self.address = address  # the NOTIFY_SOCKET value

    def receive(self, timeout: float = 5.0) -> str:
        self.sock.settimeout(timeout)
        return self.sock.recv(4096).decode()

    def nothing_within(self, seconds: float) -> bool:
        self.sock.settimeout(seconds)
        try:
            self.sock.recv(4096)
        except TimeoutError:
            return True
        return False

    def receive_until(self, wanted: str, timeout: float) -> list[str]:
        """Every message up to and including ``wanted``; AssertionError if it never comes."""
        got: list[str] = []
        deadline = time.monotonic() + timeout
        while wanted not in got:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {wanted!r} within {timeout} s; got {got}")
            try:
                got.append(self.receive(timeout=left))
            except TimeoutError:
                continue
        return got


def _short_dir(tmp_path: Path) -> Path:
    # sun_path holds 107 bytes; pytest's tmp_path can be longer than that.
    if len(str(tmp_path / "notify.sock")) < 100:
        return tmp_path
    return Path(tempfile.mkdtemp(prefix="ar-notify-"))


@pytest.fixture
def path_listener(tmp_path: Path) -> Iterator[Listener]:
    path = _short_dir(tmp_path) / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    try:
        yield Listener(sock, str(path))
    finally:
        sock.close()
        path.unlink(missing_ok=True)


@pytest.fixture
def abstract_listener() -> Iterator[Listener]:
    name = f"air-relay-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    try:
        yield Listener(sock, "@" + name)
    finally:
        sock.close()


# --- notify ----------------------------------------------------------------------------------


def test_notify_sends_ready_to_a_path_socket(
    path_listener: Listener, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", path_listener.address)
    assert systemd.notify("READY=1") is True
    assert path_listener.receive() == "READY=1"
    assert systemd.notify("STOPPING=1") is True
    assert path_listener.receive() == "STOPPING=1"


def test_notify_sends_to_an_abstract_socket(
    abstract_listener: Listener, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", abstract_listener.address)
    assert abstract_listener.address.startswith("@")
    assert systemd.notify("READY=1") is True
    assert abstract_listener.receive() == "READY=1"


def test_notify_without_notify_socket_is_a_no_op(
    path_listener: Listener, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert systemd.notify("READY=1") is False
    assert path_listener.nothing_within(0.2)
    monkeypatch.setenv("NOTIFY_SOCKET", "")
    assert systemd.notify("READY=1") is False
    assert path_listener.nothing_within(0.2)


def test_notify_to_a_missing_socket_fails_quietly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(_short_dir(tmp_path) / "gone.sock"))
    assert systemd.notify("READY=1") is False
    monkeypatch.setenv("NOTIFY_SOCKET", "@air-relay-test-nobody-listens-" + uuid.uuid4().hex)
    assert systemd.notify("READY=1") is False


def test_notify_ignores_a_relative_or_foreign_address(
    path_listener: Listener, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(Path(path_listener.address).parent)
    monkeypatch.setenv("NOTIFY_SOCKET", "notify.sock")
    assert systemd.notify("READY=1") is False
    monkeypatch.setenv("NOTIFY_SOCKET", "vsock:2:1234")
    assert systemd.notify("READY=1") is False
    assert path_listener.nothing_within(0.2)


# --- watchdog --------------------------------------------------------------------------------


def test_watchdog_interval_is_half_the_period(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert systemd.watchdog_interval() == 15.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert systemd.watchdog_interval() == 15.0


def test_watchdog_meant_for_another_process_is_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert systemd.watchdog_interval() is None


@pytest.mark.parametrize("usec", [None, "", "0", "-5", "soon"])
def test_watchdog_off(usec: str | None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    if usec is None:
        monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    else:
        monkeypatch.setenv("WATCHDOG_USEC", usec)
    assert systemd.watchdog_interval() is None


async def test_watchdog_loop_pings_repeatedly(
    path_listener: Listener, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", path_listener.address)
    task = asyncio.create_task(systemd.watchdog_loop(0.05))
    try:
        first = await asyncio.to_thread(path_listener.receive)
        second = await asyncio.to_thread(path_listener.receive)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert [first, second] == ["WATCHDOG=1", "WATCHDOG=1"]


# --- end to end: air-relay serve under a fake systemd ----------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _get(url: str) -> int:
    with urllib.request.urlopen(url, timeout=5) as resp:
        status: int = resp.status
        return status


async def test_serve_notifies_ready_pings_watchdog_and_stops_on_sigterm(
    db_dsn: str, path_listener: Listener, tmp_path: Path
) -> None:
    port = _free_port()
    cfg_path = tmp_path / "config.yaml"
    cfg_path.write_text(
        yaml.safe_dump(
            {
                "server": {"host": "127.0.0.1", "port": port},
                "database": {"dsn": db_dsn},
                "ingest": {"tokens": [{"token": INGEST_TOKEN, "tenant_id": TENANT}]},
                "logging": {"format": "json", "level": "info"},
            }
        )
    )
    env = {
        **os.environ,
        "NOTIFY_SOCKET": path_listener.address,
        "WATCHDOG_USEC": "200000",  # a 0.2 s period: a ping every 0.1 s
    }
    env.pop("WATCHDOG_PID", None)
    env.pop("AIR_RELAY_CONFIG", None)
    proc = popen_serve(cfg_path, env, stdout=subprocess.PIPE)
    try:
        before_ready = await asyncio.to_thread(path_listener.receive_until, "READY=1", 60)
        assert "WATCHDOG=1" not in before_ready  # the watchdog starts once serving
        # READY=1 means serving: the port answers at once, no retry needed.
        assert await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/healthz") == 200
        assert await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/readyz") == 200
        after_ready = await asyncio.to_thread(path_listener.receive_until, "WATCHDOG=1", 5)
        assert after_ready == ["WATCHDOG=1"]
        # systemctl reload (ExecReload= sends SIGHUP): without server.tls nothing to reload,
        # and the process serves on.
        proc.send_signal(signal.SIGHUP)
        await asyncio.sleep(0.5)
        assert await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/healthz") == 200
        proc.send_signal(signal.SIGTERM)
        await asyncio.to_thread(path_listener.receive_until, "STOPPING=1", 10)
        _, stderr = await asyncio.to_thread(proc.communicate, timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, stderr.decode()
    log = stderr.decode()
    assert '"event": "server_ready"' in log
    assert f'"address": "http://127.0.0.1:{port}"' in log
    assert '"event": "shutdown_complete"' in log
    assert '"event": "reload_skipped"' in log
    # The test's ingest token is short: serve says so (without the token) and serves anyway.
    assert '"event": "weak_credential"' in log
    assert "ingest.tokens[0].token is shorter than 32 characters" in log
    assert INGEST_TOKEN not in log


async def test_serve_reads_its_secrets_from_credentials(
    db_dsn: str, path_listener: Listener, tmp_path: Path
) -> None:
    # As under LoadCredential=: the secrets are files in $CREDENTIALS_DIRECTORY, named after
    # the variables the config names, and absent from the environment.
    token = "credential-ingest-token-5b1f0c2e9d7a4e38b6"
    credentials = tmp_path / "credentials"
    credentials.mkdir(mode=0o700)
    (credentials / "AIR_RELAY_INGEST_TOKEN").write_text(token + "\n")
    port = _free_port()
    cfg_path = tmp_path / "config.yaml"
    cfg_path.write_text(
        yaml.safe_dump(
            {
                "server": {"host": "127.0.0.1", "port": port},
                "database": {"dsn": db_dsn},
                "ingest": {"tokens": [{"token": "${AIR_RELAY_INGEST_TOKEN}", "tenant_id": TENANT}]},
                "logging": {"format": "json", "level": "info"},
            }
        )
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIR_RELAY_", "WATCHDOG_"))}
    env.update(NOTIFY_SOCKET=path_listener.address, CREDENTIALS_DIRECTORY=str(credentials))
    proc = popen_serve(cfg_path, env, stdout=subprocess.DEVNULL)
    try:
        await asyncio.to_thread(path_listener.receive_until, "READY=1", 60)
        event = b'{"eventName": "CaseCreatedEvent", "organizationId": 0, "data": {}}'

        def post(bearer: str) -> int:
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/v1/air/events",
                data=event,
                headers={"Authorization": f"Bearer {bearer}", "Content-Type": "application/json"},
            )
            try:
                with urllib.request.urlopen(request, timeout=5) as resp:
                    status: int = resp.status
            except urllib.error.HTTPError as exc:
                status = exc.code
            return status

        assert await asyncio.to_thread(post, token) == 202
        assert await asyncio.to_thread(post, token + "x") == 401
        proc.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.to_thread(proc.communicate, timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, stderr.decode()
    assert token not in stderr.decode()


# --- socket activation -----------------------------------------------------------------------

PROBE = """
import json, os
from air_relay import systemd
found = systemd.listen_sockets()
print(json.dumps({
    "ports": [s.getsockname()[1] for s in found],
    "fds": [s.fileno() for s in found],
    "inheritable": [os.get_inheritable(s.fileno()) for s in found],
    "left": sorted(k for k in os.environ if k.startswith("LISTEN_")),
}))
"""


def _probe(*prefix: str, env: dict[str, str], passed: tuple[int, ...] = ()) -> dict[str, Any]:
    result = subprocess.run(
        [*prefix, sys.executable, "-c", PROBE],
        env={**os.environ, **env},
        pass_fds=passed,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    found: dict[str, Any] = json.loads(result.stdout)
    return found


def test_listen_sockets_takes_fd_3_when_systemd_passed_it_to_this_process() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        fd, port = listener.fileno(), listener.getsockname()[1]
        found = _probe(sys.executable, "-c", SOCKET_ACTIVATE, str(fd), env={}, passed=(fd,))
    assert found == {
        "ports": [port],
        "fds": [3],
        "inheritable": [False],  # the embedded PostgreSQL must not inherit it
        "left": [],  # nor believe it was meant for it
    }


def test_listen_sockets_ignores_variables_meant_for_another_process() -> None:
    found = _probe(env={"LISTEN_FDS": "1", "LISTEN_PID": "1", "LISTEN_FDNAMES": "x"})
    assert found == {"ports": [], "fds": [], "inheritable": [], "left": []}


def test_serve_refuses_a_passed_descriptor_that_is_not_a_listening_socket(
    tmp_path: Path,
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"database": {"dsn": "postgresql://u@127.0.0.1:9/db"}}))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        fd = udp.fileno()
        activate = [sys.executable, "-c", SOCKET_ACTIVATE, str(fd)]
        result = subprocess.run(
            [*activate, str(AIR_RELAY), "serve", "--config", str(config)],
            env={k: v for k, v in os.environ.items() if not k.startswith("AIR_RELAY_")},
            pass_fds=(fd,),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 1, result.stderr
    assert '"event": "listen_failed"' in result.stderr
    assert "not a listening TCP socket" in result.stderr


# --- the unit file ---------------------------------------------------------------------------


def _unit() -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(UNIT)
    return parser


def test_unit_is_a_sandboxed_notify_service() -> None:
    svc = _unit()["Service"]
    assert svc["Type"] == "notify"
    assert svc["ExecStart"] == (
        "/opt/air-relay/venv/bin/air-relay serve --config /etc/air-relay/config.yaml"
    )
    assert svc["User"] == svc["Group"] == "air-relay"
    # Optional ("-"): the secrets may come as credentials instead (test_unit_takes_credentials).
    assert svc["EnvironmentFile"] == "-/etc/air-relay/air-relay.env"
    assert svc["StateDirectory"] == "air-relay"
    assert svc["ReadWritePaths"] == "/var/lib/air-relay"
    assert svc["Restart"] == "on-failure"
    assert svc["ExecReload"] == "/bin/kill -HUP $MAINPID"
    # A bad configuration exits 2: restarting it every RestartSec would only loop.
    assert svc["RestartPreventExitStatus"] == "2"
    assert svc["KillSignal"] == "SIGTERM"
    assert svc["CapabilityBoundingSet"] == ""
    assert svc["ProtectSystem"] == "strict"
    # The daemon pings every WatchdogSec/2; stopping must outlast the delivery drain.
    assert int(svc["WatchdogSec"]) == 30
    assert int(svc["TimeoutStopSec"]) > 10 + 5  # delivery.timeout_seconds + HTTP shutdown


def test_unit_points_state_dir_at_the_state_directory() -> None:
    text = UNIT.read_text()
    assert "Environment=AIR_RELAY_STATE_DIR=/var/lib/air-relay" in text
    assert "${AIR_RELAY_STATE_DIR:-" in (ROOT / "config.example.yaml").read_text()


def test_env_example_names_every_variable_the_example_config_requires() -> None:
    def strings(node: object) -> list[str]:
        if isinstance(node, dict):
            return [s for v in node.values() for s in strings(v)]
        if isinstance(node, list):
            return [s for v in node for s in strings(v)]
        return [node] if isinstance(node, str) else []

    values = strings(yaml.safe_load((ROOT / "config.example.yaml").read_text()))
    # ${VAR} without a default: start-up fails unless the environment has it.
    required = {n for v in values for n in re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", v)}
    assert "AIR_RELAY_INGEST_TOKEN" in required
    listed = set(re.findall(r"^#?([A-Z_][A-Z0-9_]*)=", ENV_EXAMPLE.read_text(), re.MULTILINE))
    assert required <= listed
    assert {"SLACK_BOT_TOKEN", "AIR_RELAY_DATABASE_DSN"} <= listed


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze missing")
def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    unit = _analyze_copy(tmp_path)
    socket_unit = tmp_path / "air-relay.socket"
    socket_unit.write_text(SOCKET_UNIT.read_text())
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit), str(socket_unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    ours = [line for line in result.stderr.splitlines() if "air-relay." in line]
    assert result.returncode == 0, result.stderr
    assert ours == []


def test_socket_unit_listens_where_serve_would() -> None:
    parser = configparser.RawConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(SOCKET_UNIT)
    sock = parser["Socket"]
    # The service of the same name gets the socket; it listens where the default config would.
    default = Config().server
    assert sock["ListenStream"] == f"{default.host}:{default.port}"
    assert int(sock["Backlog"]) >= 1024  # what waits through a restart
    assert parser["Install"]["WantedBy"] == "sockets.target"


def _values(key: str) -> list[str]:
    """Every value given to ``key`` in [Service], in order (a key may be given many times)."""
    values, section = [], ""
    for line in UNIT.read_text().splitlines():
        if line.startswith("["):
            section = line.strip()
        elif section == "[Service]" and line.startswith(f"{key}="):
            values.append(line.split("=", 1)[1])
    return values


def test_unit_filters_system_calls() -> None:
    assert _values("SystemCallArchitectures") == ["native"]
    # Allow @system-service, then take away what neither the daemon nor PostgreSQL calls.
    assert _values("SystemCallFilter") == ["@system-service", "~@privileged @resources"]
    assert _values("SystemCallErrorNumber") == ["EPERM"]


def test_unit_allows_every_address_but_link_local_and_multicast() -> None:
    assert _values("IPAddressDeny") == ["any"]
    allowed = [ipaddress.ip_network(n) for v in _values("IPAddressAllow") for n in v.split()]
    denied = [
        ipaddress.ip_network(n) for n in ("169.254.0.0/16", "224.0.0.0/4", "fe80::/10", "ff00::/8")
    ]
    # Exactly the complement: no gap, no overlap, nothing of the denied ranges.
    for version, universe in ((4, "0.0.0.0/0"), (6, "::/0")):
        ours = sorted(n for n in allowed if n.version == version)
        pieces = [ipaddress.ip_network(universe)]
        for net in (d for d in denied if d.version == version):
            pieces = [p for piece in pieces for p in _without(piece, net)]
        assert ours == sorted(ipaddress.collapse_addresses(pieces))
    for probe in ("169.254.169.254", "fe80::1", "224.0.0.251", "ff02::fb"):
        assert not any(ipaddress.ip_address(probe) in n for n in allowed), probe
    for probe in ("127.0.0.1", "::1", "10.1.2.3", "8.8.8.8", "2001:db8::1", "255.255.255.255"):
        assert any(ipaddress.ip_address(probe) in n for n in allowed), probe


def _without(net: Any, hole: Any) -> list[Any]:
    """``net`` less the addresses of ``hole`` (of the same IP version), as networks."""
    if hole.subnet_of(net):
        return list(net.address_exclude(hole))
    return [] if net.subnet_of(hole) else [net]


def test_unit_limits_resources_to_fit_the_defaults() -> None:
    svc = _unit()["Service"]
    assert int(svc["LimitNOFILE"]) >= open_files_needed(Config())
    assert int(svc["TasksMax"]) >= 256
    assert svc["MemoryMax"] == "1G"
    assert svc["PrivateUsers"] == "yes"


def test_unit_takes_credentials_for_the_env_example_variables() -> None:
    # The drop-in example in the unit's comment loads one credential per secret variable,
    # named after it: what ${VAR} in the config falls back to.
    loaded = re.findall(r"^#\s+LoadCredential=([A-Z_]+):(\S+)$", UNIT.read_text(), re.MULTILINE)
    names = {name for name, _ in loaded}
    assert {"AIR_RELAY_INGEST_TOKEN", "AIR_RELAY_API_KEY", "SLACK_BOT_TOKEN"} <= names
    assert all(path.endswith(f"/{name}") for name, path in loaded)


def _analyze_copy(tmp_path: Path) -> Path:
    # verify insists that ExecStart exists: point it at this checkout's console script.
    unit = tmp_path / "air-relay.service"
    unit.write_text(UNIT.read_text().replace("/opt/air-relay/venv/bin/air-relay", str(AIR_RELAY)))
    return unit


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze missing")
def test_unit_exposure_is_at_most_1_0() -> None:
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", str(UNIT)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert found, result.stdout + result.stderr
    assert float(found.group(1)) <= 1.0, result.stdout
