"""The Slack sender: ``chat.postMessage`` with the bot token of the sink's integration, the
classification of Slack's answers (``ok: false`` codes, transient or permanent), and the pacing
of messages per channel. The message itself is built by ``slack_message``; ``docs/sinks.md``
describes what arrives and the error table."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import aiohttp

from air_relay import __version__
from air_relay.config import SlackConfig
from air_relay.model import ClaimedDelivery, Digest
from air_relay.sinks.base import Answer, SendResult, http_failure, post, send_timeout
from air_relay.sinks.digest_message import slack_message
from air_relay.sinks.slack_message import SlackMessage, message_for_body

TRANSIENT_ERRORS = frozenset(
    {"ratelimited", "internal_error", "service_unavailable", "request_timeout", "fatal_error"}
)
AUTH_ERRORS = frozenset(
    {
        "invalid_auth",
        "not_authed",
        "token_revoked",
        "account_inactive",
        "missing_scope",
        "token_expired",
        "no_permission",
    }
)
# An ok:true answer echoes the whole message; read enough to parse it (the message is bounded).
PARSE_LIMIT = 1024 * 1024
ERROR_CODE_LIMIT = 100
# A Retry-After beyond this does not hold a channel longer (the durable schedule still waits).
HOLD_MAX_SECONDS = 300.0

NOT_CONFIGURED = SendResult(
    ok=False, error="slack_integration_not_configured", reason="other", transient=False
)
NO_CHANNEL = SendResult(ok=False, error="channel_not_configured", reason="other", transient=False)

PaceKey = tuple[str, str]
# A turn further off than this is not waited for in a worker: the delivery goes back to the
# queue, due at its turn (which stays reserved). Otherwise the workers would drain a burst to
# one channel at Slack's pace, and every delivery queued behind it, for any sink, would wait.
DEFER_AFTER_SECONDS = 0.5
PROMISES_MAX = 10_000


class ChannelPacer:
    """At most one send per ``interval`` seconds per key, across the tasks of this process.

    Each send reserves the key's next free slot before it sleeps, so concurrent sends to one
    channel space out instead of waking together. ``hold`` (after a 429) voids the slots
    already handed out: their holders wake, see the hold, and queue again behind it.
    """

    def __init__(self, interval: float, max_entries: int = 10_000) -> None:
        self._interval = max(0.0, interval)
        self._max_entries = max_entries
        self._next: dict[PaceKey, float] = {}
        self._held: dict[PaceKey, float] = {}
        self._sent: dict[PaceKey, float] = {}

    def __len__(self) -> int:
        return len(self._next) + len(self._held) + len(self._sent)

    def reserve(self, key: PaceKey) -> float:
        """Take the key's next slot; the seconds to wait for it."""
        now = time.monotonic()
        slot = max(now, self._next.get(key, now), self._held.get(key, now))
        if self._interval > 0 or slot > now:
            self._next[key] = slot + self._interval
        self._prune(now)
        return slot - now

    async def wait_turn(self, key: PaceKey, promised: float | None = None) -> None:
        """Sleep until the key's turn: ``promised`` (a slot reserved earlier), else a new one.

        A promised slot may be long past when its delivery comes back from the queue late, so
        the last actual send on the key also keeps the next one ``interval`` away.
        """
        while True:
            delay = self.reserve(key) if promised is None else promised - time.monotonic()
            promised = None
            if delay > 0:
                await asyncio.sleep(delay)
            now = time.monotonic()
            if self._held.get(key, 0.0) > now:
                continue  # a 429 arrived while we slept: queue again behind it
            last = self._sent.get(key)
            if last is not None and last + self._interval > now:
                promised = last + self._interval  # keep our place, just wait out the spacing
                continue
            if self._interval > 0:
                self._sent[key] = now
            return

    def hold(self, key: PaceKey, seconds: float) -> None:
        """No send on ``key`` for ``seconds`` (Slack's Retry-After)."""
        until = time.monotonic() + min(max(0.0, seconds), HOLD_MAX_SECONDS)
        self._held[key] = max(self._held.get(key, 0.0), until)
        self._prune(time.monotonic())

    def _prune(self, now: float) -> None:
        # Only past slots go: a future one is a promise to a sleeping send.
        for table, horizon in (
            (self._next, now),
            (self._held, now),
            (self._sent, now - self._interval),
        ):
            if len(table) > self._max_entries:
                for key in [k for k, at in table.items() if at <= horizon]:
                    del table[key]


def request_body(channel: str, message: SlackMessage) -> bytes:
    payload: dict[str, Any] = {
        "channel": channel,
        "text": message.text,
        "blocks": message.blocks,
        "unfurl_links": False,
        "unfurl_media": False,
    }
    return json.dumps(payload, ensure_ascii=False).encode("utf-8")


def slack_error_reason(error: str) -> str:
    if error == "ratelimited":
        return "rate_limited"
    if error in AUTH_ERRORS:
        return "auth_error"
    if error in TRANSIENT_ERRORS:
        return "server_error"
    return "client_error"


