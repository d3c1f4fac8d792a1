"""The ``air-relay`` console script, run for real as a subprocess: check-config,
AIR_RELAY_CONFIG, exit codes, and ``migrate`` against a real, empty PostgreSQL database."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import yaml

from air_relay import __version__
from air_relay.db.migrate import available_migrations
from tests.support import scratch_database, with_database

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "config.example.yaml"


def _console_script() -> str:
    beside = Path(sys.executable).parent / "air-relay"
    if beside.exists():
        return str(beside)
    found = shutil.which("air-relay")
    assert found, "the air-relay console script is not installed (pip install -e .)"
    return found


AIR_RELAY = _console_script()
SECRETS = {
    "AIR_RELAY_INGEST_TOKEN": "cli-ingest-secret-4f1d",
    "AIR_RELAY_API_KEY": "cli-api-secret-9a2c",
    "SLACK_BOT_TOKEN": "xoxb-cli-secret-77e0",
}


def clean_env(**extra: str) -> dict[str, str]:
    """The test process's environment without anything air-relay would read, plus ``extra``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AIR_RELAY_", "NOTIFY_SOCKET", "WATCHDOG_")) and k != "SLACK_BOT_TOKEN"
    }
    env.update(extra)
    return env


def run(
    *args: str, env: Mapping[str, str] | None = None, cwd: Path = ROOT, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [AIR_RELAY, *args],
        env=clean_env() if env is None else dict(env),
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def write_config(path: Path, data: dict[str, Any] | str) -> Path:
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


# --- check-config ----------------------------------------------------------------------------


def test_check_config_prints_the_effective_config_without_secrets() -> None:
    dsn = "postgresql://relay:db-pass-0b5e@db.internal:5432/air"
    result = run(
        "check-config",
        "--config",
        str(EXAMPLE),
        env=clean_env(**SECRETS, AIR_RELAY_DATABASE_DSN=dsn, AIR_RELAY_STATE_DIR="/srv/ar"),
    )
    assert result.returncode == 0, result.stderr
    for secret in [*SECRETS.values(), "db-pass-0b5e"]:
        assert secret not in result.stdout
        assert secret not in result.stderr
    printed = yaml.safe_load(result.stdout)
    assert printed["ingest"]["tokens"] == [
        {"token": "***", "tenant_id": "00000000-0000-0000-0000-000000000000"}
    ]
    assert printed["api"]["keys"] == [{"key": "***", "tenant_ids": ["*"]}]
    assert printed["slack"]["integrations"] == {
        "00000000-0000-0000-0000-000000000001": {"bot_token": "***"}
    }
    assert printed["database"]["dsn"] == "postgresql://relay:***@db.internal:5432/air"
    assert printed["state_dir"] == "/srv/ar"
    # Effective config: defaults and example values are all there, fully spelled out.
    assert printed["server"] == {
        "host": "127.0.0.1",
        "port": 8080,
        "max_body_bytes": 1048576,
        "header_timeout_seconds": 10.0,
        "body_timeout_seconds": 10.0,
        "body_min_bytes_per_second": 1024,
        "keepalive_timeout_seconds": 75.0,
        "max_connections": 2048,
        "tls": {"cert_file": None, "key_file": None},
    }
    assert printed["delivery"]["retry"]["schedule_seconds"][-1] == 43200


def _documented_placeholders() -> dict[str, str]:
    """The credentials the docs hand out: the Quickstart's and the env example's."""
    quickstart = (ROOT / "README.md").read_text()
    env_example = (ROOT / "systemd" / "air-relay.env.example").read_text()
    found = {}
    for name in ("AIR_RELAY_INGEST_TOKEN", "AIR_RELAY_API_KEY"):
        found[f"quickstart {name}"] = re.findall(rf"\b{name}=(\S+)", quickstart)[0]
        found[f"env example {name}"] = re.findall(rf"^{name}=(\S+)$", env_example, re.M)[0]
    return found


STRONG = "Vq3hX9d0bK7mR2sT5wY8zA1cE4fG6jL0nP"  # 34 characters


@pytest.mark.parametrize(
    ("origin", "value"), sorted(_documented_placeholders().items()), ids=lambda v: str(v)
)
def test_check_config_warns_of_a_documented_placeholder(origin: str, value: str) -> None:
    variable = origin.split()[-1]
    strong = {"AIR_RELAY_INGEST_TOKEN": STRONG, "AIR_RELAY_API_KEY": STRONG[::-1]}
    env = clean_env(**{**SECRETS, **strong, variable: value})
    result = run("check-config", "--config", str(EXAMPLE), env=env)
    # A valid configuration: exit 0 and the effective config on stdout, the warning beside it.
    assert result.returncode == 0, result.stderr
    assert yaml.safe_load(result.stdout)["server"]["port"] == 8080
    warnings = [line for line in result.stderr.splitlines() if "warning" in line]
    key = "ingest.tokens[0].token" if variable == "AIR_RELAY_INGEST_TOKEN" else "api.keys[0].key"
    assert len(warnings) == 1, result.stderr
    assert key in warnings[0]
    assert "example placeholder" in warnings[0]
    assert value not in result.stderr and value not in result.stdout


@pytest.mark.parametrize("length", [1, 31])
def test_check_config_warns_of_a_short_token_or_key(length: int, tmp_path: Path) -> None:
    short = STRONG[:length]
    path = write_config(
        tmp_path / "c.yaml",
        {
            "ingest": {
                "tokens": [{"token": STRONG, "tenant_id": "t"}, {"token": short, "tenant_id": "u"}]
            },
            "api": {"keys": [{"key": short[::-1]}, {"key": STRONG[::-1]}]},
        },
    )
    result = run("check-config", "--config", str(path))
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 2, result.stderr
    assert "ingest.tokens[1].token is shorter than 32 characters" in warnings[0]
    assert "api.keys[0].key is shorter than 32 characters" in warnings[1]
    assert "secrets.token_urlsafe" in warnings[0]  # and how to make a good one
    if length > 1:  # one letter could be anywhere in the message
        assert short not in result.stderr


def test_check_config_is_quiet_with_strong_credentials(tmp_path: Path) -> None:
    path = write_config(
        tmp_path / "c.yaml",
        {
            "ingest": {"tokens": [{"token": STRONG[:32], "tenant_id": "t"}]},
            "api": {"keys": [{"key": STRONG[::-1]}]},
        },
    )
    result = run("check-config", "--config", str(path))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


def test_check_config_reads_secrets_from_systemd_credentials(tmp_path: Path) -> None:
    # The example config, its secrets as LoadCredential= files and not in the environment.
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    for name, value in SECRETS.items():
        (credentials / name).write_text(value + "\n")
    result = run(
        "check-config",
        "--config",
        str(EXAMPLE),
        env=clean_env(CREDENTIALS_DIRECTORY=str(credentials)),
    )
    assert result.returncode == 0, result.stderr
    for secret in SECRETS.values():
        assert secret not in result.stdout + result.stderr
    printed = yaml.safe_load(result.stdout)
    assert printed["ingest"]["tokens"][0]["token"] == "***"


def serving(**data: Any) -> dict[str, Any]:
    """A config check-config accepts: ``data`` plus an ingest token and an API key."""
    return {
        "ingest": {"tokens": [{"token": STRONG, "tenant_id": "t"}]},
        "api": {"keys": [{"key": STRONG[::-1], "tenant_ids": ["*"]}]},
        **data,
    }


def test_config_from_air_relay_config_env(tmp_path: Path) -> None:
    path = write_config(tmp_path / "c.yaml", serving(server={"port": 9191}))
    result = run("check-config", env=clean_env(AIR_RELAY_CONFIG=str(path)))
    assert result.returncode == 0, result.stderr
    assert yaml.safe_load(result.stdout)["server"]["port"] == 9191


def test_explicit_config_wins_over_env(tmp_path: Path) -> None:
    from_env = write_config(tmp_path / "env.yaml", serving(server={"port": 1111}))
    explicit = write_config(tmp_path / "arg.yaml", serving(server={"port": 2222}))
    result = run(
        "check-config", "--config", str(explicit), env=clean_env(AIR_RELAY_CONFIG=str(from_env))
    )
    assert result.returncode == 0, result.stderr
    assert yaml.safe_load(result.stdout)["server"]["port"] == 2222


@pytest.mark.parametrize("command", ["check-config", "migrate", "serve"])
def test_no_config_at_all_exits_2(command: str) -> None:
    result = run(command)
    assert result.returncode == 2
    assert "--config" in result.stderr
    assert "AIR_RELAY_CONFIG" in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("delivery: {retry: {schedule_seconds: [5, x]}}\n", "delivery.retry.schedule_seconds[1]"),
        ("servr:\n  port: 1\n", "servr"),
        ("ingest:\n  tokens:\n    - token: t\n", "ingest.tokens[0].tenant_id"),
        ("server:\n  port: 0\n", "server.port"),
    ],
)  # fmt: skip
@pytest.mark.parametrize("command", ["check-config", "migrate", "serve"])
def test_bad_config_exits_2_naming_the_key(
    command: str, text: str, key: str, tmp_path: Path
) -> None:
    path = write_config(tmp_path / "bad.yaml", text)
    result = run(command, "--config", str(path))
    assert result.returncode == 2
    assert key in result.stderr
    assert result.stdout == ""


