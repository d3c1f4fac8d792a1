"""Tests of delivery: claims, retries, leases, dead letters and retention."""
