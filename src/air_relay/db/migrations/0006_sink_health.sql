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

-- Filled once from the audit log, so that a sink that was already failing before the upgrade
-- shows failing at once, not idle until its next attempt: per sink (that still exists), its
-- latest attempt gives the state and since, the latest attempt of each outcome gives
-- last_success_at / last_failure_at, the latest failure gives last_error and
-- last_status_code. Approximate where the log cannot say cheaply: since is the latest
-- attempt's time (not the start of its run), and consecutive_failures is 1 when failing.
-- One pass over delivery_attempts, at the upgrade only.
WITH latest AS (
    SELECT DISTINCT ON (event_sink_id) event_sink_id, outcome, created_at
    FROM delivery_attempts
    ORDER BY event_sink_id, created_at DESC, id DESC
), latest_failure AS (
    SELECT DISTINCT ON (event_sink_id) event_sink_id, error, status_code
    FROM delivery_attempts
    WHERE outcome = 'failure'
    ORDER BY event_sink_id, created_at DESC, id DESC
), per_outcome AS (
    SELECT event_sink_id,
           max(created_at) FILTER (WHERE outcome = 'success') AS last_success_at,
           max(created_at) FILTER (WHERE outcome = 'failure') AS last_failure_at
    FROM delivery_attempts
    GROUP BY event_sink_id
)
INSERT INTO sink_health (event_sink_id, state, since, last_attempt_at, last_success_at,
                         last_failure_at, last_error, last_status_code, consecutive_failures)
SELECT l.event_sink_id,
       CASE l.outcome WHEN 'success' THEN 'healthy' ELSE 'failing' END,
       l.created_at, l.created_at, p.last_success_at, p.last_failure_at,
       f.error, f.status_code,
       CASE l.outcome WHEN 'success' THEN 0 ELSE 1 END
FROM latest l
JOIN per_outcome p USING (event_sink_id)
LEFT JOIN latest_failure f USING (event_sink_id)
WHERE EXISTS (SELECT 1 FROM event_sinks s WHERE s.id = l.event_sink_id);

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