def test_example_without_its_env_exits_2_naming_the_variable() -> None:
    result = run("check-config", "--config", str(EXAMPLE))
    assert result.returncode == 2
    assert "ingest.tokens[0].token" in result.stderr
    assert "AIR_RELAY_INGEST_TOKEN" in result.stderr


def test_check_config_names_every_missing_variable_at_once() -> None:
    result = run("check-config", "--config", str(EXAMPLE), env=clean_env())
    assert result.returncode == 2
    for variable in ("AIR_RELAY_INGEST_TOKEN", "AIR_RELAY_API_KEY"):  # both, not the first
        assert f"environment variable {variable} is not set" in result.stderr, result.stderr
    assert result.stdout == ""


def test_check_config_names_a_bad_variable_and_its_value_but_never_a_secret(
    tmp_path: Path,
) -> None:
    data = serving(server={"port": "${AIR_RELAY_PORT}"})
    data["api"]["keys"][0]["key"] = "${AIR_RELAY_API_KEY}"
    path = write_config(tmp_path / "c.yaml", yaml.safe_dump(data))
    env = clean_env(AIR_RELAY_PORT="abc", AIR_RELAY_API_KEY=STRONG)
    result = run("check-config", "--config", str(path), env=env)
    assert result.returncode == 2
    assert "server.port: ${AIR_RELAY_PORT}='abc' is not an integer" in result.stderr
    data["api"]["keys"][0]["tenant_ids"] = "${AIR_RELAY_API_KEY}"  # a secret in the wrong place
    data["server"] = {}
    path = write_config(tmp_path / "c.yaml", yaml.safe_dump(data))
    result = run("check-config", "--config", str(path), env=env)
    assert result.returncode == 2
    assert "api.keys[0].tenant_ids: ${AIR_RELAY_API_KEY} (value not shown)" in result.stderr
    assert STRONG not in result.stderr


