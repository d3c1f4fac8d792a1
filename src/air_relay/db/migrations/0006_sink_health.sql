-- Sink health, kept up to date by the statement that records completions
-- (complete_deliveries), so that "which sink is failing, since when and why" is one row per
-- sink to read, never a scan of the audit log.
--
-- One row per sink that has had an attempt (a sink without one is "idle"). state is the
-- outcome of the sink's latest attempt; since is when the current run of that outcome
-- began (the first failure of a failing run). No foreign key, as for deliveries: a
-- completion for a sink deleted meanwhile must not fail its batch; the read side joins
-- event_sinks, and retention removes rows of deleted sinks.
CREATE TABLE sink_health (
    event_sink_id        uuid PRIMARY KEY,
    state                text        NOT NULL CHECK (state IN ('healthy', 'failing')),
    since                timestamptz NOT NULL,
    last_attempt_at      timestamptz NOT NULL,
    last_success_at      timestamptz,
    last_failure_at      timestamptz,
    last_error           text,
    last_status_code     integer,
    consecutive_failures integer     NOT NULL DEFAULT 0 CHECK (consecutive_failures >= 0),
    updated_at           timestamptz NOT NULL DEFAULT now()
);

-- Per sink and minute: deliveries that became delivered and attempts that failed. The last
-- hour's figures are the sum of at most 61 rows per sink; retention drops older minutes.
CREATE TABLE sink_health_minutes (
    event_sink_id   uuid        NOT NULL,
    minute          timestamptz NOT NULL,
    delivered       integer     NOT NULL DEFAULT 0,
    failed_attempts integer     NOT NULL DEFAULT 0,
    PRIMARY KEY (event_sink_id, minute)
);

-- A sink's dead deliveries are counted from this index (its pending ones, and the oldest,
-- from deliveries_sink_due_idx). Rows enter it only when a delivery dies.
CREATE INDEX deliveries_sink_dead_idx ON deliveries (event_sink_id) WHERE status = 'dead';
