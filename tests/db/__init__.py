"""Tests of the database layer: migrations, the queries and their indexes."""
