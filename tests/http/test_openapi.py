"""The OpenAPI document (``src/air_relay/http/openapi.json``, served at ``/v1/openapi.json``):
valid OpenAPI 3.1, naming exactly the app's routes, served byte for byte without credentials,
and true to the app: schemathesis sends it generated requests (valid and invalid ones, with
a real API key and ingest token) and checks every answer against it.

How generated sink URLs stay unresolved: the relay under schemathesis runs in this process,
on a thread of its own and a real port on 127.0.0.1, with no dispatcher (nothing is ever
sent to a sink), and with the egress guard on (``allow_private_destinations: false``, the
default in production, so its refusals are exercised too) but its name lookups replaced by
``RefusingLookups``: it records the name and fails as an unresolvable name would, without
asking any resolver. The guard lets such a name through (a sink may be set up before its
DNS), so creates still succeed, and ``test_sink_names_are_never_resolved`` shows the name
went there. Running the relay in a subprocess inside ``unshare -n`` (loopback only) was the
other way; it was not taken because the relay must still reach the tests' PostgreSQL, which
is on the host's loopback (or elsewhere, with ``AIR_RELAY_TEST_DSN``) and not in a new
network namespace, and because this way works the same whatever user runs the tests.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import requests
import schemathesis
from aiohttp import web
from hypothesis import HealthCheck, settings
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate
from schemathesis.config import SchemathesisConfig

from air_relay import __version__
from air_relay.events import catalog
from air_relay.http.state import LOOKUPS
from air_relay.runtime import build_app
from air_relay.sinks.egress_guard import AddrInfo, Lookups
from tests.support import (
    ADMIN_KEY,
    INGEST_TOKEN,
    SLACK_INTEGRATION,
    TEMPLATE_DB,
    TENANT,
    RelayFactory,
    Reply,
    SinkServer,
    auth,
    create_sink,
    make_config,
    post_event,
    scratch_database,
    wait_until,
)

ROOT = Path(__file__).parent.parent.parent
DOCUMENT_PATH = ROOT / "src/air_relay/http/openapi.json"
DOCUMENT: dict[str, Any] = json.loads(DOCUMENT_PATH.read_text())
METHODS = ("get", "put", "post", "delete", "patch", "options", "trace")

# Small and bounded: a few examples per operation keeps the whole run within seconds. A deeper
# hunt, by hand: AIR_RELAY_OPENAPI_EXAMPLES=200 pytest tests/http/test_openapi.py
MAX_EXAMPLES = int(os.environ.get("AIR_RELAY_OPENAPI_EXAMPLES", "8"))
SUBSTITUTE = itertools.count()
# Every check but positive_data_acceptance: a schema-valid request may still be refused with
# a 400, for a reason a schema cannot state (a cursor the API did not hand out, an id in the
# body that differs from the path's, a Slack integration the configuration does not name).
EXCLUDED_CHECKS = ["positive_data_acceptance"]
schema = schemathesis.openapi.from_dict(
    DOCUMENT,
    config=SchemathesisConfig.from_dict(
        {
            "auth": {
                "openapi": {
                    "ingestToken": {"bearer": INGEST_TOKEN},
                    "apiKey": {"bearer": ADMIN_KEY},
                }
            },
            "checks": {name: {"enabled": False} for name in EXCLUDED_CHECKS},
            "generation": {"mode": "all", "database": "none"},
        }
    ),
)


def test_document_is_valid_openapi_3_1() -> None:
    assert DOCUMENT["openapi"].startswith("3.1.")
    assert DOCUMENT["info"]["version"] == __version__
    validate(DOCUMENT)


def test_event_names_are_the_catalog() -> None:
    """A sink's ``events`` takes the catalog's names only: the document lists exactly them."""
    listed = DOCUMENT["components"]["schemas"]["AirEventName"]["enum"]
    assert sorted(listed) == sorted(catalog())


def test_docs_copy_is_the_package_file() -> None:
    """docs/openapi.json is a link to the served file: one document, never two copies."""
    assert (ROOT / "docs/openapi.json").resolve() == DOCUMENT_PATH.resolve()


def test_document_names_every_route_and_nothing_else() -> None:
    # The app exactly as serve builds it; its database is only reached when it starts.
    app = build_app(make_config(), "postgresql://127.0.0.1/never-connected")
    routes = {
        (route.method.lower(), route.resource.canonical)
        for route in app.router.routes()
        if route.method != "HEAD" and route.resource is not None
    }
    documented = {
        (method, path)
        for path, item in DOCUMENT["paths"].items()
        for method in item
        if method in METHODS
    }
    assert routes - documented == set(), "routes the document does not describe"
    assert documented - routes == set(), "documented operations the app does not have"


async def test_document_is_served_without_credentials(make_relay: RelayFactory) -> None:
    client = await make_relay(run_dispatcher=False)
    resp = await client.get("/v1/openapi.json")
    assert resp.status == 200
    assert resp.content_type == "application/json"
    assert await resp.read() == DOCUMENT_PATH.read_bytes()


async def test_empty_query_values_count_as_absent(make_relay: RelayFactory) -> None:
    """Found by schemathesis: ``limit=`` or ``since=`` is read as absent (not a 400), which
    the document now says (``allowEmptyValue``) for every such parameter."""
    client = await make_relay(run_dispatcher=False)
    empty = "limit=&cursor=&event_sink_id=&event_name=&since=&until="
    for path in ("/v1/audit_log", "/v1/delivery", "/v1/event_sink"):
        query = f"tenant_id={TENANT}&{empty}" + ("&status_code=" if "audit" in path else "")
        resp = await client.get(f"{path}?{query}", headers=auth(ADMIN_KEY))
        assert resp.status == 200, await resp.text()
        operation = DOCUMENT["paths"][path]["get"]
        for param in operation["parameters"]:
            name = param.get("name") or param["$ref"].rpartition("/")[2]
            resolved = param if "name" in param else DOCUMENT["components"]["parameters"][name]
            if f"{resolved['name']}=" in query and resolved["name"] != "tenant_id":
                assert resolved.get("allowEmptyValue") is True, (path, resolved["name"])


def assert_conforms(schema_name: str, body: Any) -> None:
    """``body`` is valid against ``components/schemas/<schema_name>`` of the document."""
    root = {"$ref": f"#/components/schemas/{schema_name}", "components": DOCUMENT["components"]}
    Draft202012Validator(root).validate(body)


async def test_answers_generation_rarely_reaches_conform(
    make_relay: RelayFactory, db: asyncpg.Connection
) -> None:
    """What generated requests seldom see: a dead delivery retried (202), lists with rows in
    them (a Slack and a PagerDuty sink, deliveries), a sink with ordering and a fallback, and
    the 409 for deleting a sink that is another's fallback."""
    client = await make_relay(run_dispatcher=False)
    slack = {"Slack": {"channel_id": "C0123", "slack_integration_id": SLACK_INTEGRATION}}
    await create_sink(client, slack)
    await create_sink(client, {"PagerDuty": {"integration_key": "pd-key-0123456789"}})
    resp = await post_event(client, {"eventName": "X", "organizationId": "org", "data": {}})
    assert resp.status == 202
    assert_conforms("IngestAccepted", await resp.json())
    await db.execute("UPDATE deliveries SET status = 'dead', attempts = 1, last_error = 'x'")
    query = f"tenant_id={TENANT}"
    listed = await (await client.get(f"/v1/delivery?{query}", headers=auth(ADMIN_KEY))).json()
    assert_conforms("DeliveryPage", listed)
    assert len(listed["data"]["deliveries"]) == 2
    delivery_id = listed["data"]["deliveries"][0]["id"]
    resp = await client.post(f"/v1/delivery/{delivery_id}/retry", headers=auth(ADMIN_KEY))
    assert resp.status == 202
    assert_conforms("DeliveryRequeued", await resp.json())
    sinks = await (await client.get(f"/v1/event_sink?{query}", headers=auth(ADMIN_KEY))).json()
    assert_conforms("EventSinkList", sinks)
    assert len(sinks["data"]["event_sinks"]) == 2
    # A sink with options, and its fallback, which cannot be deleted while it is one (409).
    target = sinks["data"]["event_sinks"][0]["id"]
    options = {"ordering": "case", "fallback_event_sink_id": target}
    assert_conforms("EventSink", await create_sink(client, slack, **options))
    resp = await client.delete(f"/v1/event_sink/{target}", headers=auth(ADMIN_KEY))
    assert resp.status == 409
    assert_conforms("Error", await resp.json())


