"""The status page over HTTP: sign-in and its cookie (flags, signature, expiry, scope),
sign-out, the security headers, cross-site POSTs refused, a wrong key answered with the form,
and hostile sink names and errors escaped. The browser test is test_status_browser.py."""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import trustme
from aiohttp import web
from aiohttp.test_utils import TestClient

from air_relay.config import ApiKey
from air_relay.http.sessions import COOKIE_NAME, Sessions
from air_relay.http.state import CONFIG, POOL
from air_relay.http.status_html import RelayState, SpoolState, status_page
from air_relay.http.status_page import CSP, SESSIONS
from air_relay.model import SinkHealth
from tests.http.test_tls import client_context, server_tls, write_cert
from tests.support import (
    ADMIN_KEY,
    TENANT_B,
    TENANT_B_KEY,
    GuardedStarter,
    RelayFactory,
    SinkServer,
    auth,
    create_sink,
)

Client = TestClient[web.Request, web.Application]


def check_security_headers(resp: aiohttp.ClientResponse) -> None:
    csp = resp.headers["Content-Security-Policy"]
    assert csp == CSP
    assert "script-src" not in csp and "default-src 'none'" in csp  # so no script at all
    assert "frame-ancestors 'none'" in csp and "form-action 'self'" in csp
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert resp.headers["Referrer-Policy"] == "no-referrer"
    assert resp.headers["Cache-Control"] == "no-store"


async def sign_in(client: Client, key: str, **headers: str) -> aiohttp.ClientResponse:
    origin = {"Origin": str(client.make_url("/")).rstrip("/")}
    return await client.post(
        "/status/sign-in",
        data={"api_key": key},
        headers={**origin, **headers},
        allow_redirects=False,
    )


async def test_without_a_session_the_page_is_the_sign_in_form(make_relay: RelayFactory) -> None:
    client = await make_relay(run_dispatcher=False)
    resp = await client.get("/status")
    assert resp.status == 401
    check_security_headers(resp)
    assert resp.content_type == "text/html"
    text = await resp.text()
    assert 'action="/status/sign-in"' in text and 'name="api_key"' in text
    assert "<script" not in text and "style=" not in text  # nothing inline for the CSP to allow
    css = await client.get("/status/style.css")
    assert css.status == 200 and css.content_type == "text/css"
    check_security_headers(css)


async def test_sign_in_sets_a_signed_strict_http_only_cookie(make_relay: RelayFactory) -> None:
    client = await make_relay(run_dispatcher=False)
    resp = await sign_in(client, ADMIN_KEY)
    assert resp.status == 303 and resp.headers["Location"] == "/status"
    check_security_headers(resp)
    (cookie,) = resp.headers.getall("Set-Cookie")
    assert cookie.startswith(f"{COOKIE_NAME}=")
    flags = {part.strip().split("=")[0].lower() for part in cookie.split(";")[1:]}
    assert {"httponly", "samesite", "path", "max-age"} <= flags
    assert "SameSite=Strict" in cookie and "Path=/status" in cookie and "Max-Age=28800" in cookie
    assert "secure" not in flags  # plain HTTP: a Secure cookie would never come back
    assert ADMIN_KEY not in cookie
    page = await client.get("/status")
    assert page.status == 200, await page.text()
    check_security_headers(page)
    text = await page.text()
    assert 'id="relay-database"' in text and "reachable" in text and 'id="sign-out"' in text


async def test_a_wrong_key_shows_the_form_with_an_error(make_relay: RelayFactory) -> None:
    client = await make_relay(run_dispatcher=False)
    for key in ("not-a-key", "", "   ", ADMIN_KEY + "x"):
        resp = await sign_in(client, key)
        assert resp.status == 401, key
        check_security_headers(resp)
        assert "Set-Cookie" not in resp.headers
        text = await resp.text()
        assert 'id="sign-in-error"' in text and 'name="api_key"' in text
    # Not a form, or a broken one: the same answer, never a 500.
    resp = await client.post("/status/sign-in", json={"api_key": ADMIN_KEY})
    assert resp.status == 401
    for content_type, body in (
        ("multipart/form-data", b"garbage"),
        ("multipart/form-data; boundary=xx", b"garbage"),
        ("application/x-www-form-urlencoded", b"api_key=%ff%fe&&=="),
        ("application/x-www-form-urlencoded", b"\xff\xfe"),
        ("application/x-www-form-urlencoded; charset=latin-9", b"api_key=x"),
        ("application/x-www-form-urlencoded", b"&".join([b"a=1"] * 100)),
    ):
        resp = await client.post(
            "/status/sign-in", data=body, headers={"Content-Type": content_type}
        )
        assert resp.status == 401, (content_type, body, await resp.text())
    assert (await client.get("/status")).status == 401