def test_check_config_names_the_full_path_of_a_duplicate_key(tmp_path: Path) -> None:
    text = yaml.safe_dump(serving()) + "api:\n  keys: []\n"
    path = write_config(tmp_path / "c.yaml", text)
    result = run("check-config", "--config", str(path))
    assert result.returncode == 2
    line = len(yaml.safe_dump(serving()).splitlines()) + 1
    assert f"duplicate key api at line {line}" in result.stderr
    nested = "api:\n  keys: []\n  max_sinks_per_tenant: 3\n  keys: []\n"
    result = run("check-config", "--config", str(write_config(tmp_path / "d.yaml", nested)))
    assert result.returncode == 2
    assert "duplicate key api.keys at line 4 (given twice: first at line 2" in result.stderr


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", ["the configuration is empty"]),
        ("# nothing but a comment\n", ["the configuration is empty"]),
        ("server: {port: 9000}\n", ["ingest.tokens: is empty", "api.keys: is empty"]),
    ],
)
def test_check_config_refuses_a_config_that_cannot_serve(
    text: str, expected: list[str], tmp_path: Path
) -> None:
    result = run("check-config", "--config", str(write_config(tmp_path / "c.yaml", text)))
    assert result.returncode == 2
    for message in expected:
        assert f"air-relay: invalid configuration: {message}" in result.stderr, result.stderr
    assert result.stdout == ""


def test_check_config_refuses_a_server_host_that_is_not_an_address(tmp_path: Path) -> None:
    path = write_config(tmp_path / "c.yaml", serving(server={"host": "http://0.0.0.0:8080"}))
    result = run("check-config", "--config", str(path))
    assert result.returncode == 2
    assert "server.host: 'http://0.0.0.0:8080' is not an address" in result.stderr


def test_missing_config_file_exits_2(tmp_path: Path) -> None:
    result = run("check-config", "--config", str(tmp_path / "absent.yaml"))
    assert result.returncode == 2
    assert "absent.yaml" in result.stderr


