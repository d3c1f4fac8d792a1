-- Sink health counts the deliveries held for a storm digest (migration 10) as pending: they
-- are waiting to go out. They are not in deliveries_sink_due_idx (pending only: a held
-- delivery is never claimed), so a sink's held ones are counted from this index. Rows are in
-- it only while they wait for their digest, so it stays small.
CREATE INDEX deliveries_sink_held_idx ON deliveries (event_sink_id) WHERE status = 'held';
