"""The Webhook sender: POST the AIR envelope unchanged (or, with a ``template``, the JSON it
renders), with Standard Webhooks headers signing the bytes sent, an optional bearer token and
the sink's extra headers, through the egress-guarded session.

A preset renders in this process (fixed source, every value cut: a fraction of a
millisecond); a custom template in a template worker, awaited, so the event loop goes on."""

from __future__ import annotations

import time
from typing import Any

import aiohttp

from air_relay import __version__
from air_relay.model import ClaimedDelivery, Digest
from air_relay.sinks.args import secret_header, url_credentials
from air_relay.sinks.base import SendResult, audit_text, post, send_timeout
from air_relay.sinks.digest_message import webhook_body
from air_relay.sinks.signing import SIGNING_PREFIX, sign
from air_relay.sinks.template_worker import RenderRequest
from air_relay.sinks.template_workers import TemplateWorkers, WorkersUnavailable
from air_relay.sinks.templates import RenderFailed, delivery_context, render_preset
from air_relay.timestamps import rfc3339


def credentials(args: dict[str, Any]) -> list[str]:
    """Every credential a request to this sink carries, as an echo of it could show them:
    for redaction from the answer before it reaches the audit log and the logs."""
    found: list[str] = []
    if secret := args.get("secret"):
        # The base64 part too, which an echo could show without its prefix.
        found += [secret, secret.removeprefix(SIGNING_PREFIX)]
    if token := args.get("bearer_token"):
        found.append(token)
    found += url_credentials(args["url"])
    headers: dict[str, str] = args.get("headers") or {}
    found += [value for name, value in headers.items() if secret_header(name) and value]
    return found


class WebhookSender:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        timeout_seconds: float,
        *,
        templates: TemplateWorkers,
        console_url: str | None = None,
        connect_timeout_seconds: float | None = None,
    ) -> None:
        # The egress guard lives in the session (runtime.client_sessions): its resolver and
        # socket factory check every address connected to, IP literals included.
        self._session = session
        self._timeout = send_timeout(timeout_seconds, connect_timeout_seconds)
        self._console_url = console_url
        self._templates = templates

    def build_headers(
        self, delivery: ClaimedDelivery, now: int | None = None, body: bytes | None = None
    ) -> dict[str, str]:
        """The headers for sending ``body`` (default: the envelope as AIR sent it)."""
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
            sent = delivery.body if body is None else body
            headers["webhook-signature"] = sign(args["secret"], msg_id, timestamp, sent)
        if args.get("bearer_token"):
            headers["Authorization"] = f"Bearer {args['bearer_token']}"
        return headers

    async def send(self, delivery: ClaimedDelivery) -> SendResult:
        args = delivery.sink_args or {}
        body = delivery.body
        if args.get("template") is not None:
            try:
                body = await self._render(args["template"], delivery)
            except RenderFailed as exc:
                # The same event renders the same way next time: permanent, said in the row.
                return SendResult(
                    ok=False,
                    error="template_error",
                    reason="other",
                    transient=False,
                    response_body=audit_text(str(exc), credentials(args)),
                )
            except WorkersUnavailable as exc:
                # No worker to render with (shutting down): not the template's fault.
                return SendResult(
                    ok=False,
                    error="template_unavailable",
                    reason="other",
                    transient=True,
                    response_body=str(exc),
                )
        return await self._post(delivery, body)

    async def send_digest(self, delivery: ClaimedDelivery, digest: Digest) -> SendResult:
        """The digest's JSON body, signed like any other (a ``template`` shapes single events
        only); ``webhook-id`` is the carrying delivery's, the same on every retry."""
        return await self._post(delivery, webhook_body(digest))

    async def _post(self, delivery: ClaimedDelivery, body: bytes) -> SendResult:
        """POST ``body`` to the sink's URL, signed; its credentials redacted from the answer."""
        args = delivery.sink_args or {}
        return await post(
            self._session,
            args["url"],
            body=body,
            headers=self.build_headers(delivery, body=body),
            timeout=self._timeout,
            secrets=credentials(args),
        )

    async def _render(self, template: Any, delivery: ClaimedDelivery) -> bytes:
        event_id = str(delivery.event_id)
        if isinstance(template, str):
            context = delivery_context(
                delivery.body, event_id, delivery.received_at, self._console_url
            )
            return render_preset(template, context)
        request = RenderRequest(
            source=template["body"],
            envelope=delivery.body,
            event_id=event_id,
            received_at=rfc3339(delivery.received_at),
            console_url=self._console_url,
        )
        return await self._templates.render(request)
