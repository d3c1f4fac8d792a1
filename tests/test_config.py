"""The configuration contract: ${VAR} expansion, errors that name the dotted key,
value checks, defaults and redaction."""

from __future__ import annotations

import dataclasses
import textwrap
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from air_relay.config import (
    ApiKey,
    Config,
    ConfigError,
    expand_env,
    load_config,
    parse_config,
    redacted,
)

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "config.example.yaml"
EXAMPLE_ENV = {
    "AIR_RELAY_INGEST_TOKEN": "ingest-secret-value-1",
    "AIR_RELAY_API_KEY": "api-secret-value-2",
    "SLACK_BOT_TOKEN": "xoxb-secret-value-3",
}


def parse(text: str, **env: str) -> Config:
    return parse_config(textwrap.dedent(text), env=env)


def config_error(text: str, **env: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse(text, **env)
    return info.value


# --- ${VAR} expansion ------------------------------------------------------------------------


def test_var_is_replaced_by_its_value() -> None:
    cfg = parse(
        """
        ingest:
          tokens:
            - token: ${TOKEN}
              tenant_id: ${TENANT}
        """,
        TOKEN="abc123",
        TENANT="t-1",
    )
    assert cfg.ingest.tokens[0].token == "abc123"
    assert cfg.ingest.tokens[0].tenant_id == "t-1"


def test_default_is_used_when_var_is_unset_or_empty() -> None:
    text = "state_dir: ${STATE:-/var/lib/air-relay}\n"
    assert parse(text).state_dir == "/var/lib/air-relay"
    assert parse(text, STATE="").state_dir == "/var/lib/air-relay"
    assert parse(text, STATE="/srv/relay").state_dir == "/srv/relay"


def test_empty_default_gives_empty_string() -> None:
    # config.example.yaml: an unset AIR_RELAY_DATABASE_DSN means the embedded server.
    cfg = parse("database:\n  dsn: ${AIR_RELAY_DATABASE_DSN:-}\n")
    assert cfg.database.dsn == ""
    assert not cfg.database.dsn


def test_vars_inside_a_longer_string() -> None:
    cfg = parse(
        "database:\n  dsn: postgresql://relay:${PW}@${HOST:-db.internal}:5432/${DB:-air}\n",
        PW="pa55",
        DB="relay_prod",
    )
    assert cfg.database.dsn == "postgresql://relay:pa55@db.internal:5432/relay_prod"


def test_numbers_and_booleans_from_env_arrive_as_text_and_are_converted() -> None:
    cfg = parse(
        """
        server:
          port: ${PORT}
          max_body_bytes: ${MAX_BODY:-2048}
        delivery:
          timeout_seconds: ${TIMEOUT}
          allow_private_destinations: ${ALLOW_PRIVATE}
          retry:
            schedule_seconds: ["${FIRST}", 30]
        """,
        PORT="9090",
        TIMEOUT="2.5",
        ALLOW_PRIVATE="true",
        FIRST="7",
    )
    assert cfg.server.port == 9090
    assert isinstance(cfg.server.port, int)
    assert cfg.server.max_body_bytes == 2048
    assert cfg.delivery.timeout_seconds == 2.5
    assert cfg.delivery.allow_private_destinations is True
    assert cfg.delivery.retry.schedule_seconds == [7.0, 30.0]


def test_boolean_text_false() -> None:
    cfg = parse("delivery:\n  allow_private_destinations: ${X}\n", X="False")
    assert cfg.delivery.allow_private_destinations is False


def test_non_numeric_env_value_for_a_number_names_the_key() -> None:
    err = config_error("server:\n  port: ${PORT}\n", PORT="eighty")
    assert err.key == "server.port"
    assert "integer" in str(err)


def test_unset_var_without_default_names_key_and_variable() -> None:
    err = config_error(
        """
        ingest:
          tokens:
            - token: ${AIR_RELAY_INGEST_TOKEN}
              tenant_id: t-1
        """
    )
    assert err.key == "ingest.tokens[0].token"
    assert str(err).startswith("ingest.tokens[0].token:")
    assert "AIR_RELAY_INGEST_TOKEN" in str(err)


def test_unset_var_in_a_list_item_names_the_index() -> None:
    err = config_error('delivery:\n  retry:\n    schedule_seconds: [5, "${LATER}"]\n')
    assert err.key == "delivery.retry.schedule_seconds[1]"


def test_expansion_is_not_recursive() -> None:
    # A value that itself looks like ${...} is taken literally, never expanded again.
    assert expand_env("${A}", {"A": "${B}", "B": "oops"}, "k") == "${B}"


# --- systemd credentials ---------------------------------------------------------------------


def credentials(tmp_path: Path, **files: str) -> dict[str, str]:
    """A $CREDENTIALS_DIRECTORY holding ``files`` (as LoadCredential= lays it out)."""
    directory = tmp_path / "credentials"
    directory.mkdir()
    for name, text in files.items():
        (directory / name).write_text(text)
    return {"CREDENTIALS_DIRECTORY": str(directory)}


def test_an_unset_variable_is_read_from_the_credential_of_its_name(tmp_path: Path) -> None:
    env = credentials(tmp_path, AIR_RELAY_INGEST_TOKEN="from-a-credential\n", PORT="9090")
    text = "ingest:\n  tokens:\n    - {token: '${AIR_RELAY_INGEST_TOKEN}', tenant_id: t}\n"
    cfg = parse(text + "server:\n  port: ${PORT}\n", **env)
    # One trailing newline (as `echo` leaves it) is not part of the secret.
    assert cfg.ingest.tokens[0].token == "from-a-credential"
    assert cfg.server.port == 9090


def test_the_environment_wins_over_a_credential(tmp_path: Path) -> None:
    env = credentials(tmp_path, TOKEN="from-a-credential")
    assert expand_env("${TOKEN}", {**env, "TOKEN": "from-the-env"}, "k") == "from-the-env"
    # Set but empty counts as unset, as for ${VAR:-default}.
    assert expand_env("${TOKEN}", {**env, "TOKEN": ""}, "k") == "from-a-credential"
    assert expand_env("${OTHER:-fallback}", env, "k") == "fallback"


def test_no_credential_either_names_the_variable_and_the_directory(tmp_path: Path) -> None:
    env = credentials(tmp_path)
    with pytest.raises(ConfigError) as err:
        expand_env("${AIR_RELAY_API_KEY}", env, "api.keys[0].key")
    assert err.value.key == "api.keys[0].key"
    assert "AIR_RELAY_API_KEY" in str(err.value)
    assert "CREDENTIALS_DIRECTORY" in str(err.value)


def test_an_unreadable_credential_names_the_key(tmp_path: Path) -> None:
    env = credentials(tmp_path)
    (Path(env["CREDENTIALS_DIRECTORY"]) / "TOKEN").mkdir()  # a directory: not readable text
    with pytest.raises(ConfigError) as err:
        expand_env("${TOKEN}", env, "ingest.tokens[0].token")
    assert err.value.key == "ingest.tokens[0].token"
    assert "credential" in str(err.value)


@given(
    value=st.text(
        alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"),
        min_size=1,
    )
)
def test_any_set_value_is_substituted_verbatim(value: str) -> None:
    assert expand_env("x-${V}-y", {"V": value}, "k") == f"x-{value}-y"
    assert expand_env("${V:-fallback}", {"V": value}, "k") == value


# --- unknown keys, wrong types, missing values -----------------------------------------------


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("servr:\n  port: 1\n", "servr"),
        ("delivery:\n  retry:\n    schedule: [1]\n", "delivery.retry.schedule"),
        (
            "ingest:\n  tokens:\n    - {token: a, tenant_id: t, tenant: x}\n",
            "ingest.tokens[0].tenant",
        ),
        (
            "slack:\n  integrations:\n    i-1: {bot_token: b, channel: c}\n",
            "slack.integrations.i-1.channel",
        ),
    ],
)
def test_unknown_key_is_refused_by_name(text: str, key: str) -> None:
    err = config_error(text)
    assert err.key == key
    assert "unknown key" in str(err)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        (
            "delivery:\n  retry:\n    schedule_seconds: [5, soon, 60]\n",
            "delivery.retry.schedule_seconds[1]",
        ),
        ("delivery:\n  retry:\n    schedule_seconds: 5\n", "delivery.retry.schedule_seconds"),
        ("server:\n  port: http\n", "server.port"),
        ("server:\n  port: 8080.5\n", "server.port"),
        ("server:\n  port: true\n", "server.port"),
        ("server: [1, 2]\n", "server"),
        ("api:\n  keys:\n    - {key: k, tenant_ids: '*'}\n", "api.keys[0].tenant_ids"),
        ("delivery:\n  allow_private_destinations: maybe\n", "delivery.allow_private_destinations"),
        ("delivery:\n  allow_private_destinations: 1\n", "delivery.allow_private_destinations"),
        ("delivery:\n  timeout_seconds: [1]\n", "delivery.timeout_seconds"),
        ("logging:\n  level: {a: 1}\n", "logging.level"),
        ("slack:\n  integrations: [a, b]\n", "slack.integrations"),
        ("ingest:\n  tokens:\n    - just-a-string\n", "ingest.tokens[0]"),
    ],
)
def test_wrong_type_names_the_dotted_key(text: str, key: str) -> None:
    err = config_error(text)
    assert err.key == key
    assert str(err).startswith(f"{key}: must be")


