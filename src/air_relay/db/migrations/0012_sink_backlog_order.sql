-- A recovered sink's backlog is woken a chunk at a time, oldest first (wake_sink_backlog):
-- waking a million rows in one statement held the drain back for the whole statement. This
-- index gives a sink's pending deliveries in order of arrival, so each chunk reads only itself.
-- A plain CREATE INDEX (migrations run in a transaction): its lock holds ingest, claims and
-- completions while it reads the table; docs/operations.md says to upgrade in a quiet moment.
CREATE INDEX deliveries_sink_backlog_idx ON deliveries (event_sink_id, created_at)
    WHERE status = 'pending';
