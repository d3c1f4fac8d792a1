"""The sd_notify protocol (READY=1, STOPPING=1, WATCHDOG=1): a datagram to $NOTIFY_SOCKET;
and socket activation (sd_listen_fds): the listening sockets systemd passes from fd 3 on.

Forty lines do not justify a dependency; outside systemd every call is a no-op.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket

# The first file descriptor of socket activation (SD_LISTEN_FDS_START).
LISTEN_FDS_START = 3
_LISTEN_VARIABLES = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")

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


def listen_sockets() -> list[socket.socket]:
    """The sockets passed by socket activation (``LISTEN_FDS`` of them from fd 3, when
    ``LISTEN_PID`` is this process), or [] when there are none for this process.

    Like sd_listen_fds(unset_environment=1): the variables are removed, so a child process (the
    embedded PostgreSQL) does not take the sockets for its own, and the descriptors are made
    close-on-exec.
    """
    pid, count = os.environ.get("LISTEN_PID"), os.environ.get("LISTEN_FDS")
    for name in _LISTEN_VARIABLES:
        os.environ.pop(name, None)
    if pid != str(os.getpid()) or not count or not count.isdigit():
        return []
    sockets = []
    for fd in range(LISTEN_FDS_START, LISTEN_FDS_START + int(count)):
        os.set_inheritable(fd, False)
        sockets.append(socket.socket(fileno=fd))
    return sockets