def test_top_level_must_be_a_mapping() -> None:
    err = config_error("- a\n- b\n")
    assert "mapping" in str(err)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("ingest:\n  tokens:\n    - token: abc\n", "ingest.tokens[0].tenant_id"),
        ("ingest:\n  tokens:\n    - tenant_id: t\n", "ingest.tokens[0].token"),
        ("api:\n  keys:\n    - tenant_ids: ['*']\n", "api.keys[0].key"),
        ("slack:\n  integrations:\n    i-1: {}\n", "slack.integrations.i-1.bot_token"),
    ],
)
def test_missing_required_value_names_the_key(text: str, key: str) -> None:
    err = config_error(text)
    assert err.key == key
    assert "required" in str(err)


def test_a_key_given_twice_is_refused() -> None:
    err = config_error("server:\n  port: 1\nserver:\n  port: 2\n")
    assert err.key == "server"
    assert "twice" in str(err)
    assert "line 3" in str(err)


def test_invalid_yaml() -> None:
    err = config_error("server: [unclosed\n")
    assert "not valid YAML" in str(err)


# --- value checks ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("server:\n  port: 0\n", "server.port"),
        ("server:\n  port: 65536\n", "server.port"),
        ("server:\n  max_body_bytes: 0\n", "server.max_body_bytes"),
        ("server:\n  host: ''\n", "server.host"),
        ("server:\n  header_timeout_seconds: 0\n", "server.header_timeout_seconds"),
        ("server:\n  body_timeout_seconds: 0\n", "server.body_timeout_seconds"),
        ("server:\n  body_min_bytes_per_second: 0\n", "server.body_min_bytes_per_second"),
        ("server:\n  keepalive_timeout_seconds: -1\n", "server.keepalive_timeout_seconds"),
        ("server:\n  max_connections: 0\n", "server.max_connections"),
        ("ingest:\n  path: v1/air/events\n", "ingest.path"),
        ("delivery:\n  concurrency: 0\n", "delivery.concurrency"),
        ("delivery:\n  timeout_seconds: -1\n", "delivery.timeout_seconds"),
        ("delivery:\n  timeout_seconds: .nan\n", "delivery.timeout_seconds"),
        ("delivery:\n  timeout_seconds: .inf\n", "delivery.timeout_seconds"),
        ("delivery:\n  retry:\n    attempts_per_claim: 0\n", "delivery.retry.attempts_per_claim"),
        (
            "delivery:\n  retry:\n    schedule_seconds: [5, 30, -1]\n",
            "delivery.retry.schedule_seconds[2]",
        ),
        ("delivery:\n  retry:\n    jitter: 1\n", "delivery.retry.jitter"),
        ("delivery:\n  retry:\n    jitter: -0.1\n", "delivery.retry.jitter"),
        (
            "delivery:\n  retry:\n    backoff_initial_seconds: 9\n    backoff_max_seconds: 1\n",
            "delivery.retry.backoff_initial_seconds",
        ),
        ("database:\n  pool_min_size: 5\n  pool_max_size: 2\n", "database.pool_min_size"),
        ("database:\n  pool_max_size: 0\n  pool_min_size: 0\n", "database.pool_max_size"),
        ("database:\n  acquire_timeout_seconds: 0\n", "database.acquire_timeout_seconds"),
        ("logging:\n  format: xml\n", "logging.format"),
        ("logging:\n  level: verbose\n", "logging.level"),
        ("slack:\n  api_base_url: slack.com/api\n", "slack.api_base_url"),
        ("pagerduty:\n  events_url: ftp://events.pagerduty.com\n", "pagerduty.events_url"),
        ("state_dir: ''\n", "state_dir"),
        ("database:\n  dsn: host=db dbname=air\n", "database.dsn"),
        ("database:\n  dsn: mysql://db/air\n", "database.dsn"),
        (
            "database:\n  dsn: postgresql://db/air\n  listen_dsn: host=db dbname=air\n",
            "database.listen_dsn",
        ),
        ("database:\n  listen_dsn: postgresql://db/air\n", "database.listen_dsn"),
        ("api:\n  keys:\n    - {key: k, tenant_ids: []}\n", "api.keys[0].tenant_ids"),
        ("api:\n  keys:\n    - {key: k, tenant_ids: ['']}\n", "api.keys[0].tenant_ids[0]"),
        ("audit:\n  seal_interval_seconds: 0\n", "audit.seal_interval_seconds"),
        ("air:\n  console_url: air.example.com\n", "air.console_url"),
        ("air:\n  console_url: ftp://air.example.com\n", "air.console_url"),
        ("air:\n  console_url: 'https://'\n", "air.console_url"),
        ("air:\n  console_url: https://air.example.com/?x=1\n", "air.console_url"),
        ("air:\n  console_url: https://air.example.com/#/\n", "air.console_url"),
        ("air:\n  console_url: https://air.example.com:99999\n", "air.console_url"),
    ],
)
def test_value_checks_name_the_key(text: str, key: str) -> None:
    assert config_error(text).key == key