async def test_cross_site_posts_are_refused(make_relay: RelayFactory) -> None:
    client = await make_relay(run_dispatcher=False)
    for headers in (
        {"Origin": "http://evil.test"},
        {"Origin": "null"},
        {"Origin": "null", "Sec-Fetch-Site": "cross-site"},
        {"Origin": "", "Sec-Fetch-Site": "cross-site"},
    ):
        resp = await sign_in(client, ADMIN_KEY, **headers)
        assert resp.status == 403, headers
        assert "Set-Cookie" not in resp.headers
    resp = await client.post("/status/sign-out", headers={"Origin": "http://evil.test"})
    assert resp.status == 403
    # The page's own form, as a browser under Referrer-Policy: no-referrer posts it.
    resp = await sign_in(client, ADMIN_KEY, Origin="null", **{"Sec-Fetch-Site": "same-origin"})
    assert resp.status == 303
    # A client that is not a browser (no Origin, no Sec-Fetch-Site) may sign in.
    resp = await client.post("/status/sign-in", data={"api_key": ADMIN_KEY}, allow_redirects=False)
    assert resp.status == 303


async def test_sign_out_clears_the_cookie_and_ends_the_session(make_relay: RelayFactory) -> None:
    client = await make_relay(run_dispatcher=False)
    resp = await sign_in(client, ADMIN_KEY)
    value = resp.cookies[COOKIE_NAME].value
    origin = str(client.make_url("/")).rstrip("/")
    out = await client.post("/status/sign-out", headers={"Origin": origin}, allow_redirects=False)
    assert out.status == 303
    (cleared,) = out.headers.getall("Set-Cookie")
    assert cleared.startswith(f'{COOKIE_NAME}=""') and "Max-Age=0" in cleared
    assert (await client.get("/status")).status == 401
    # A copy of the cookie kept from before the sign-out no longer works either.
    client.session.cookie_jar.clear()
    replayed = await client.get("/status", headers={"Cookie": f"{COOKIE_NAME}={value}"})
    assert replayed.status == 401


async def test_a_tampered_or_foreign_cookie_is_refused(make_relay: RelayFactory) -> None:
    client = await make_relay(run_dispatcher=False)
    value = (await sign_in(client, TENANT_B_KEY)).cookies[COOKIE_NAME].value
    client.session.cookie_jar.clear()
    version, fp, expires, nonce, sig = value.split(".")
    forged = [
        f"{version}.{fp}.{int(expires) + 3600}.{nonce}.{sig}",  # a longer life
        f"{version}.{fp}.{expires}.{nonce}.{sig[:-1]}{'A' if sig[-1] != 'A' else 'B'}",
        # Another key's fingerprint (the admin key's) with this signature.
        f"{version}.{Sessions([], 1).issue(ApiKey(ADMIN_KEY)).split('.')[1]}"
        f".{expires}.{nonce}.{sig}",
        "garbage",
    ]
    for cookie in forged:
        resp = await client.get("/status", headers={"Cookie": f"{COOKIE_NAME}={cookie}"})
        assert resp.status == 401, cookie
    resp = await client.get("/status", headers={"Cookie": f"{COOKIE_NAME}={value}"})
    assert resp.status == 200


def test_sessions_expire_and_end_with_their_key() -> None:
    admin, other = ApiKey(ADMIN_KEY), ApiKey(TENANT_B_KEY, [TENANT_B])
    sessions = Sessions([admin, other], lifetime_seconds=8 * 3600)
    now = time.time()
    token = sessions.issue(other, now=now)
    assert ADMIN_KEY not in token and TENANT_B_KEY not in token
    found = sessions.verify(token, now=now + 8 * 3600 - 1)
    assert found is not None and found.key == other
    assert sessions.verify(token, now=now + 8 * 3600) is None  # expired
    # Another process with the same configuration accepts it; without the key, nobody does.
    assert Sessions([admin, other], 60).verify(token, now=now) is not None
    assert Sessions([admin], 60).verify(token, now=now) is None
    # A changed key (same tenants) does not accept the old key's cookies.
    assert Sessions([replace(other, key=TENANT_B_KEY + "2")], 60).verify(token, now=now) is None


