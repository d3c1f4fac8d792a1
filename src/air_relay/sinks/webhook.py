"""Webhook sink: POST the AIR envelope unchanged, with Standard Webhooks headers (SPEC 4)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from typing import Any

import aiohttp

from air_relay import __version__
from air_relay.db.repository import ClaimedDelivery
from air_relay.sinks.base import (
    DESTINATION_NOT_ALLOWED,
    SendResult,
    exception_failure,
    http_failure,
    parse_retry_after,
    read_audit_text,
)
from air_relay.sinks.egress_guard import DestinationRefused, check_literal

SIGNING_PREFIX = "whsec_"


def decode_secret(secret: str) -> bytes:
    """The HMAC key of a ``whsec_<base64>`` secret; raises ValueError when malformed."""
    raw = secret.removeprefix(SIGNING_PREFIX)
    key = base64.b64decode(raw + "=" * (-len(raw) % 4), validate=True)
    if not key:
        raise ValueError("empty signing key")
    return key


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value (Standard Webhooks v1) over the exact bytes sent."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(decode_secret(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def _secret_key_text(args: dict[str, Any]) -> str | None:
    """The base64 part of the signing secret, which an echo could show without its prefix."""
    secret = args.get("secret")
    return secret.removeprefix(SIGNING_PREFIX) if secret else None


class WebhookSender:
    sink_type = "Webhook"

    def __init__(
        self,
        session: aiohttp.ClientSession,
        timeout_seconds: float,
        *,
        allow_private_destinations: bool = False,
    ) -> None:
        # Names are checked by the session's GuardedResolver; hosts written as IP addresses
        # never reach a resolver, so they are checked here.
        self._session = session
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        self._allow_private = allow_private_destinations

    def build_headers(self, delivery: ClaimedDelivery, now: int | None = None) -> dict[str, str]:
        args = delivery.sink_args or {}
        timestamp = int(time.time()) if now is None else now
        # Same id on every retry of this delivery: receivers dedupe on it.
        msg_id = f"msg_{delivery.id.hex}"
        headers: dict[str, str] = dict(args.get("headers") or {})
        headers.update(
            {
                "Content-Type": "application/json",
                "User-Agent": f"air-relay/{__version__}",
                "webhook-id": msg_id,
                "webhook-timestamp": str(timestamp),
            }
        )
        if args.get("secret"):
            headers["webhook-signature"] = sign(args["secret"], msg_id, timestamp, delivery.body)
        if args.get("bearer_token"):
            headers["Authorization"] = f"Bearer {args['bearer_token']}"
        return headers

    async def send(self, delivery: ClaimedDelivery) -> SendResult:
        args = delivery.sink_args or {}
        if not self._allow_private:
            try:
                check_literal(args["url"])
            except DestinationRefused:
                return DESTINATION_NOT_ALLOWED
        try:
            async with self._session.post(
                args["url"],
                data=delivery.body,
                headers=self.build_headers(delivery),
                timeout=self._timeout,
                allow_redirects=False,
            ) as resp:
                body = await read_audit_text(
                    resp, (args.get("bearer_token"), args.get("secret"), _secret_key_text(args))
                )
                if 200 <= resp.status < 300:
                    return SendResult(ok=True, status_code=resp.status, response_body=body)
                return http_failure(
                    resp.status, body, parse_retry_after(resp.headers.get("Retry-After"))
                )
        except (aiohttp.ClientError, TimeoutError) as exc:
            return exception_failure(exc)
