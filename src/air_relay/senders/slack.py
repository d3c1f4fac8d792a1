"""Slack sink: chat.postMessage with the integration's bot token (SPEC 4). STUB: being written."""

from __future__ import annotations

import aiohttp

from air_relay.config import SlackConfig
from air_relay.db.repository import ClaimedDelivery
from air_relay.senders.base import SendResult


class SlackSender:
    sink_type = "Slack"

    def __init__(
        self, session: aiohttp.ClientSession, cfg: SlackConfig, timeout_seconds: float
    ) -> None:
        self._session = session
        self._cfg = cfg
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds)

    async def send(self, delivery: ClaimedDelivery) -> SendResult:
        raise NotImplementedError
