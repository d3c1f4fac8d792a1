"""The sink types: each name (``Slack``, ``Webhook``, ``PagerDuty``) with its argument rules and
its sender. Adding a sink type means a sender module, its ``ArgRules`` in ``args.py`` and one
entry here."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

from air_relay.config import Config
from air_relay.model import Sink
from air_relay.sinks import args
from air_relay.sinks.args import ArgRules
from air_relay.sinks.base import Sender
from air_relay.sinks.egress_guard import DestinationRefused, Lookup, check_url
from air_relay.sinks.pagerduty import PagerDutySender
from air_relay.sinks.slack import SlackSender
from air_relay.sinks.template_workers import TemplateWorkers
from air_relay.sinks.templates import RenderFailed
from air_relay.sinks.webhook import WebhookSender
from air_relay.validation import InvalidArgument


@dataclass(frozen=True)
class Clients:
    """What senders send with: the HTTP client sessions, and the template workers."""

    # Slack and PagerDuty: API URLs from the operator's own configuration.
    operator: aiohttp.ClientSession
    # Webhook URLs: sink input, so this session resolves names through the egress guard.
    webhook: aiohttp.ClientSession
    # Where Webhook sinks' custom templates render.
    templates: TemplateWorkers


@dataclass(frozen=True)
class SinkType:
    args: ArgRules
    sender: Callable[[Config, Clients], Sender]


SINK_TYPES: dict[str, SinkType] = {
    "Slack": SinkType(
        args.SLACK,
        lambda cfg, clients: SlackSender(
            clients.operator,
            cfg.slack,
            cfg.delivery.timeout_seconds,
            console_url=cfg.air.console_url or None,
            connect_timeout_seconds=cfg.delivery.connect_timeout_seconds,
        ),
    ),
    "Webhook": SinkType(
        args.WEBHOOK,
        lambda cfg, clients: WebhookSender(
            clients.webhook,
            cfg.delivery.timeout_seconds,
            templates=clients.templates,
            console_url=cfg.air.console_url or None,
            connect_timeout_seconds=cfg.delivery.connect_timeout_seconds,
        ),
    ),
    "PagerDuty": SinkType(
        args.PAGERDUTY,
        lambda cfg, clients: PagerDutySender(
            clients.operator,
            cfg.pagerduty,
            cfg.delivery.timeout_seconds,
            console_url=cfg.air.console_url or None,
            connect_timeout_seconds=cfg.delivery.connect_timeout_seconds,
        ),
    ),
}
_NAMES = ", ".join(SINK_TYPES)


def build_senders(cfg: Config, clients: Clients) -> dict[str, Sender]:
    """One sender per sink type."""
    return {name: kind.sender(cfg, clients) for name, kind in SINK_TYPES.items()}


def parse_sink_args(
    raw: Any, cfg: Config, existing: Sink | None = None, field: str = "event_sink_args"
) -> tuple[str, dict[str, Any]]:
    """Validate ``event_sink_args`` (exactly one type and its args); with ``existing`` of the
    same type, the args are an update merged into the stored ones."""
    if not isinstance(raw, dict) or len(raw) != 1:
        raise InvalidArgument(field, f"must be an object with exactly one of {_NAMES}")
    ((sink_type, given),) = raw.items()
    kind = SINK_TYPES.get(sink_type)
    if kind is None:
        raise InvalidArgument(field, f"{sink_type!r} is not one of {_NAMES}")
    prefix = f"{field}.{sink_type}"
    if not isinstance(given, dict):
        raise InvalidArgument(prefix, "must be an object")
    if existing is not None and existing.sink_type == sink_type:
        given = kind.args.merge(existing.args, given, prefix)
    return sink_type, kind.args.parse(given, prefix, cfg)


def shown_args(sink_type: str, sink_args: dict[str, Any]) -> dict[str, Any]:
    """A sink's args as the API shows them (write-only ones masked)."""
    return SINK_TYPES[sink_type].args.shown(sink_args)


async def check_destination(
    sink_type: str, sink_args: dict[str, Any], cfg: Config, lookup: Lookup
) -> None:
    """The egress guard at create and update (the senders check again at every send)."""
    egress = SINK_TYPES[sink_type].args.egress_url
    if egress is None or cfg.delivery.allow_private_destinations:
        return
    try:
        await check_url(sink_args[egress], lookup)
    except DestinationRefused as exc:
        raise InvalidArgument(
            f"event_sink_args.{sink_type}.{egress}",
            f"points to a {exc.reason} address, which is not allowed "
            "(delivery.allow_private_destinations is false)",
        ) from exc


async def check_template(
    sink_type: str, sink_args: dict[str, Any], cfg: Config, templates: TemplateWorkers
) -> None:
    """A custom Webhook template rendered for every catalog example by the template workers,
    at create and update (``parse_sink_args`` checked its source). ``WorkersUnavailable``
    when none can render."""
    template = sink_args.get("template")
    if sink_type != "Webhook" or not isinstance(template, dict):
        return
    try:
        await templates.check(template["body"], cfg.air.console_url or None)
    except RenderFailed as exc:
        raise InvalidArgument(f"event_sink_args.{sink_type}.template", str(exc)) from exc
