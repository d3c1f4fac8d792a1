"""Tests of the HTTP layer: ingest, the sink, audit and delivery APIs, tenant isolation."""
