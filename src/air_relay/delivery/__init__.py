"""Delivery: the dispatcher that claims work and the runner that sends and retries it."""