def _error_code(parsed: Any) -> str | None:
    """Slack's ``error`` code from a parsed body, if it is one."""
    if not isinstance(parsed, dict):
        return None
    code = parsed.get("error")
    if isinstance(code, str) and code.strip():
        return code.strip()[:ERROR_CODE_LIMIT]
    return None


def _parse(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


def classify(answer: Answer) -> SendResult:
    """The SendResult for Slack's answer (parsed from ``text``; the audit row keeps
    ``audit_body``, the redacted head)."""
    status, audit_body, retry_after = answer.status, answer.audit_body, answer.retry_after
    if status == 429:
        code = _error_code(_parse(answer.text))
        return SendResult(
            ok=False,
            status_code=429,
            error="ratelimited" if code == "ratelimited" else "http_429",
            reason="rate_limited",
            transient=True,
            response_body=audit_body,
            retry_after=retry_after,
        )
    if status != 200:
        return http_failure(status, audit_body, retry_after)
    parsed = _parse(answer.text)
    if isinstance(parsed, dict) and parsed.get("ok") is True:
        return SendResult(ok=True, status_code=200, response_body=audit_body)
    if not isinstance(parsed, dict) or parsed.get("ok") is not False:
        return SendResult(
            ok=False,
            status_code=200,
            error="invalid_response",
            reason="server_error",
            transient=True,
            response_body=audit_body,
            retry_after=retry_after,
        )
    code = _error_code(parsed) or "unknown_error"
    return SendResult(
        ok=False,
        status_code=200,
        error=code,
        reason=slack_error_reason(code),
        transient=code in TRANSIENT_ERRORS,
        response_body=audit_body,
        retry_after=retry_after,
    )


class SlackSender:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        cfg: SlackConfig,
        timeout_seconds: float,
        *,
        console_url: str | None = None,
        connect_timeout_seconds: float | None = None,
    ) -> None:
        self._session = session
        self._cfg = cfg
        self._console_url = console_url
        self._timeout = send_timeout(timeout_seconds, connect_timeout_seconds)
        self._url = cfg.api_base_url.rstrip("/") + "/chat.postMessage"
        self._pacer = ChannelPacer(cfg.min_interval_seconds)
        # Slots reserved for deferred deliveries (monotonic time), used when they come back.
        self._promised: dict[uuid.UUID, float] = {}

    def headers(self, token: str) -> dict[str, str]:
        return {
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/json; charset=utf-8",
            "User-Agent": f"air-relay/{__version__}",
        }

    def _destination(self, delivery: ClaimedDelivery) -> PaceKey | SendResult:
        """(bot token, channel) of the delivery, or the permanent failure when there is none."""
        args = delivery.sink_args or {}
        integration = self._cfg.integrations.get(str(args.get("slack_integration_id")))
        if integration is None:
            return NOT_CONFIGURED
        channel = args.get("channel_id") or args.get("channel")
        if not isinstance(channel, str) or not channel:
            return NO_CHANNEL
        return (integration.bot_token, channel)

    def defer_seconds(self, delivery: ClaimedDelivery) -> float | None:
        """Reserve the delivery's turn on its channel; the wait when it is too long to hold a
        worker for (the delivery is then requeued, due at its turn, which stays reserved)."""
        key = self._destination(delivery)
        if isinstance(key, SendResult) or delivery.id in self._promised:
            return None
        wait = self._pacer.reserve(key)
        now = time.monotonic()
        self._promised[delivery.id] = now + wait
        if len(self._promised) > PROMISES_MAX:
            # Promises whose delivery never came back here (another process took it).
            for stale in [d for d, at in self._promised.items() if at < now - 600]:
                del self._promised[stale]
        return wait if wait > DEFER_AFTER_SECONDS else None

    async def send(self, delivery: ClaimedDelivery) -> SendResult:
        key = self._destination(delivery)
        if isinstance(key, SendResult):
            return key
        message = message_for_body(
            delivery.event_name,
            delivery.organization_id,
            delivery.body,
            delivery.received_at,
            self._console_url,
        )
        return await self._post(delivery, key, request_body(key[1], message))

    async def send_digest(self, delivery: ClaimedDelivery, digest: Digest) -> SendResult:
        """The storm digest as one message to the sink's channel, paced like any other."""
        key = self._destination(delivery)
        if isinstance(key, SendResult):
            return key
        return await self._post(delivery, key, request_body(key[1], slack_message(digest)))

    async def _post(self, delivery: ClaimedDelivery, key: PaceKey, body: bytes) -> SendResult:
        token = key[0]
        await self._pacer.wait_turn(key, self._promised.pop(delivery.id, None))
        result = await post(
            self._session,
            self._url,
            body=body,
            headers=self.headers(token),
            timeout=self._timeout,
            secrets=(token,),
            classify=classify,
            read_limit=PARSE_LIMIT,
        )
        if result.reason == "rate_limited" and result.retry_after is not None:
            self._pacer.hold(key, result.retry_after)
        return result
