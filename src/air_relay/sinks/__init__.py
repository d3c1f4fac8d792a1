"""Sinks: the sink types (argument rules, the registry), their senders (one module each, turning
a claimed delivery into one HTTP attempt), and the egress guard that keeps Webhook URLs off the
relay's own network."""
