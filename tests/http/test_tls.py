"""HTTPS with ``server.tls``, with certificates from a throwaway CA (trustme): ingest over TLS,
no HTTP answer to plain HTTP on the TLS port, nothing older than TLS 1.2, and a real ``serve``
process reloading its certificate on SIGHUP without dropping a connection (a broken file on
reload keeps the certificate in service). Everything on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import ssl
import subprocess
import time
import warnings
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme
import yaml

from air_relay.config import TlsConfig
from air_relay.http.tls import ServerTLS
from tests.fault.relay import relay_command
from tests.support import (
    INGEST_TOKEN,
    TENANT,
    GuardedRelay,
    GuardedStarter,
    auth,
    free_port,
    read_response,
    request_head,
    wait_until,
)
from tests.test_cli import clean_env, run, write_config

EVENT = json.dumps(
    {
        "eventName": "CaseCreatedEvent",
        "organizationId": 0,
        "data": {"id": "C-7", "name": "over TLS", "ownerUser": "analyst"},
    }
).encode()


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


def write_cert(ca: trustme.CA, directory: Path) -> tuple[Path, Path, bytes]:
    """A new certificate for 127.0.0.1 in cert.pem (with its chain) and key.pem; its DER."""
    issued = ca.issue_cert("127.0.0.1")
    cert, key = directory / "cert.pem", directory / "key.pem"
    cert.write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
    key.write_bytes(issued.private_key_pem.bytes())
    return cert, key, ssl.PEM_cert_to_DER_cert(issued.cert_chain_pems[0].bytes().decode())


def client_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


def server_tls(cert: Path, key: Path) -> ServerTLS:
    return ServerTLS(TlsConfig(cert_file=str(cert), key_file=str(key)))


async def test_ingest_over_https(
    start_guarded: GuardedStarter, ca: trustme.CA, tmp_path: Path, db: Any
) -> None:
    cert, key, _ = write_cert(ca, tmp_path)
    relay = await start_guarded(tls=server_tls(cert, key))
    url = f"https://127.0.0.1:{relay.port}/v1/air/events"
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            url,
            data=EVENT,
            headers={**auth(INGEST_TOKEN), "Content-Type": "application/json"},
            ssl=client_context(ca),
        ) as resp,
    ):
        assert resp.status == 202, await resp.text()
    assert await db.fetchval("SELECT count(*) FROM events") == 1


async def test_plain_http_to_the_tls_port_gets_no_http_answer(
    start_guarded: GuardedStarter, ca: trustme.CA, tmp_path: Path
) -> None:
    cert, key, _ = write_cert(ca, tmp_path)
    relay = await start_guarded(tls=server_tls(cert, key))
    reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    try:
        answer = await asyncio.wait_for(reader.read(), 15)
    except ConnectionResetError:
        answer = b""
    writer.close()
    assert not answer.startswith(b"HTTP/"), answer


async def test_a_tls_slowloris_is_disconnected_and_its_slot_freed(
    start_guarded: GuardedStarter, ca: trustme.CA, tmp_path: Path
) -> None:
    cert, key, _ = write_cert(ca, tmp_path)
    # The handshake gets header_timeout_seconds, then the headers get as long again.
    relay = await start_guarded(
        tls=server_tls(cert, key), client_ssl=client_context(ca), header_timeout_seconds=0.5
    )
    silent = await asyncio.open_connection("127.0.0.1", relay.port)  # never says hello
    trickling = await relay.connect()  # handshakes, then sends headers a byte at a time
    for byte in request_head(len(EVENT))[:5]:
        trickling[1].write(bytes([byte]))
        await asyncio.sleep(0.05)
    for reader, writer in (silent, trickling):
        with contextlib.suppress(ConnectionResetError, ssl.SSLError):  # a reset is a close too
            assert await asyncio.wait_for(reader.read(), 15) == b""
        writer.close()
    await wait_until(lambda: _none_open(relay))
    assert relay.counter("air_relay_http_slow_connections_closed_total", phase="headers") == 1


async def _none_open(relay: GuardedRelay) -> bool:
    return relay.site.open_connections == 0


async def test_nothing_older_than_tls_1_2(
    start_guarded: GuardedStarter, ca: trustme.CA, tmp_path: Path
) -> None:
    cert, key, _ = write_cert(ca, tmp_path)
    tls = server_tls(cert, key)
    assert tls.context.minimum_version == ssl.TLSVersion.TLSv1_2
    relay = await start_guarded(tls=tls)

    async def handshake(version: ssl.TLSVersion) -> str:
        context = client_context(ca)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # TLS 1.1 is, rightly
            context.set_ciphers("DEFAULT:@SECLEVEL=0")  # so the client offers it at all
            context.minimum_version = ssl.TLSVersion.TLSv1
            context.maximum_version = version
        _, writer = await asyncio.open_connection("127.0.0.1", relay.port, ssl=context)
        negotiated = writer.get_extra_info("ssl_object").version()
        writer.close()
        return str(negotiated)

    assert await handshake(ssl.TLSVersion.TLSv1_2) == "TLSv1.2"
    # The server answers a TLS 1.1 ClientHello with an alert or by closing the connection.
    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        await handshake(ssl.TLSVersion.TLSv1_1)


def test_check_config_refuses_a_certificate_that_does_not_load(
    ca: trustme.CA, tmp_path: Path
) -> None:
    cert, key, _ = write_cert(ca, tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    _, other_key, _ = write_cert(ca, other)
    for cert_file, key_file in [(cert, other_key), (tmp_path / "absent.pem", key)]:
        path = write_config(
            tmp_path / "c.yaml",
            {"server": {"tls": {"cert_file": str(cert_file), "key_file": str(key_file)}}},
        )
        result = run("check-config", "--config", str(path))
        assert result.returncode == 2, result.stderr
        assert "server.tls" in result.stderr
    path = write_config(tmp_path / "c.yaml", {"server": {"tls": {"cert_file": str(cert)}}})
    result = run("check-config", "--config", str(path))
    assert result.returncode == 2
    assert "server.tls.key_file" in result.stderr


# --- a real serve process and SIGHUP ---------------------------------------------------------


class Serve:
    def __init__(self, tmp_path: Path, dsn: str, cert: Path, key: Path) -> None:
        self.port = free_port()
        self.log = tmp_path / "serve.log"
        config = {
            "server": {
                "host": "127.0.0.1",
                "port": self.port,
                "tls": {"cert_file": str(cert), "key_file": str(key)},
            },
            "database": {"dsn": dsn},
            "ingest": {"tokens": [{"token": INGEST_TOKEN, "tenant_id": TENANT}]},
            "logging": {"format": "json", "level": "info"},
        }
        path = tmp_path / "serve.yaml"
        path.write_text(yaml.safe_dump(config))
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [*relay_command(), "serve", "--config", str(path)],
                env=clean_env(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )

    def events(self, name: str) -> list[dict[str, Any]]:
        lines = self.log.read_text().splitlines()
        found = [json.loads(line) for line in lines if line.startswith("{")]
        return [e for e in found if e.get("event") == name]

    async def wait_for(self, name: str, count: int = 1, timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while len(self.events(name)) < count:
            assert self.proc.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, f"no {name}: {self.log.read_text()}"
            await asyncio.sleep(0.05)
        return self.events(name)[count - 1]

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


async def post_on(
    connection: tuple[asyncio.StreamReader, asyncio.StreamWriter],
) -> int:
    reader, writer = connection
    writer.write(request_head(len(EVENT)) + EVENT)
    status, _ = await read_response(reader)
    return status


def peer_cert(connection: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> bytes:
    der: bytes = connection[1].get_extra_info("ssl_object").getpeercert(binary_form=True)
    return der


async def test_sighup_reloads_the_certificate_without_dropping_connections(
    db_dsn: str, ca: trustme.CA, tmp_path: Path
) -> None:
    cert, key, first = write_cert(ca, tmp_path)
    serve = Serve(tmp_path, db_dsn, cert, key)
    trusted = client_context(ca)

    async def connect() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", serve.port, ssl=trusted)

    try:
        ready = await serve.wait_for("server_ready")
        assert ready["address"] == f"https://127.0.0.1:{serve.port}"
        kept = await connect()
        assert peer_cert(kept) == first
        assert await post_on(kept) == 202

        # The renewed certificate, written over the same files, then SIGHUP.
        _, _, second = write_cert(ca, tmp_path)
        serve.proc.send_signal(signal.SIGHUP)
        reloaded = await serve.wait_for("tls_reloaded")
        assert reloaded["cert_file"] == str(cert)
        fresh = await connect()
        assert peer_cert(fresh) == second
        assert await post_on(fresh) == 202
        # The connection opened before the reload is still there, with its certificate.
        assert await post_on(kept) == 202
        assert peer_cert(kept) == first

        # A broken file on reload: an error, and the certificate in service stays.
        cert.write_text("-----BEGIN CERTIFICATE-----\nnot a certificate\n")
        serve.proc.send_signal(signal.SIGHUP)
        failed = await serve.wait_for("tls_reload_failed")
        assert failed["level"] == "error"
        later = await connect()
        assert peer_cert(later) == second
        assert await post_on(later) == 202
        for _, writer in (kept, fresh, later):
            writer.close()
    finally:
        code = serve.stop()
    assert code == 0, serve.log.read_text()
