"""The HTTP layer: ingest, the event sink and audit log APIs, and the operations endpoints."""
