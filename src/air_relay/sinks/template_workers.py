"""Template workers: the relay's side of the processes that render custom Webhook templates
(``template_worker``), awaited from the event loop so that ingest, the API and other
deliveries go on while a template renders.

At most ``size`` workers, started on first use (a relay without custom templates starts
none), each rendering one template at a time. A render gets ``render_seconds`` of wall clock;
past it, or when its worker dies (its memory or CPU limit), the worker is killed and a fresh
one started for the next render, and the render fails with a ``RenderFailed`` that says which
limit it met. ``check`` renders a template for every example of the event catalog, each with
a fresh random event id, within a total budget of ``check_seconds``.

A worker that cannot be started, or workers shut down, is a ``WorkersUnavailable``: not the
template's fault, so a delivery is retried later.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import uuid
from datetime import UTC, datetime
from functools import cache
from pathlib import Path

import structlog

from air_relay.events import catalog
from air_relay.sinks.template_worker import (
    ANSWER_HEAD,
    CPU_SECONDS,
    FAILED,
    READY,
    RENDERED,
    RETIRED,
    RenderRequest,
)
from air_relay.sinks.templates import RENDERED_BODY_LIMIT, RenderFailed
from air_relay.timestamps import rfc3339

log = structlog.get_logger(__name__)

WORKERS = 2  # processes rendering templates at the same time (the relay's cores are few)
RENDER_SECONDS = 1.0  # wall clock of one render, at send and for each example of a check
CHECK_SECONDS = 5.0  # wall clock of all the catalog's examples together, at create and update
START_SECONDS = 30.0  # for a new worker to load Python and Jinja2 (not counted as render time)
_ANSWER_LIMIT = RENDERED_BODY_LIMIT + 64 * 1024
# The worker's environment: enough to find Python and its packages, none of the relay's
# secrets (a sandbox escape would find no tokens in os.environ).
_ENVIRONMENT_KEYS = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "PYTHONPATH", "PYTHONHOME")
# The worker runs this same air_relay: its directory is added unless already on the path (a
# relay started with PYTHONPATH=src, say), never in front of an installed one.
_WORKER_CODE = f"""# air-relay template worker
import sys
root = {str(Path(__file__).resolve().parents[2])!r}
if root not in sys.path:
    sys.path.insert(0, root)
from air_relay.sinks.template_worker import main
main()
"""


class WorkersUnavailable(Exception):
    """No worker to render with (none could start, or they are shut down)."""


class _OutOfProtocol(Exception):
    """A worker answered something the protocol does not allow."""


class _NotDelivered(Exception):
    """A request could not be written: its worker was gone before it (not the template's
    doing, since a worker reads a whole request before it renders)."""


@cache
def _examples() -> tuple[tuple[str, bytes], ...]:
    """The catalog's examples as the bytes AIR would send."""
    return tuple((name, json.dumps(event.example).encode()) for name, event in catalog().items())


def _environment() -> dict[str, str]:
    return {key: os.environ[key] for key in _ENVIRONMENT_KEYS if key in os.environ}


def _death(returncode: int | None) -> str:
    """Why a worker died, as the audit row says it."""
    if returncode == -signal.SIGXCPU:
        return f"render used more than {CPU_SECONDS} s of CPU"
    if returncode is not None and returncode < 0:
        return f"the render worker died ({signal.Signals(-returncode).name})"
    return f"the render worker exited with status {returncode}"


class _Worker:
    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        stdout = self.process.stdout
        return self.process.returncode is None and stdout is not None and not stdout.at_eof()

    async def exchange(self, frame: bytes) -> tuple[int, bytes]:
        assert self.process.stdin is not None
        try:
            self.process.stdin.write(frame)
            await self.process.stdin.drain()
        except (ConnectionError, RuntimeError) as exc:
            # RuntimeError: uvloop's word for a pipe already closed.
            raise _NotDelivered from exc
        return await self.receive()

    async def receive(self) -> tuple[int, bytes]:
        assert self.process.stdout is not None
        head = await self.process.stdout.readexactly(ANSWER_HEAD.size)
        kind, size = ANSWER_HEAD.unpack(head)
        if kind not in (READY, RENDERED, FAILED, RETIRED) or size > _ANSWER_LIMIT:
            raise _OutOfProtocol(f"kind {kind}, {size} bytes")
        return kind, await self.process.stdout.readexactly(size)