def test_empty_secret_from_env_is_refused() -> None:
    err = config_error("ingest:\n  tokens:\n    - {token: '${TOKEN:-}', tenant_id: t}\n", TOKEN="")
    assert err.key == "ingest.tokens[0].token"
    assert "empty" in str(err)


def test_duplicate_ingest_token_is_refused() -> None:
    err = config_error(
        """
        ingest:
          tokens:
            - {token: same, tenant_id: a}
            - {token: other, tenant_id: b}
            - {token: same, tenant_id: c}
        """
    )
    assert err.key == "ingest.tokens[2].token"
    assert "ingest.tokens[0]" in str(err)


def test_duplicate_api_key_is_refused() -> None:
    err = config_error("api:\n  keys:\n    - {key: k1}\n    - {key: k1, tenant_ids: [t]}\n")
    assert err.key == "api.keys[1].key"


def test_state_dir_may_be_empty_with_an_external_database() -> None:
    cfg = parse("state_dir: ''\ndatabase:\n  dsn: postgresql://h/db\n")
    assert cfg.state_dir == ""


# --- defaults --------------------------------------------------------------------------------


def test_empty_file_gives_the_documented_defaults() -> None:
    cfg = parse("")
    assert cfg == Config()
    assert cfg.server.host == "127.0.0.1"
    assert cfg.server.port == 8080
    assert cfg.server.max_body_bytes == 1_048_576
    assert cfg.server.header_timeout_seconds == 10
    assert cfg.server.body_timeout_seconds == 10
    assert cfg.server.body_min_bytes_per_second == 1024
    assert cfg.server.keepalive_timeout_seconds == 75
    assert cfg.server.max_connections == 2048
    assert cfg.database.dsn is None
    assert cfg.state_dir == "./var"
    assert cfg.ingest.path == "/v1/air/events"
    assert cfg.ingest.tokens == []
    assert cfg.api.keys == []
    assert cfg.delivery.concurrency == 32
    assert cfg.delivery.timeout_seconds == 10
    assert cfg.delivery.retry.attempts_per_claim == 3
    assert cfg.delivery.retry.schedule_seconds == [
        5, 30, 120, 600, 1800, 3600, 7200, 14400, 28800, 43200,
    ]  # fmt: skip
    assert cfg.delivery.allow_private_destinations is False
    assert cfg.slack.api_base_url == "https://slack.com/api"
    assert cfg.slack.integrations == {}
    assert cfg.pagerduty.events_url == "https://events.pagerduty.com/v2/enqueue"
    assert cfg.logging.format == "json"
    assert cfg.logging.level == "info"
    assert cfg.audit.seal_interval_seconds == 10
    assert cfg.air.console_url is None


