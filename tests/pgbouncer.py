"""A real PgBouncer (Debian's ``pgbouncer`` package) in front of the tests' PostgreSQL: started
as a child process on 127.0.0.1 and a free port, with a generated pgbouncer.ini and userlist
in a temporary directory, every database of the server reachable through it."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from tests.support import free_port

# Debian installs it in /usr/sbin, which a non-root PATH may lack.
PGBOUNCER_PATHS = ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer")

# The password clients give PgBouncer (its userlist), under the server's user name; PgBouncer
# logs in to the server with the server DSN's own credentials.
CLIENT_PASSWORD = "bouncer-test-password"


def pgbouncer_binary() -> str | None:
    found = shutil.which("pgbouncer")
    if found:
        return found
    return next((p for p in PGBOUNCER_PATHS if os.access(p, os.X_OK)), None)


def pgbouncer_version(binary: str) -> str:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False)
    return out.stdout.splitlines()[0] if out.stdout else "unknown"


@dataclass
class PgBouncer:
    port: int
    user: str
    directory: Path
    process: subprocess.Popen[bytes]
    version: str

    def dsn(self, database: str) -> str:
        return f"postgresql://{self.user}:{CLIENT_PASSWORD}@127.0.0.1:{self.port}/{database}"

    def log(self) -> str:
        return (self.directory / "pgbouncer.log").read_text(errors="replace")


def _server_line(server_dsn: str) -> tuple[str, str]:
    """The ``[databases]`` connection string for the server behind ``server_dsn`` (a Unix
    socket directory as ``host=``, as the embedded server has), and the user name."""
    parts = urlsplit(server_dsn)
    query = parse_qs(parts.query)
    host = query.get("host", [parts.hostname or ""])[0]
    port = parts.port or int(query.get("port", ["5432"])[0])
    user = unquote(parts.username or "postgres")
    fields = [f"host={host}", f"port={port}", f"user={user}"]
    if parts.password:
        fields.append(f"password={unquote(parts.password)}")
    return " ".join(fields), user


def _run_as(server_dsn: str) -> str | None:
    """PgBouncer refuses to run as root: the user to switch to (``-u``), that of the server's
    socket directory when it has one (so it can reach the socket), else nobody."""
    if os.geteuid() != 0:
        return None
    host = parse_qs(urlsplit(server_dsn).query).get("host", [""])[0]
    if host.startswith("/"):
        owner = pwd.getpwuid(os.stat(host).st_uid).pw_name
        if owner != "root":
            return owner
    return "nobody"


@contextlib.contextmanager
def running_pgbouncer(
    binary: str, server_dsn: str, *, pool_mode: str = "transaction", pool_size: int = 20
) -> Iterator[PgBouncer]:
    """PgBouncer in ``pool_mode`` for every database of ``server_dsn``, stopped on exit."""
    server, user = _server_line(server_dsn)
    run_as = _run_as(server_dsn)
    with tempfile.TemporaryDirectory(prefix="air-relay-pgbouncer-") as tmp:
        directory = Path(tmp)
        port = free_port()
        (directory / "userlist.txt").write_text(f'"{user}" "{CLIENT_PASSWORD}"\n')
        (directory / "pgbouncer.ini").write_text(
            "[databases]\n"
            f"* = {server}\n"
            "[pgbouncer]\n"
            "listen_addr = 127.0.0.1\n"
            f"listen_port = {port}\n"
            "unix_socket_dir =\n"
            "auth_type = plain\n"
            f"auth_file = {directory / 'userlist.txt'}\n"
            f"pool_mode = {pool_mode}\n"
            f"default_pool_size = {pool_size}\n"
            "max_client_conn = 500\n"
            f"logfile = {directory / 'pgbouncer.log'}\n"
            "log_connections = 0\n"
            "log_disconnections = 0\n"
        )
        command = [binary, "-q", str(directory / "pgbouncer.ini")]
        if run_as:
            shutil.chown(directory, user=run_as)
            for name in ("userlist.txt", "pgbouncer.ini"):
                shutil.chown(directory / name, user=run_as)
            command[1:1] = ["-u", run_as]
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        bouncer = PgBouncer(port, user, directory, process, pgbouncer_version(binary))
        try:
            _wait_listening(bouncer)
            yield bouncer
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            if process.stderr is not None:
                process.stderr.close()


def _wait_listening(bouncer: PgBouncer, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if bouncer.process.poll() is not None:
            stderr = bouncer.process.stderr.read().decode() if bouncer.process.stderr else ""
            log = bouncer.log() if (bouncer.directory / "pgbouncer.log").exists() else ""
            raise RuntimeError(f"pgbouncer exited at start: {stderr}{log}")
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", bouncer.port), timeout=1),
        ):
            return
        time.sleep(0.05)
    raise RuntimeError(f"pgbouncer did not listen on 127.0.0.1:{bouncer.port} in time")
