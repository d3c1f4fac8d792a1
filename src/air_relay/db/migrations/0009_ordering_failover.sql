-- Per-key ordering and failover, two per-sink options (docs/sinks.md).

-- ordering: which key of an event orders its deliveries to the sink ('none': no order).
-- fallback_event_sink_id: the sink a delivery that ends dead fails over to. The foreign key
-- (no ON DELETE action) keeps a named fallback from being deleted under its dependants.
ALTER TABLE event_sinks
    ADD COLUMN ordering text NOT NULL DEFAULT 'none'
        CHECK (ordering IN ('none', 'case', 'endpoint', 'task')),
    ADD COLUMN fallback_event_sink_id uuid REFERENCES event_sinks (id),
    ADD CHECK (fallback_event_sink_id <> id);

-- A sink's dependants (who names it as fallback), found before a delete.
CREATE INDEX event_sinks_fallback_idx ON event_sinks (fallback_event_sink_id)
    WHERE fallback_event_sink_id IS NOT NULL;

-- order_key: the event's key for the sink's ordering, set at routing (NULL: unordered).
-- order_pos: the event's place in its ingest batch, which breaks created_at's ties (one batch
-- shares one created_at), so (created_at, order_pos, id) is the order of arrival.
-- failed_over_to / failed_over_from: the delivery a dead one failed over to, and back.
ALTER TABLE deliveries
    ADD COLUMN order_key text,
    ADD COLUMN order_pos integer,
    ADD COLUMN failed_over_to uuid,
    ADD COLUMN failed_over_from uuid,
    ADD CHECK (order_key IS NULL OR order_pos IS NOT NULL);

-- The claim's test "no earlier delivery of this key to this sink is still pending": one
-- probe per keyed candidate. Unkeyed deliveries (every one of a sink without ordering) stay
-- out of it.
CREATE INDEX deliveries_order_idx ON deliveries (event_sink_id, order_key, created_at, order_pos, id)
    WHERE status = 'pending' AND order_key IS NOT NULL;

-- A fallback gets at most one failover delivery of an event (complete_deliveries), even when
-- two instances fail the event over to it at the same moment. It is also the lookup of that
-- delivery.
CREATE UNIQUE INDEX deliveries_failover_once_idx ON deliveries (event_id, event_sink_id)
    WHERE failed_over_from IS NOT NULL;