def test_console_url_may_have_a_path_and_an_empty_one_means_none() -> None:
    assert parse("air:\n  console_url: https://air.example.com/air/\n").air.console_url == (
        "https://air.example.com/air/"
    )
    assert parse("air:\n  console_url: ''\n").air.console_url == ""


def test_null_section_means_defaults() -> None:
    assert parse("server:\ndelivery:\n").server == Config().server


def test_api_key_defaults_to_every_tenant() -> None:
    cfg = parse("api:\n  keys:\n    - key: k\n")
    assert cfg.api.keys[0].tenant_ids == ["*"]
    assert cfg.api.keys[0].allows("any-tenant")


def test_partial_section_keeps_other_defaults() -> None:
    cfg = parse("delivery:\n  retry:\n    attempts_per_claim: 5\n")
    assert cfg.delivery.retry.attempts_per_claim == 5
    assert cfg.delivery.retry.schedule_seconds == Config().delivery.retry.schedule_seconds
    assert cfg.delivery.concurrency == 32


def test_example_config_matches_the_spec() -> None:
    cfg = load_config(EXAMPLE, env=EXAMPLE_ENV)
    assert cfg.ingest.tokens[0].token == EXAMPLE_ENV["AIR_RELAY_INGEST_TOKEN"]
    assert cfg.ingest.tokens[0].tenant_id == "00000000-0000-0000-0000-000000000000"
    assert cfg.api.keys[0] == ApiKey(key=EXAMPLE_ENV["AIR_RELAY_API_KEY"], tenant_ids=["*"])
    integration = cfg.slack.integrations["00000000-0000-0000-0000-000000000001"]
    assert integration.bot_token == EXAMPLE_ENV["SLACK_BOT_TOKEN"]
    assert not cfg.database.dsn  # embedded PostgreSQL unless AIR_RELAY_DATABASE_DSN is set
    assert cfg.state_dir == "./var"
    moved = load_config(EXAMPLE, env={**EXAMPLE_ENV, "AIR_RELAY_STATE_DIR": "/var/lib/x"})
    assert moved.state_dir == "/var/lib/x"
    # Every value shown in the example is the default.
    defaults = dataclasses.replace(
        Config(), ingest=cfg.ingest, api=cfg.api, slack=cfg.slack, database=cfg.database
    )
    assert cfg == defaults