def test_version() -> None:
    result = run("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"air-relay {__version__}"


def test_python_dash_m_is_the_same_command(tmp_path: Path) -> None:
    path = write_config(tmp_path / "c.yaml", serving(server={"port": 9292}))
    result = subprocess.run(
        [sys.executable, "-m", "air_relay", "check-config", "--config", str(path)],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert yaml.safe_load(result.stdout)["server"]["port"] == 9292


# --- migrate ---------------------------------------------------------------------------------


@pytest.fixture
async def empty_dsn(server_dsn: str) -> AsyncIterator[str]:
    """A brand-new, unmigrated database (db_dsn is cloned from an already migrated one)."""
    async with scratch_database(server_dsn) as dsn:
        yield dsn


async def _tables(dsn: str) -> set[str]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
        )
    finally:
        await conn.close()
    return {r["table_name"] for r in rows}


async def _versions(dsn: str) -> list[int]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT version FROM air_relay_schema_migrations ORDER BY 1")
    finally:
        await conn.close()
    return [r["version"] for r in rows]


def _log_events(stderr: str) -> list[dict[str, Any]]:
    events = []
    for line in stderr.splitlines():
        if line.startswith("{"):
            events.append(json.loads(line))
    return events


def migrate_config(tmp_path: Path, dsn: str) -> Path:
    return write_config(
        tmp_path / "migrate.yaml",
        {"database": {"dsn": dsn}, "logging": {"format": "json", "level": "info"}},
    )


async def test_migrate_creates_the_schema_and_is_idempotent(empty_dsn: str, tmp_path: Path) -> None:
    assert await _tables(empty_dsn) == set()
    path = migrate_config(tmp_path, empty_dsn)

    first = await asyncio.to_thread(run, "migrate", "--config", str(path))
    assert first.returncode == 0, first.stderr
    tables = await _tables(empty_dsn)
    assert {
        "air_relay_schema_migrations",
        "event_sinks",
        "events",
        "deliveries",
        "delivery_attempts",
    } <= tables
    versions = await _versions(empty_dsn)
    assert versions == [m.version for m in available_migrations()]
    done = [e for e in _log_events(first.stderr) if e.get("event") == "migrations_done"]
    assert done and done[0]["applied"] == versions

    second = await asyncio.to_thread(run, "migrate", "--config", str(path))
    assert second.returncode == 0, second.stderr
    assert await _tables(empty_dsn) == tables
    assert await _versions(empty_dsn) == versions
    done = [e for e in _log_events(second.stderr) if e.get("event") == "migrations_done"]
    assert done and done[0]["applied"] == []


async def test_two_migrates_at_once_are_safe(empty_dsn: str, tmp_path: Path) -> None:
    path = migrate_config(tmp_path, empty_dsn)
    results = await asyncio.gather(
        asyncio.to_thread(run, "migrate", "--config", str(path)),
        asyncio.to_thread(run, "migrate", "--config", str(path)),
    )
    assert [r.returncode for r in results] == [0, 0], [r.stderr for r in results]
    assert await _versions(empty_dsn) == [m.version for m in available_migrations()]


def test_migrate_gives_up_on_an_unreachable_database(tmp_path: Path) -> None:
    # Port 9 on loopback: nothing listens, the connection is refused at once.
    path = migrate_config(tmp_path, "postgresql://relay:pw@127.0.0.1:9/air")
    result = run("migrate", "--config", str(path), "--wait", "1", timeout=60)
    assert result.returncode == 1
    failed = [e for e in _log_events(result.stderr) if e.get("event") == "migrate_failed"]
    assert failed, result.stderr
    assert "pw@" not in result.stderr


async def test_migrate_reports_a_missing_database(server_dsn: str, tmp_path: Path) -> None:
    dsn = with_database(server_dsn, f"air_relay_absent_{uuid.uuid4().hex[:8]}")
    path = migrate_config(tmp_path, dsn)
    result = await asyncio.to_thread(run, "migrate", "--config", str(path), "--wait", "5")
    assert result.returncode == 1
    failed = [e for e in _log_events(result.stderr) if e.get("event") == "migrate_failed"]
    assert failed and "does not exist" in failed[0]["error"], result.stderr


def test_migrate_reports_an_unusable_dsn(tmp_path: Path) -> None:
    path = migrate_config(tmp_path, "postgresql://relay:pw@127.0.0.1:notaport/air")
    result = run("migrate", "--config", str(path), "--wait", "1", timeout=60)
    # Caught when the config loads: exit 2 naming the key, before any connection attempt.
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "database.dsn" in result.stderr


@pytest.mark.parametrize(
    "command", [[], ["serve"], ["migrate"], ["check-config"], ["audit"], ["audit", "verify"]]
)
def test_help_is_plain_text(command: list[str]) -> None:
    result = subprocess.run(
        [AIR_RELAY, *command, "--help"], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "usage: air-relay" in result.stdout
    # Docstring markup (reStructuredText backticks) has no place in a terminal.
    assert "``" not in result.stdout
    if command and command != ["audit"]:
        assert "--config PATH" in result.stdout
