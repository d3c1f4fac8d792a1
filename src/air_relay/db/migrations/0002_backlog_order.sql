-- Claims order due rows by (next_attempt_at, created_at), so a backlog that becomes due at
-- once drains in order of arrival; the claimable index now serves that order entirely.
DROP INDEX deliveries_claimable_idx;
CREATE INDEX deliveries_claimable_idx ON deliveries (next_attempt_at, created_at)
    WHERE status = 'pending';

-- A sink's pending deliveries, found when the sink answers again after an outage (its
-- backed-off backlog is made due at once).
CREATE INDEX deliveries_sink_pending_idx ON deliveries (event_sink_id) WHERE status = 'pending';
