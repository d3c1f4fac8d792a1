"""The SSRF guard: with ``allow_private_destinations`` false, no Webhook reaches the
operator's own network, neither at create/update nor at send time (DNS can change)."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import threading
import uuid
from typing import Any

import asyncpg
import pytest

from air_relay.sinks.egress_guard import (
    DestinationRefused,
    Lookups,
    check_url,
    guarded_socket,
    refusal,
)
from tests.support import (
    ADMIN_KEY,
    TENANT,
    SinkServer,
    auth,
    create_sink,
    free_port,
    post_event,
    wait_until,
)

EVENT = {"eventName": "CaseCreatedEvent", "organizationId": 1, "data": {"id": "c-1"}}
GUARDED = {"delivery": {"allow_private_destinations": False}}

FORBIDDEN = {
    "127.0.0.1": "loopback",
    "127.255.0.9": "loopback",
    "10.1.2.3": "private",
    "172.16.0.1": "private",
    "192.168.1.1": "private",
    "169.254.169.254": "link-local",
    "224.0.0.1": "multicast",
    "239.255.255.250": "multicast",
    "0.0.0.0": "unspecified",
    "100.64.0.1": "reserved",  # carrier-grade NAT
    "192.0.2.10": "private",  # documentation range
    "255.255.255.255": "private",
    "::1": "loopback",
    "::": "unspecified",
    "fe80::1": "link-local",
    "fc00::1": "private",
    "fd12:3456::1": "private",
    "ff02::1": "multicast",
    "fec0::1": "site-local",  # deprecated, but still routed inside some networks
    "::ffff:127.0.0.1": "loopback",  # IPv4-mapped
    "::ffff:169.254.169.254": "link-local",
    "2002:7f00:1::": "loopback",  # 6to4 wrapping 127.0.0.1
    "64:ff9b::a9fe:a9fe": "link-local",  # NAT64 wrapping 169.254.169.254
    "2001:0:4136:e378:8000:63bf:80ff:fffe": "loopback",  # Teredo wrapping 127.0.0.1
}
ALLOWED = ["8.8.8.8", "93.184.216.34", "2606:4700:4700::1111", "2a00:1450:4001:81b::200e"]


@pytest.mark.parametrize(("address", "reason"), sorted(FORBIDDEN.items()))
def test_every_forbidden_class_is_refused(address: str, reason: str) -> None:
    assert refusal(ipaddress.ip_address(address)) == reason


@pytest.mark.parametrize("address", ALLOWED)
def test_public_addresses_are_allowed(address: str) -> None:
    assert refusal(ipaddress.ip_address(address)) is None


def webhook(url: str) -> dict[str, Any]:
    return {
        "tenant_id": TENANT,
        "name": "n",
        "description": "d",
        "event_sink_args": {"Webhook": {"url": url}},
    }


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/hook",
        "http://[::1]/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/hook",
        "https://192.168.0.10:8443/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "http://[fe80::1]/hook",
        "http://0.0.0.0/hook",
        "http://224.0.0.1/hook",
        "http://localhost:9/hook",  # a name that resolves to loopback
        "http://2130706433/hook",  # 127.0.0.1 written as one decimal number
        "http://127.1/hook",  # the short form the C resolver expands to 127.0.0.1
        "http://0177.0.0.1/hook",  # octal
        "http://0x7f.0.0.1/hook",  # hex
        "http://0x7f000001/hook",  # one hex number
        "http://017700000001/hook",  # one octal number
        "http://0x7f.1/hook",  # short and hex
        "http://[::ffff:7f00:1]/hook",  # IPv4-mapped, written in hex
        "http://[64:ff9b::7f00:1]/hook",  # NAT64
        "http://[2002:7f00:1::]/hook",  # 6to4
        "http://[fd00::1]/hook",  # unique local
    ],
)
async def test_create_refuses_private_destinations(make_relay: Any, url: str) -> None:
    relay = await make_relay(**GUARDED)
    resp = await relay.post("/v1/event_sink", json=webhook(url), headers=auth(ADMIN_KEY))
    assert resp.status == 400, await resp.text()
    error = (await resp.json())["error"]
    assert error["code"] == "invalid_argument"
    assert "event_sink_args.Webhook.url" in error["message"]
    assert "allow_private_destinations" in error["message"]


async def test_create_accepts_a_public_address(make_relay: Any) -> None:
    relay = await make_relay(**GUARDED)
    resp = await relay.post(
        "/v1/event_sink", json=webhook("https://93.184.216.34/hook"), headers=auth(ADMIN_KEY)
    )
    assert resp.status == 200, await resp.text()


async def test_only_http_and_https(make_relay: Any) -> None:
    relay = await make_relay(**GUARDED)
    for url in ("ftp://93.184.216.34/x", "file:///etc/passwd", "gopher://93.184.216.34/"):
        resp = await relay.post("/v1/event_sink", json=webhook(url), headers=auth(ADMIN_KEY))
        assert resp.status == 400, url


async def test_update_refuses_a_private_destination(make_relay: Any) -> None:
    relay = await make_relay(**GUARDED)
    sink = await create_sink(relay, {"Webhook": {"url": "https://93.184.216.34/hook"}})
    resp = await relay.put(
        f"/v1/event_sink/{sink['id']}",
        json={"event_sink_args": {"Webhook": {"url": "http://169.254.169.254/"}}},
        headers=auth(ADMIN_KEY),
    )
    assert resp.status == 400
    stored = await relay.get(f"/v1/event_sink/{sink['id']}", headers=auth(ADMIN_KEY))
    url = (await stored.json())["event_sink"]["configuration"]["Webhook"]["url"]
    assert url == "https://93.184.216.34/hook"


async def test_allowed_when_configured(relay: Any) -> None:
    # The test config allows private destinations (every other test's sink is on 127.0.0.1).
    resp = await relay.post(
        "/v1/event_sink", json=webhook("http://127.0.0.1:9/hook"), headers=auth(ADMIN_KEY)
    )
    assert resp.status == 200


async def insert_webhook(db: asyncpg.Connection, url: str) -> None:
    """A sink stored before the guard was on, or whose name resolved elsewhere back then."""
    await db.execute(
        "INSERT INTO event_sinks (id, tenant_id, name, description, sink_type, args)"
        " VALUES ($1, $2, 'n', 'd', 'Webhook', $3)",
        uuid.uuid4(),
        TENANT,
        {"url": url},
    )


async def final_delivery(db: asyncpg.Connection) -> asyncpg.Record:
    async def done() -> bool:
        status = await db.fetchval("SELECT status FROM deliveries")
        return status in ("delivered", "dead")

    await wait_until(done)
    row = await db.fetchrow("SELECT status, attempts, last_error FROM deliveries")
    assert row is not None
    return row


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_send_time_refusal_is_permanent(
    make_relay: Any, db: asyncpg.Connection, sink_server: SinkServer, host: str
) -> None:
    port = sink_server.server.port
    await insert_webhook(db, f"http://{host}:{port}/hook")
    relay = await make_relay(**GUARDED)
    resp = await post_event(relay, EVENT)
    assert resp.status == 202
    row = await final_delivery(db)
    assert (row["status"], row["attempts"], row["last_error"]) == (
        "dead",
        1,
        "destination_not_allowed",
    )
    assert sink_server.received == []
    audit = await relay.get(f"/v1/audit_log?tenant_id={TENANT}", headers=auth(ADMIN_KEY))
    (entry,) = (await audit.json())["data"]["audit_logs"]
    assert entry["error"] == "destination_not_allowed"
    assert entry["status_code"] is None
    assert entry["next_attempt_at"] is None


async def test_configured_api_urls_are_not_guarded(
    make_relay: Any, db: asyncpg.Connection, sink_server: SinkServer
) -> None:
    # PagerDuty's URL is the operator's own config, not sink input: a name resolving to
    # loopback is fine there, while the same host in a Webhook sink is still refused.
    port = sink_server.server.port
    relay = await make_relay(
        **GUARDED, pagerduty={"events_url": f"http://localhost:{port}/v2/enqueue"}
    )
    await create_sink(relay, {"PagerDuty": {"integration_key": "e93facc04764012d7bfb002500d5d1a6"}})
    await insert_webhook(db, f"http://localhost:{port}/hook")
    resp = await post_event(relay, EVENT)
    assert (await resp.json())["deliveries"] == 2

    async def both_final() -> bool:
        rows = await db.fetch("SELECT status FROM deliveries")
        return all(r["status"] != "pending" for r in rows)

    await wait_until(both_final)
    rows = await db.fetch("SELECT sink_type, status, last_error FROM deliveries ORDER BY 1")
    assert [tuple(r) for r in rows] == [
        ("PagerDuty", "delivered", None),
        ("Webhook", "dead", "destination_not_allowed"),
    ]
    assert [r.path for r in sink_server.received] == ["/v2/enqueue"]


# --- the host as the HTTP client reads it --------------------------------------------------------

# Unicode "segmented digits" (U+1FBF0..U+1FBF9): Python's IDNA-2003 codec makes a name of them,
# yarl/aiohttp (UTS-46) make an IP address, which never reaches a resolver.
UNICODE_DIGIT_HOSTS = [
    "\U0001fbf1\U0001fbf2\U0001fbf7.0.0.1",  # 127.0.0.1
    "\U0001fbf1\U0001fbf6\U0001fbf9.\U0001fbf2\U0001fbf5\U0001fbf4.169.254",  # 169.254.169.254
    "\U0001fbf1\U0001fbf0.\U0001fbf0.\U0001fbf0.\U0001fbf1",  # 10.0.0.1
]


@pytest.mark.parametrize("host", UNICODE_DIGIT_HOSTS)
async def test_unicode_digits_that_make_an_ip_address_are_refused(
    make_relay: Any, sink_server: SinkServer, host: str
) -> None:
    relay = await make_relay(**GUARDED)
    url = f"http://{host}:{sink_server.server.port}/x"
    resp = await relay.post("/v1/event_sink", json=webhook(url), headers=auth(ADMIN_KEY))
    assert resp.status == 400, await resp.text()
    assert "event_sink_args.Webhook.url" in (await resp.json())["error"]["message"]
    # Even where private destinations are allowed, such a URL is not a valid one.
    open_relay = await make_relay()
    resp = await open_relay.post("/v1/event_sink", json=webhook(url), headers=auth(ADMIN_KEY))
    assert resp.status == 400, await resp.text()


async def test_a_stored_unicode_digit_url_is_refused_at_send(
    make_relay: Any, db: asyncpg.Connection, sink_server: SinkServer
) -> None:
    # Stored before the create-time check knew better: the send-time checks must hold alone.
    await insert_webhook(db, f"http://{UNICODE_DIGIT_HOSTS[0]}:{sink_server.server.port}/x")
    relay = await make_relay(**GUARDED)
    assert (await post_event(relay, EVENT)).status == 202
    row = await final_delivery(db)
    assert (row["status"], row["last_error"]) == ("dead", "destination_not_allowed")
    assert sink_server.received == []


def test_the_socket_factory_refuses_every_forbidden_address() -> None:
    # The last check, on the very address a connection is opened to, however it was written.
    for address in ("127.0.0.1", "169.254.169.254", "10.0.0.1"):
        with pytest.raises(DestinationRefused):
            guarded_socket((socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, 80)))
    with pytest.raises(DestinationRefused):
        guarded_socket((socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("::ffff:7f00:1", 80, 0, 0)))
    allowed = guarded_socket((socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", 80)))
    allowed.close()  # a socket, never connected


async def test_urls_are_stored_as_the_client_reads_them(relay: Any) -> None:
    port = free_port()
    fullwidth = "\uff4c\uff4f\uff43\uff41\uff4c\uff48\uff4f\uff53\uff54"  # "localhost"
    sink = await create_sink(relay, {"Webhook": {"url": f"HTTP://{fullwidth}:{port}/a/%7e"}})
    assert sink["configuration"]["Webhook"]["url"] == f"http://localhost:{port}/a/~"


# --- create-time lookups -------------------------------------------------------------------------


def resolves_to(*addresses: str) -> Any:
    async def lookup(host: str, port: int) -> list[Any]:
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in addresses]

    return lookup


async def test_a_name_resolving_to_a_forbidden_address_is_refused() -> None:
    with pytest.raises(DestinationRefused):
        await check_url("https://sink.test/x", resolves_to("93.184.216.34", "10.0.0.7"))
    await check_url("https://sink.test/x", resolves_to("93.184.216.34"))


@pytest.mark.parametrize("failure", [socket.gaierror(socket.EAI_NONAME, "no"), TimeoutError()])
async def test_a_name_that_cannot_be_resolved_now_is_accepted(failure: Exception) -> None:
    # On purpose (DNS may come later): safe because every send is checked again, inside the
    # client (test_send_time_refusal_is_permanent, test_a_stored_unicode_digit_url_...).
    async def lookup(host: str, port: int) -> list[Any]:
        raise failure

    await check_url("https://not-yet.test/x", lookup)


async def test_lookups_run_on_their_own_bounded_executor_with_a_timeout() -> None:
    lookups = Lookups(threads=1, timeout=0.2)
    try:
        assert await lookups("localhost", 80)  # /etc/hosts, no DNS query
        # A lookup that hangs holds the one thread: the next lookup times out instead of
        # queueing for ever, and the event loop's default executor is untouched.
        release = threading.Event()
        lookups._executor.submit(release.wait, 5)
        with pytest.raises(socket.gaierror):
            await lookups("localhost", 80)
        loop = asyncio.get_running_loop()
        assert await loop.run_in_executor(None, lambda: "free") == "free"
        release.set()
    finally:
        lookups.close()


async def test_lookups_of_one_name_share_one_thread() -> None:
    # A name whose DNS hangs holds one thread, not one per send that asks for it.
    lookups = Lookups(threads=1, timeout=0.2)
    try:
        release = threading.Event()
        lookups._executor.submit(release.wait, 5)
        answers = await asyncio.gather(
            *(lookups("localhost", 80) for _ in range(5)), return_exceptions=True
        )
        assert all(isinstance(a, socket.gaierror) for a in answers)
        assert lookups._executor._work_queue.qsize() == 1  # one queued lookup, not five
        release.set()

        async def answered() -> bool:
            return not lookups._running

        await wait_until(answered)
        assert await lookups("localhost", 80)
    finally:
        lookups.close()
