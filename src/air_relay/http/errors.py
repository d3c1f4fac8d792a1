"""The one error body shape, ``{"error": {"code", "message"}}``, and the middleware that makes
every failure come out in it: ``ApiError``, ``InvalidArgument`` (400 ``invalid_argument``),
aiohttp's own 404/405/413, a database that cannot take the request (503), and bugs (500)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

import structlog
from aiohttp import web

from air_relay.db.pool import DB_UNAVAILABLE, POOLER_HINT, pooler_misconfigured
from air_relay.http.listener import guard_of
from air_relay.validation import InvalidArgument

log = structlog.get_logger(__name__)

RETRY_AFTER_SECONDS = "5"

_DEFAULT_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_event",
    503: "unavailable",
}


class ApiError(Exception):
    def __init__(
        self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})


def error_response(
    status: int, code: str, message: str, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.json_response(
        {"error": {"code": code, "message": message}}, status=status, headers=headers
    )


def unavailable(
    message: str = "The database cannot take the request right now; retry shortly.",
) -> ApiError:
    """503 ``unavailable`` with Retry-After: something the request needs is away for now."""
    return ApiError(503, "unavailable", message, {"Retry-After": RETRY_AFTER_SECONDS})


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure as the error body; on a guarded connection (``listener.py``), also tells
    the guard when the request starts and ends (one middleware doing both: a middleware is
    a coroutine and a call more per request)."""
    guard = guard_of(request)
    if guard is not None:
        guard.request_started(request)
    try:
        return await handler(request)
    except Exception as exc:
        aborted = guard is not None and guard.closed_for is not None
        if aborted and isinstance(exc, ConnectionResetError):
            # The guard aborted the connection while the handler read the body: nobody is
            # left to answer, and it is not an error of the relay's.
            return web.Response(status=408)
        return error_answer(request, exc)
    finally:
        if guard is not None:
            guard.request_finished()


def error_answer(request: web.Request, exc: Exception) -> web.StreamResponse:
    """The answer to a handler's exception (called in its except block: a bug's log line
    carries the traceback); an HTTP exception below 400 (a redirect) is raised again."""
    if isinstance(exc, ApiError):
        return error_response(exc.status, exc.code, exc.message, exc.headers)
    if isinstance(exc, InvalidArgument):
        return error_response(400, "invalid_argument", f"{exc.field} {exc.message}.")
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return error_response(413, "payload_too_large", "The request body is too large.")
    if isinstance(exc, web.HTTPException):
        if exc.status < 400:
            raise exc
        code = _DEFAULT_CODES.get(exc.status, "http_error")
        headers = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
        return error_response(exc.status, code, exc.reason, headers)
    if isinstance(exc, DB_UNAVAILABLE):
        log.warning("database_unavailable", path=request.path, error=type(exc).__name__)
        err = unavailable()
        return error_response(err.status, err.code, err.message, err.headers)
    if pooler_misconfigured(exc):
        # A configuration problem, not a bug: the hint says what to set, a traceback
        # would only bury it.
        log.error(
            "request_failed",
            path=request.path,
            method=request.method,
            error=type(exc).__name__,
            detail=str(exc).partition("\n")[0][:200],
            hint=POOLER_HINT,
        )
    else:
        log.exception("request_failed", path=request.path, method=request.method)
    return error_response(500, "internal_error", "An unexpected error occurred.")
