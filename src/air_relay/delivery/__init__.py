"""Delivery: the dispatcher that claims due deliveries, the claims that send and retry them, the
retry decisions, and retention of finished deliveries."""
