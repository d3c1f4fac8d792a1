-- Claims go sink by sink (each sink's due deliveries in arrival order, at most its share of
-- the workers), so a sink with a large backlog of due retries no longer stands in front of
-- every other sink's deliveries in one global queue. One index serves both that and finding
-- a recovered sink's backlog; the global queue index is no longer read.
DROP INDEX deliveries_claimable_idx;
DROP INDEX deliveries_sink_pending_idx;
CREATE INDEX deliveries_sink_due_idx ON deliveries (event_sink_id, next_attempt_at, created_at)
    WHERE status = 'pending';