async def test_the_cookie_is_secure_over_tls(start_guarded: GuardedStarter, tmp_path: Path) -> None:
    ca = trustme.CA()
    cert, key, _ = write_cert(ca, tmp_path)
    relay = await start_guarded(tls=server_tls(cert, key))
    base = f"https://127.0.0.1:{relay.port}"
    async with (
        aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http,
        http.post(
            f"{base}/status/sign-in",
            data={"api_key": ADMIN_KEY},
            headers={"Origin": base},
            ssl=client_context(ca),
            allow_redirects=False,
        ) as resp,
    ):
        assert resp.status == 303
        (cookie,) = resp.headers.getall("Set-Cookie")
        assert "; Secure" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie


async def test_the_bearer_header_works_too(make_relay: RelayFactory) -> None:
    client = await make_relay(run_dispatcher=False)
    assert (await client.get("/status", headers=auth(ADMIN_KEY))).status == 200
    assert (await client.get("/status", headers=auth("wrong"))).status == 401


def test_the_page_escapes_names_errors_and_tenants() -> None:
    now = datetime.now(UTC)
    hostile = '<script>alert("x")</script>&"\'><img src=x onerror=alert(1)>'
    row = SinkHealth(
        event_sink_id=uuid.uuid4(),
        tenant_id=hostile,
        name=hostile,
        type="Webhook",
        active=True,
        state="failing",
        since=now - timedelta(minutes=3),
        last_success_at=None,
        last_failure_at=now - timedelta(minutes=1),
        last_error=hostile,
        last_status_code=500,
        consecutive_failures=4,
        pending=7,
        dead=1,
        oldest_pending_at=now - timedelta(seconds=90),
        delivered_last_hour=0,
        failed_attempts_last_hour=0,
    )
    relay = RelayState("0.1.0", 3700, True, 6, SpoolState(False, 0, 0, 10), True, now)
    text = status_page(relay, [row, replace(row, tenant_id="t2")], hostile)
    assert "<script" not in text and "<img" not in text and 'alert("x")' not in text
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;&quot;&#x27;&gt;" in text
    cells = re.findall(r'<td class="state state-failing">failing</td>', text)
    assert len(cells) == 2
    assert "1 min" in text and "3 min ago" in text and "HTTP 500" in text


async def test_an_unreachable_database_is_shown_not_a_500(make_relay: RelayFactory) -> None:
    client = await make_relay(run_dispatcher=False)
    await sign_in(client, ADMIN_KEY)
    # A closed pool refuses every acquire, as one whose server is gone does.
    await client.app[POOL].close()
    resp = await client.get("/status")
    assert resp.status == 200
    text = await resp.text()
    assert 'id="relay-database"><span class="down">unreachable' in text
    assert "not available while the database is unreachable" in text


async def test_a_session_sees_its_keys_tenants_only_and_names_are_escaped(
    make_relay: RelayFactory, sink_server: SinkServer
) -> None:
    client = await make_relay(run_dispatcher=False)
    hostile = '<script>alert("x")</script><img src=x onerror=alert(1)>'
    a = await create_sink(client, {"Webhook": {"url": sink_server.url()}}, name=hostile)
    b = await create_sink(
        client, {"Webhook": {"url": sink_server.url()}}, tenant_id=TENANT_B, name="B's sink"
    )
    await sign_in(client, TENANT_B_KEY)
    text = await (await client.get("/status")).text()
    assert f'id="sink-{b["id"]}"' in text and f'id="sink-{a["id"]}"' not in text
    assert "B&#x27;s sink" in text and "state-idle" in text
    assert "1 sink: 1 idle." in text

    client.session.cookie_jar.clear()
    await sign_in(client, ADMIN_KEY)
    text = await (await client.get("/status")).text()
    assert f'id="sink-{a["id"]}"' in text and f'id="sink-{b["id"]}"' in text
    assert "<script" not in text and "<img" not in text
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&lt;img" in text
    # Two tenants on one page: each row says whose it is.
    assert f'<span class="tenant">{TENANT_B}</span>' in text


async def test_an_expired_cookie_shows_the_sign_in_form(make_relay: RelayFactory) -> None:
    client = await make_relay(run_dispatcher=False, api={"session_hours": 1})
    sessions = client.app[SESSIONS]
    assert sessions.lifetime_seconds == 3600
    key = client.app[CONFIG].api.keys[0]
    expired = sessions.issue(key, now=time.time() - 3601)
    resp = await client.get("/status", headers={"Cookie": f"{COOKIE_NAME}={expired}"})
    assert resp.status == 401 and 'name="api_key"' in await resp.text()
    fresh = sessions.issue(key, now=time.time() - 3500)
    resp = await client.get("/status", headers={"Cookie": f"{COOKIE_NAME}={fresh}"})
    assert resp.status == 200
