"""The template worker: a child process that renders custom Webhook templates, one at a time,
under hard limits, so that no template can stall or exhaust the relay.

The relay starts it (``template_workers.TemplateWorkers``) as ``python -c`` calling ``main``,
with only stdin, stdout and stderr open. Once Jinja2 and the catalog are loaded it caps its own
address space at ``MEMORY_LIMIT_MIB`` (RLIMIT_AS) and, before each render, its CPU time at
``CPU_SECONDS`` beyond what it has used so far (RLIMIT_CPU: the kernel ends it with SIGXCPU).
The relay adds a wall-clock timeout per render and kills the worker when it passes.

The protocol, framed on stdin and stdout (the worker's own prints go to stderr):

* request: ``>II`` (head length, envelope length), a JSON head (``source``, ``event_id``,
  ``received_at``, ``console_url``), then the envelope's bytes as AIR sent them;
* answer: ``>BI`` (kind, payload length), then the payload: ``READY`` (empty, once at start),
  ``RENDERED`` (the body), ``FAILED`` (why, UTF-8) or ``RETIRED`` (why; the worker exits after
  it, as after running out of memory).

Answers are plain bytes, never pickles: the relay trusts nothing a template ran beside.
"""

from __future__ import annotations

import json
import math
import os
import resource
import signal
import struct
import sys
from dataclasses import dataclass
from typing import BinaryIO

from air_relay.events import catalog
from air_relay.sinks.templates import (
    PRESETS,
    RenderFailed,
    TemplateContext,
    compile_template,
    parse_envelope,
    render,
)

MEMORY_LIMIT_MIB = 256  # the worker's whole address space, Python and Jinja2 included
CPU_SECONDS = 2  # CPU one render may use: a backstop under the relay's wall-clock timeout
FAILURE_TEXT_LIMIT = 2048  # characters of a failure's reason

READY, RENDERED, FAILED, RETIRED = 0, 1, 2, 3
REQUEST_HEAD = struct.Struct(">II")
ANSWER_HEAD = struct.Struct(">BI")


@dataclass(frozen=True)
class RenderRequest:
    """One render: a custom template's source and a delivery's (or a catalog example's)
    context, its envelope as bytes (the worker parses it)."""

    source: str
    envelope: bytes
    event_id: str
    received_at: str | None
    console_url: str | None

    def encode(self) -> bytes:
        head = json.dumps(
            {
                "source": self.source,
                "event_id": self.event_id,
                "received_at": self.received_at,
                "console_url": self.console_url,
            }
        ).encode()
        return REQUEST_HEAD.pack(len(head), len(self.envelope)) + head + self.envelope

    @classmethod
    def decode(cls, head: bytes, envelope: bytes) -> RenderRequest:
        fields = json.loads(head)
        return cls(
            source=fields["source"],
            envelope=envelope,
            event_id=fields["event_id"],
            received_at=fields["received_at"],
            console_url=fields["console_url"],
        )


def answer(kind: int, payload: bytes = b"") -> bytes:
    return ANSWER_HEAD.pack(kind, len(payload)) + payload


def handle(request: RenderRequest) -> tuple[int, bytes]:
    """One request's answer: every failure is an answer, out of memory one that retires."""
    try:
        context = TemplateContext(
            parse_envelope(request.envelope),
            request.event_id,
            request.received_at,
            request.console_url,
        )
        return RENDERED, render({"body": request.source}, context)
    except RenderFailed as exc:
        return FAILED, str(exc)[:FAILURE_TEXT_LIMIT].encode("utf-8", "replace")
    except MemoryError:
        # What is left of the heap after a MemoryError is not worth trusting: a fresh worker.
        return RETIRED, f"render used more than {MEMORY_LIMIT_MIB} MiB".encode()
    except Exception as exc:
        text = f"{type(exc).__name__}: {str(exc)[:300]}"
        return FAILED, text.encode("utf-8", "replace")


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    limit = MEMORY_LIMIT_MIB * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _allow_cpu(seconds: int) -> None:
    """RLIMIT_CPU counts the process's whole life, so each render gets ``seconds`` more."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    soft = math.ceil(usage.ru_utime + usage.ru_stime) + seconds
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))


def _read(stream: BinaryIO, size: int) -> bytes | None:
    """Exactly ``size`` bytes, or None at the end of the input (the relay closed it)."""
    data = stream.read(size)
    return data if len(data) == size else None


def serve(requests: BinaryIO, answers: BinaryIO) -> None:
    """Answer requests until the input ends or the worker retires."""
    answers.write(answer(READY))
    answers.flush()
    while (head := _read(requests, REQUEST_HEAD.size)) is not None:
        head_size, envelope_size = REQUEST_HEAD.unpack(head)
        fields = _read(requests, head_size)
        envelope = _read(requests, envelope_size)
        if fields is None or envelope is None:
            return
        _allow_cpu(CPU_SECONDS)
        kind, payload = handle(RenderRequest.decode(fields, envelope))
        answers.write(answer(kind, payload))
        answers.flush()
        if kind == RETIRED:
            return


def main() -> None:
    # The relay stops its workers itself (and they stop when their input ends): a Ctrl-C
    # meant for the relay must not kill one mid-render.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    answers = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # stray output cannot break the frames
    # Loaded before the limits: what every render needs, so none pays for it.
    catalog()
    compile_template(PRESETS["mattermost"])
    _limit_memory()
    serve(sys.stdin.buffer, answers)


if __name__ == "__main__":
    main()
