"""air-relay: durable relay for Binalyze AIR event-subscription webhooks."""

from __future__ import annotations

__version__ = "0.1.0"
