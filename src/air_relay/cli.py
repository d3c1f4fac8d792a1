"""The ``air-relay`` command: ``serve``, ``migrate`` and ``check-config``."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

import structlog
import yaml

from air_relay import __version__
from air_relay.config import Config, ConfigError, load_config, redacted
from air_relay.logs import configure_logging

EXIT_CONFIG = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="air-relay", description=__doc__)
    parser.add_argument("--version", action="version", version=f"air-relay {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("serve", "run the HTTP server and delivery workers"),
        ("migrate", "apply pending database migrations and exit"),
        ("check-config", "validate the config and print it with secrets redacted"),
    ):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument(
            "--config",
            default=os.environ.get("AIR_RELAY_CONFIG"),
            help="path to the YAML config (default: $AIR_RELAY_CONFIG)",
        )
    return parser


async def _migrate(cfg: Config) -> int:
    from air_relay.db.migrate import apply_migrations
    from air_relay.db.pool import connect, wait_for_database
    from air_relay.server import resolve_dsn

    dsn, embedded = await resolve_dsn(cfg)
    try:
        await wait_for_database(dsn)
        conn = await connect(dsn)
        try:
            applied = await apply_migrations(conn)
        finally:
            await conn.close()
        structlog.get_logger("air_relay.cli").info("migrations_done", applied=applied)
    finally:
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if not args.config:
        print("air-relay: --config PATH (or AIR_RELAY_CONFIG) is required", file=sys.stderr)
        return EXIT_CONFIG
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(f"air-relay: invalid configuration: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if args.command == "check-config":
        print(yaml.safe_dump(redacted(cfg), sort_keys=False), end="")
        return 0
    configure_logging(cfg.logging.format, cfg.logging.level)
    if args.command == "migrate":
        return asyncio.run(_migrate(cfg))
    from air_relay.server import serve

    return asyncio.run(serve(cfg))


if __name__ == "__main__":
    sys.exit(main())
