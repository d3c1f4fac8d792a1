"""``python -m air_relay`` is the ``air-relay`` command."""

from __future__ import annotations

import sys

from air_relay.cli import main

sys.exit(main())