async def test_audit_answers_conform(make_relay: RelayFactory, sink_server: SinkServer) -> None:
    """The audit log with attempts in it (one failed, one delivered) under a sealed chain, and
    the sinks' health after them."""
    client = await make_relay(audit={"seal_interval_seconds": 0.05})
    sink_server.script.append(Reply(status=404, body="no such hook"))
    sinks = [await create_sink(client, {"Webhook": {"url": sink_server.url()}}) for _ in "ab"]
    assert (
        await post_event(client, {"eventName": "X", "organizationId": 1, "data": {}})
    ).status == 202
    url = f"/v1/audit_log?tenant_id={TENANT}"

    async def sealed() -> bool:
        page = await (await client.get(url, headers=auth(ADMIN_KEY))).json()
        entries = page["data"]["audit_logs"]
        return len(entries) == 2 and all(e["seal_id"] is not None for e in entries)

    await wait_until(sealed)
    assert_conforms("AuditLogPage", await (await client.get(url, headers=auth(ADMIN_KEY))).json())
    seal = await (await client.get("/v1/audit_seal/latest", headers=auth(ADMIN_KEY))).json()
    assert seal["data"]["audit_seal"] is not None
    assert_conforms("LatestSeal", seal)
    # The same attempts as health: one sink failing, the other healthy.
    states = set()
    for sink in sinks:
        resp = await client.get(f"/v1/event_sink/{sink['id']}/health", headers=auth(ADMIN_KEY))
        health = await resp.json()
        assert_conforms("SinkHealth", health)
        states.add(health["state"])
    assert states == {"failing", "healthy"}
    status = await client.get(f"/v1/status?tenant_id={TENANT}", headers=auth(ADMIN_KEY))
    assert_conforms("TenantStatus", await status.json())


