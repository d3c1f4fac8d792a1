"""Tests of the senders (Slack, PagerDuty) and the egress guard."""
