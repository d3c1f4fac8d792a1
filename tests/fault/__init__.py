"""Fault injection: real serve processes against a PostgreSQL that is crashed and restarted."""