class RefusingLookups(Lookups):
    """The egress guard's name lookups, answered without resolving: every name fails as a
    name that does not resolve would, and is recorded."""

    def __init__(self) -> None:
        super().__init__(threads=1)
        self.names: list[str] = []

    async def __call__(
        self, host: str, port: int, family: int = socket.AF_UNSPEC
    ) -> list[AddrInfo]:
        self.names.append(host)
        raise socket.gaierror(socket.EAI_NONAME, f"{host}: not resolved in tests")


@dataclass
class LiveRelay:
    url: str
    lookups: RefusingLookups
    sink_id: str = ""
    delivery_id: str = ""

    def call(self, method: str, path: str, key: str, body: Any = None) -> Any:
        resp = requests.request(
            method, f"{self.url}{path}", json=body, headers=auth(key), timeout=10
        )
        assert resp.status_code < 300, resp.text
        return resp.json()

    def new_sink(self) -> str:
        """A Webhook sink with every kind of argument, so the masked configuration shows."""
        body = {
            "tenant_id": TENANT,
            "name": "schemathesis",
            "description": "a sink the generated requests read, change and replay",
            "event_sink_args": {
                "Webhook": {
                    "url": "https://user:pass@hooks.relay-test.invalid/air?token=abc",
                    "secret": "whsec_" + base64.b64encode(b"0123456789abcdef").decode(),
                    "headers": {"X-Api-Key": "key-0123456789", "X-Team": "soc"},
                    "template": "teams",
                }
            },
            "events": ["CaseCreatedEvent"],
            "organization_ids": [0, "org-1"],
            "ordering": "case",
        }
        return str(self.call("POST", "/v1/event_sink", ADMIN_KEY, body)["event_sink"]["id"])

    def seed(self) -> None:
        """A standing sink and a pending delivery to it, for generated requests to find."""
        self.sink_id = self.new_sink()
        event = {"eventName": "CaseCreatedEvent", "organizationId": 0, "data": {"id": "C-1"}}
        self.call("POST", "/v1/air/events", INGEST_TOKEN, event)
        page = self.call("GET", f"/v1/delivery?tenant_id={TENANT}", ADMIN_KEY)
        self.delivery_id = page["data"]["deliveries"][0]["id"]

    def real_id(self, case: schemathesis.Case) -> str:
        if case.path == "/v1/delivery/{id}/retry":
            return self.delivery_id
        # A DELETE gets a sink of its own; the others share the standing one.
        return self.new_sink() if case.method.upper() == "DELETE" else self.sink_id


