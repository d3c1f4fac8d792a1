"""Senders: one module per sink type, each turning a claimed delivery into one HTTP attempt."""