def _dotted_keys(cls: type[Any], prefix: str = "") -> set[str]:
    keys: set[str] = set()
    hints = typing.get_type_hints(cls)
    for fld in dataclasses.fields(cls):
        key = f"{prefix}{fld.name}"
        keys.add(key)
        if dataclasses.is_dataclass(hints[fld.name]):
            keys |= _dotted_keys(hints[fld.name], f"{key}.")
    return keys


def _yaml_keys(node: Any, prefix: str = "") -> set[str]:
    keys: set[str] = set()
    if isinstance(node, dict):
        for name, value in node.items():
            keys.add(f"{prefix}{name}")
            keys |= _yaml_keys(value, f"{prefix}{name}.")
    return keys


def test_example_config_shows_every_section_key() -> None:
    shown = _yaml_keys(yaml.safe_load(EXAMPLE.read_text()))
    missing = _dotted_keys(Config) - shown
    assert not missing, f"config.example.yaml does not show {sorted(missing)}"


# --- files -----------------------------------------------------------------------------------


def test_load_config_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.yaml")
    assert "nope.yaml" in str(info.value)


def test_load_config_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"state_dir: caf\xe9\n")
    with pytest.raises(ConfigError, match="UTF-8"):
        load_config(path)


def test_load_config_reads_env_from_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("server:\n  port: ${RELAY_TEST_PORT}\n")
    monkeypatch.setenv("RELAY_TEST_PORT", "8181")
    assert load_config(path).server.port == 8181


# --- redaction -------------------------------------------------------------------------------

SECRETS = {
    "INGEST_A": "ingest-token-aaaa",
    "INGEST_B": "ingest-token-bbbb",
    "API_KEY": "api-key-cccc",
    "BOT": "xoxb-dddd",
    "DB_PW": "db-password-eeee",
}
SECRET_TEXT = """
database:
  dsn: postgresql://relay:${DB_PW}@db.internal:5432/air
ingest:
  tokens:
    - {token: "${INGEST_A}", tenant_id: tenant-a}
    - {token: "${INGEST_B}", tenant_id: tenant-b}
api:
  keys:
    - {key: "${API_KEY}", tenant_ids: [tenant-a]}
slack:
  integrations:
    int-1: {bot_token: "${BOT}"}
"""