@pytest.fixture(scope="module")
def live_relay(
    server_dsn: str, template_dsn: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveRelay]:
    """The relay app on a real port of 127.0.0.1, served by its own thread and event loop
    (schemathesis calls it with blocking requests), on a scratch database, no dispatcher."""
    state_dir = tmp_path_factory.mktemp("openapi-state")
    cfg = make_config(
        state_dir=str(state_dir),
        delivery={"allow_private_destinations": False},
        # Every valid generated create makes a sink: room for a deep run's worth.
        api={"max_sinks_per_tenant": 100_000},
    )
    loop = asyncio.new_event_loop()
    started: list[LiveRelay] = []
    ready = threading.Event()
    stop = asyncio.Event()
    failed: list[BaseException] = []

    async def main() -> None:
        try:
            async with scratch_database(server_dsn, TEMPLATE_DB) as dsn:
                app = build_app(cfg, dsn, run_dispatcher=False)
                lookups = RefusingLookups()

                async def refuse_lookups(app: web.Application) -> None:
                    app[LOOKUPS] = lookups

                # After the runtime's own start-up, which puts the real lookups in place.
                app.on_startup.append(refuse_lookups)
                runner = web.AppRunner(app, access_log=None)
                await runner.setup()
                try:
                    site = web.TCPSite(runner, "127.0.0.1", 0)
                    await site.start()
                    host, port = runner.addresses[0][:2]
                    started.append(LiveRelay(f"http://{host}:{port}", lookups))
                    ready.set()
                    await stop.wait()
                finally:
                    await runner.cleanup()
                    lookups.close()
        except BaseException as exc:
            failed.append(exc)
        finally:
            ready.set()

    thread = threading.Thread(target=lambda: loop.run_until_complete(main()), daemon=True)
    thread.start()
    ready.wait(timeout=60)
    if failed or not started:
        thread.join(timeout=10)
        raise RuntimeError("the live relay did not start") from (failed[0] if failed else None)
    started[0].seed()
    try:
        yield started[0]
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(timeout=30)
        loop.close()


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_app_conforms_to_document(case: schemathesis.Case, live_relay: LiveRelay) -> None:
    # Generated ids name nothing (404): every other case of an operation on one sink or
    # delivery names a real one instead, so its 200s, 202s and 409s are checked too.
    if "id" in (case.path_parameters or {}) and next(SUBSTITUTE) % 2 == 0:
        case.path_parameters = {"id": live_relay.real_id(case)}
    case.call_and_validate(base_url=live_relay.url)


def test_sink_names_are_never_resolved(live_relay: LiveRelay) -> None:
    """A sink whose host is a name is created with the egress guard on, and the name went
    to the refusing lookups, not to a resolver (``.invalid`` never resolves anyway)."""
    body = {
        "tenant_id": TENANT,
        "name": "unresolved",
        "description": "",
        "event_sink_args": {"Webhook": {"url": "https://relay-test.invalid/hook"}},
    }
    resp = requests.post(
        f"{live_relay.url}/v1/event_sink", json=body, headers=auth(ADMIN_KEY), timeout=10
    )
    assert resp.status_code == 200, resp.text
    assert "relay-test.invalid" in live_relay.lookups.names


class Workflow(schema.as_state_machine()):  # type: ignore[misc]
    """Sequences along the document's links: create a sink, then read, change, replay or
    delete it, checking every answer as above."""

    base_url = ""

    def get_call_kwargs(self, case: schemathesis.Case) -> dict[str, Any]:
        return {"base_url": self.base_url}


def test_links_conform(live_relay: LiveRelay) -> None:
    Workflow.base_url = live_relay.url
    Workflow.run(
        settings=settings(
            max_examples=MAX_EXAMPLES,
            stateful_step_count=5,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
        )
    )