class TemplateWorkers:
    """The pool of template workers (see the module's docstring). ``close`` stops them."""

    def __init__(
        self,
        size: int = WORKERS,
        *,
        render_seconds: float = RENDER_SECONDS,
        check_seconds: float = CHECK_SECONDS,
    ) -> None:
        self.render_seconds = render_seconds
        self.check_seconds = check_seconds
        self._slots = asyncio.Semaphore(size)
        self._idle: list[_Worker] = []
        self._live: set[_Worker] = set()
        self._reaping: set[asyncio.Task[int]] = set()
        self._closed = False

    def pids(self) -> list[int]:
        """The process ids of the running workers."""
        return sorted(worker.pid for worker in self._live)

    async def render(self, request: RenderRequest) -> bytes:
        """The body ``request``'s template renders (valid JSON within the size limit)."""
        late = f"render took longer than {self.render_seconds:g} s"
        return await self._render(request, self.render_seconds, late)

    async def check(self, source: str, console_url: str | None) -> None:
        """``source`` rendered for every example of the catalog, each as a new event (a fresh
        random id, the current time); ``RenderFailed`` naming the first example that fails."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.check_seconds
        over = f"the catalog's examples took longer than {self.check_seconds:g} s in all"
        received_at = rfc3339(datetime.now(UTC))
        for name, envelope in _examples():
            left = deadline - loop.time()
            if left <= 0:
                raise RenderFailed(f"{over} (stopped before {name})")
            request = RenderRequest(source, envelope, str(uuid.uuid4()), received_at, console_url)
            timeout = min(self.render_seconds, left)
            late = (
                f"render took longer than {self.render_seconds:g} s"
                if timeout == self.render_seconds
                else over
            )
            try:
                await self._render(request, timeout, late)
            except RenderFailed as exc:
                raise RenderFailed(f"fails for the catalog's {name}: {exc}") from exc

    async def close(self) -> None:
        """Stop every worker (a render in progress fails with ``WorkersUnavailable``)."""
        self._closed = True
        self._idle.clear()
        for worker in list(self._live):
            self._discard(worker)
        if self._reaping:
            await asyncio.gather(*self._reaping, return_exceptions=True)

    async def _render(self, request: RenderRequest, timeout: float, late: str) -> bytes:
        frame = request.encode()
        async with self._slots:
            worker = await self._worker()
            try:
                try:
                    kind, payload = await asyncio.wait_for(worker.exchange(frame), timeout)
                except _NotDelivered:
                    # Gone before the request reached it: once more with a fresh worker.
                    self._discard(worker, "gone before a request")
                    worker = await self._start()
                    kind, payload = await asyncio.wait_for(worker.exchange(frame), timeout)
            except _NotDelivered as exc:
                self._discard(worker, "gone before a request")
                self._raise_if_closed()
                raise WorkersUnavailable("a template worker took no request") from exc
            except TimeoutError:
                self._discard(worker, late)
                self._raise_if_closed()
                raise RenderFailed(late) from None
            except (asyncio.IncompleteReadError, ConnectionError, _OutOfProtocol) as exc:
                self._raise_if_closed()
                raise RenderFailed(await self._died(worker, exc)) from None
            except BaseException:
                # Cancelled mid-render: the worker's state is unknown, so it goes.
                self._discard(worker)
                raise
            if kind == RETIRED:
                self._discard(worker, payload.decode("utf-8", "replace"))
            else:
                self._idle.append(worker)
        if kind == RENDERED:
            return payload
        raise RenderFailed(payload.decode("utf-8", "replace"))

    def _raise_if_closed(self) -> None:
        if self._closed:
            raise WorkersUnavailable("the template workers are shut down")

    async def _worker(self) -> _Worker:
        """An idle worker, or a new one: one that died while idle (killed from outside) is
        replaced here, so its death is not blamed on the next template."""
        while self._idle:
            worker = self._idle.pop()
            if worker.alive():
                return worker
            self._discard(worker, "died while idle")
        return await self._start()

    async def _start(self) -> _Worker:
        self._raise_if_closed()
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                _WORKER_CODE,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                env=_environment(),
            )
        except OSError as exc:
            raise WorkersUnavailable(f"a template worker could not start: {exc}") from exc
        worker = _Worker(process)
        self._live.add(worker)
        try:
            kind, _ = await asyncio.wait_for(worker.receive(), START_SECONDS)
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError, _OutOfProtocol):
            self._discard(worker, "did not start")
            self._raise_if_closed()
            raise WorkersUnavailable("a template worker did not start") from None
        except BaseException:
            self._discard(worker)
            raise
        if kind != READY:
            self._discard(worker, "did not start")
            raise WorkersUnavailable("a template worker did not start")
        log.info("template_worker_started", pid=worker.pid)
        return worker

    async def _died(self, worker: _Worker, exc: BaseException) -> str:
        """Why ``worker`` stopped answering mid-render (it is discarded)."""
        if isinstance(exc, _OutOfProtocol):
            reason = f"the render worker answered out of protocol ({exc})"
        else:
            # Its answer ended because it is exiting: its status says why.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(worker.process.wait()), 1.0)
            reason = _death(worker.process.returncode)
        self._discard(worker, reason)
        return reason

    def _discard(self, worker: _Worker, reason: str | None = None) -> None:
        """Kill ``worker`` (if it still runs) and reap it in the background."""
        if worker not in self._live:
            return
        self._live.discard(worker)
        if reason is not None and not self._closed:
            log.warning("template_worker_replaced", pid=worker.pid, reason=reason)
        with contextlib.suppress(ProcessLookupError):
            worker.process.kill()
        task = asyncio.ensure_future(worker.process.wait())
        self._reaping.add(task)
        task.add_done_callback(self._reaping.discard)
