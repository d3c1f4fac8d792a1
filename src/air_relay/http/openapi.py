"""``GET /v1/openapi.json``: the OpenAPI 3.1 document of this API, served as the file
``openapi.json`` beside this module (package data; ``docs/openapi.json`` links to it), byte for
byte. No credentials: it describes the API, it holds nothing of anyone's.

The tests check that the document is valid, that it names every route of the app and nothing
else, and that the app's answers conform to it (``tests/http/test_openapi.py``).
"""

from __future__ import annotations

import functools
from importlib import resources

from aiohttp import web

PATH = "/v1/openapi.json"


@functools.cache
def document() -> bytes:
    """The document's bytes, read once from the package."""
    return resources.files(__package__).joinpath("openapi.json").read_bytes()


async def openapi(_request: web.Request) -> web.Response:
    return web.Response(body=document(), content_type="application/json", charset="utf-8")


def add_routes(app: web.Application) -> None:
    app.router.add_get(PATH, openapi)