def test_redacted_hides_every_secret_and_keeps_the_rest() -> None:
    cfg = parse_config(SECRET_TEXT, env=SECRETS)
    data = redacted(cfg)
    dumped = yaml.safe_dump(data)
    for secret in SECRETS.values():
        assert secret not in dumped
    assert data["ingest"]["tokens"] == [
        {"token": "***", "tenant_id": "tenant-a"},
        {"token": "***", "tenant_id": "tenant-b"},
    ]
    assert data["api"]["keys"] == [{"key": "***", "tenant_ids": ["tenant-a"]}]
    assert data["slack"]["integrations"] == {"int-1": {"bot_token": "***"}}
    assert data["database"]["dsn"] == "postgresql://relay:***@db.internal:5432/air"
    assert data["server"]["port"] == 8080
    # The config object itself is untouched.
    assert cfg.ingest.tokens[0].token == SECRETS["INGEST_A"]


def test_redacted_keeps_null_dsn() -> None:
    assert redacted(Config())["database"]["dsn"] is None


def test_the_listen_dsn_is_redacted_like_the_dsn() -> None:
    cfg = parse_config(
        "database:\n  dsn: postgresql://relay:a-secret@127.0.0.1:6432/air\n"
        "  listen_dsn: postgresql://relay:b-secret@127.0.0.1:5432/air\n"
        "  prepared_statements: false\n"
    )
    assert cfg.database.prepared_statements is False
    data = redacted(cfg)["database"]
    assert data["listen_dsn"] == "postgresql://relay:***@127.0.0.1:5432/air"
    assert "secret" not in yaml.safe_dump(data)
    assert Config().database.prepared_statements is True
    assert Config().database.listen_dsn is None


# --- mistakes caught early -------------------------------------------------------------------

SERVING = """\
ingest:
  tokens:
    - token: ${AIR_RELAY_INGEST_TOKEN}
      tenant_id: ${AIR_RELAY_TENANT}
api:
  keys:
    - key: ${AIR_RELAY_API_KEY}
      tenant_ids: ["*"]
"""


def test_every_missing_variable_is_reported_at_once() -> None:
    err = config_error(SERVING + "server:\n  port: ${AIR_RELAY_PORT}${AIR_RELAY_PORT_2}\n")
    text = str(err)
    assert text.startswith("4 problems:")
    for key, name in [
        ("ingest.tokens[0].token", "AIR_RELAY_INGEST_TOKEN is not set"),
        ("ingest.tokens[0].tenant_id", "AIR_RELAY_TENANT is not set"),
        ("api.keys[0].key", "AIR_RELAY_API_KEY is not set"),
        ("server.port", "AIR_RELAY_PORT and AIR_RELAY_PORT_2 are not set"),
    ]:
        assert f"{key}: environment variable" in text and name in text, text
    assert err.key == "ingest.tokens[0].token"  # the first, for a caller that wants one


@pytest.mark.parametrize(
    ("text", "key", "line", "first"),
    [
        ("api:\n  keys: []\n  max_sinks_per_tenant: 5\n  keys: []\n", "api.keys", 4, 2),
        ("api:\n  keys:\n    - key: a\n      tenant_ids: ['*']\n      key: b\n",
         "api.keys[0].key", 5, 3),
        ("slack:\n  integrations:\n    x: {bot_token: a, bot_token: b}\n",
         "slack.integrations.x.bot_token", 3, 3),
    ],
)  # fmt: skip
def test_a_duplicate_key_is_named_by_its_full_path(
    text: str, key: str, line: int, first: int
) -> None:
    err = config_error(text)
    assert err.key == key
    assert str(err).startswith(f"duplicate key {key} at line {line} ")
    assert f"first at line {first}" in str(err)


@pytest.mark.parametrize(
    ("text", "env", "message"),
    [
        ("server:\n  port: ${AIR_RELAY_PORT}\n", {"AIR_RELAY_PORT": "abc"},
         "server.port: ${AIR_RELAY_PORT}='abc' is not an integer"),
        ("server:\n  port: ${AIR_RELAY_PORT}\n", {"AIR_RELAY_PORT": "70000"},
         "server.port: ${AIR_RELAY_PORT}='70000' must be between 1 and 65535"),
        ("delivery:\n  allow_private_destinations: ${OPEN}\n", {"OPEN": "maybe"},
         "delivery.allow_private_destinations: ${OPEN}='maybe' is not true or false"),
        ("delivery:\n  timeout_seconds: ${T:-x}\n", {},
         "delivery.timeout_seconds: ${T:-x}='x' is not a number"),
    ],
)  # fmt: skip
def test_a_bad_value_from_a_variable_names_the_variable_and_value(
    text: str, env: dict[str, str], message: str
) -> None:
    assert str(config_error(text, **env)) == message


