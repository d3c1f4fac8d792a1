"""The sd_notify protocol (READY=1, STOPPING=1, WATCHDOG=1): a datagram to $NOTIFY_SOCKET.

Twenty lines do not justify a dependency; outside systemd every call is a no-op.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket

# systemd reads its notification socket promptly; if it ever does not, a full socket buffer
# must not stall the event loop for long (a lost WATCHDOG=1 is retried half a period later).
SEND_TIMEOUT_SECONDS = 1.0


def notify(state: str) -> bool:
    """Send ``state`` (e.g. ``READY=1``) to systemd; False when not under systemd or it failed."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # abstract namespace socket
        address = "\0" + address[1:]
    elif not address.startswith("/"):
        return False  # vsock: and other transports are not used for services
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.settimeout(SEND_TIMEOUT_SECONDS)
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError:
        return False
    return True


def watchdog_interval() -> float | None:
    """Half the watchdog period systemd asked for, or None when the watchdog is off.

    systemd sets ``WATCHDOG_USEC`` (the period) and ``WATCHDOG_PID`` (the process it expects
    the pings from); a child that inherited them must not ping in the parent's name.
    """
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    with contextlib.suppress(ValueError):
        period = int(usec)
        if period > 0:
            return period / 2_000_000
    return None


async def watchdog_loop(interval: float) -> None:
    while True:
        notify("WATCHDOG=1")
        await asyncio.sleep(interval)
