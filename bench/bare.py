"""The ingest reference: a bare aiohttp handler that reads the body, parses the JSON and
answers 202, in its own process on 127.0.0.1, with no access log (as ``air-relay serve``).

``--loop`` picks the event loop; bench/compare.py passes the one ``air-relay serve`` runs on,
so the two differ only in what the relay does per request. It parses with the standard
``json`` module on purpose: that is the fixed bar the relay is measured against.

    .venv/bin/python -m bench.bare --port 9001 --loop asyncio
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json

from aiohttp import web

from bench.receiver import run


async def ingest(request: web.Request) -> web.Response:
    body = await request.read()
    event = json.loads(body)
    if not isinstance(event, dict):
        return web.json_response({"error": "not an object"}, status=422)
    return web.json_response({"accepted": True}, status=202)


async def ready(_request: web.Request) -> web.Response:
    return web.Response(text="ready")


async def serve(port: int) -> None:
    app = web.Application()
    app.router.add_post("/v1/air/events", ingest)
    app.router.add_get("/ready", ready)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    print(f"bare handler listening on 127.0.0.1:{port}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        run(serve(args.port), args.loop)


if __name__ == "__main__":
    main()
