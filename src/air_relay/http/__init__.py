"""The HTTP layer: ingest, the event sink, audit log and delivery APIs, and the operations
endpoints."""
