"""PagerDuty sink: Events API v2 trigger events (SPEC 4). STUB: being written."""

from __future__ import annotations

import aiohttp

from air_relay.config import PagerDutyConfig
from air_relay.db.repository import ClaimedDelivery
from air_relay.senders.base import SendResult


class PagerDutySender:
    sink_type = "PagerDuty"

    def __init__(
        self, session: aiohttp.ClientSession, cfg: PagerDutyConfig, timeout_seconds: float
    ) -> None:
        self._session = session
        self._cfg = cfg
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds)

    async def send(self, delivery: ClaimedDelivery) -> SendResult:
        raise NotImplementedError