def test_a_bad_secret_from_a_variable_is_named_not_shown() -> None:
    secret = "s3cr3t-but-wrong-\x00"
    text = "api:\n  keys:\n    - key: ${AIR_RELAY_API_KEY}\n      tenant_ids: ${TENANTS}\n"
    err = config_error(text, AIR_RELAY_API_KEY="", TENANTS="x")
    assert str(err) == "api.keys[0].tenant_ids: ${TENANTS}='x' is not a list"
    err = config_error(text.replace("${TENANTS}", "['*']"), AIR_RELAY_API_KEY="")
    assert str(err) == "api.keys[0].key: ${AIR_RELAY_API_KEY} (value not shown) must not be empty"
    # A variable whose name says secret is never shown, whatever key it feeds.
    err = config_error("server:\n  port: ${PORT_TOKEN}\n", PORT_TOKEN=secret)
    assert secret not in str(err)
    assert str(err) == "server.port: ${PORT_TOKEN} (value not shown) is not an integer"


@pytest.mark.parametrize(
    "host", ["http://0.0.0.0", "0.0.0.0:8080", "local host", "999.1.1.1", "[::1]", "-x", "a/b"]
)
def test_server_host_must_be_an_address(host: str) -> None:
    err = config_error(f"server:\n  host: {host!r}\n")
    assert err.key == "server.host"
    assert "is not an address" in str(err)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "127.0.0.1", "::1", "localhost", "relay.lan."])
def test_server_host_may_be_an_ip_or_a_name(host: str) -> None:
    assert parse(f"server:\n  host: {host!r}\n").server.host == host


def test_serving_problems_of_an_empty_or_half_empty_config() -> None:
    from air_relay.config import serving_problems

    (empty,) = serving_problems(parse(""))
    assert "empty" in str(empty) and "no ingest tokens and no API keys" in str(empty)
    tokens_only = parse("ingest:\n  tokens: [{token: t, tenant_id: a}]\n")
    assert [p.key for p in serving_problems(tokens_only)] == ["api.keys"]
    keys_only = parse("api:\n  keys: [{key: k, tenant_ids: ['*']}]\nserver: {port: 9}\n")
    assert [p.key for p in serving_problems(keys_only)] == ["ingest.tokens"]
    both = parse(SERVING, AIR_RELAY_INGEST_TOKEN="t", AIR_RELAY_TENANT="a", AIR_RELAY_API_KEY="k")
    assert serving_problems(both) == []


def test_commands_that_only_read_the_database_need_no_serving_credentials() -> None:
    text = (
        "database:\n  dsn: ${AIR_RELAY_DATABASE_DSN}\n"
        "ingest:\n  tokens:\n    - token: ${AIR_RELAY_INGEST_TOKEN}\n      tenant_id: t\n"
        "api:\n  keys:\n    - key: ${AIR_RELAY_API_KEY}\n      tenant_ids: ['*']\n"
    )
    dsn = {"AIR_RELAY_DATABASE_DSN": "postgresql://127.0.0.1:9/air"}
    cfg = parse_config(text, env=dsn, serving_credentials=False)
    assert cfg.database.dsn == dsn["AIR_RELAY_DATABASE_DSN"]
    with pytest.raises(ConfigError, match="AIR_RELAY_INGEST_TOKEN"):
        parse_config(text, env=dsn)
    # Only the tokens and keys may be unset: the database is still needed.
    with pytest.raises(ConfigError, match="AIR_RELAY_DATABASE_DSN"):
        parse_config(text, env={}, serving_credentials=False)


@pytest.mark.parametrize(
    "text",
    [
        "ingest:\n  tokens:\n  - token: s3cr3t-value: x\n    tenant_id: t\n",
        'api:\n  keys:\n  - key: "s3cr3t-value\n',
        "database:\n  dsn: [postgresql://u:s3cr3t-value@127.0.0.1/db\n",
    ],
)
def test_invalid_yaml_names_the_place_not_the_line(text: str) -> None:
    # PyYAML quotes the offending line, which may hold a secret.
    err = config_error(text)
    assert "not valid YAML" in str(err)
    assert "line " in str(err)
    assert "s3cr3t" not in str(err)
