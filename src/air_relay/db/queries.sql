-- Every SQL statement air-relay runs, as named blocks ("-- name: NAME"), except the
-- migration files themselves (db/migrations/). Loaded by air_relay.db.queries; called through
-- air_relay.db.repository (the outbox) and air_relay.db.migrate (the schema's bookkeeping).
-- $n parameters named "the notify channel" carry air_relay.db.notify.NOTIFY_CHANNEL.

-- name: ingest_events
-- One statement, so one implicit transaction: a batch of events, one delivery per routed
-- sink, and the wake-up for the dispatchers ($7, the notify channel) commit together or not
-- at all. Batching many concurrent requests into one commit is what keeps ingest fast (one WAL
-- flush per batch).
-- $8-$10: each event's case, endpoint and task key; a sink with ``ordering`` stores the one it
-- orders by (order_key), with the event's place in the batch (order_pos, its tie-breaker).
WITH input AS (
    SELECT *
    FROM unnest($1::uuid[], $2::text[], $3::text[], $4::jsonb[], $5::text[], $6::bytea[],
                $8::text[], $9::text[], $10::text[]) WITH ORDINALITY
         AS i(id, tenant_id, event_name, organization_id, org_text, body, case_key,
              endpoint_key, task_key, pos)
), event AS (
    INSERT INTO events (id, tenant_id, event_name, organization_id, body)
    SELECT id, tenant_id, event_name, organization_id, body FROM input
    RETURNING id
), routed AS (
    INSERT INTO deliveries (id, event_id, event_sink_id, tenant_id, sink_type, order_key,
                            order_pos)
    SELECT gen_random_uuid(), i.id, s.id, s.tenant_id, s.sink_type, k.key,
           CASE WHEN k.key IS NOT NULL THEN i.pos END
    FROM input i
    JOIN event_sinks s
      ON s.tenant_id = i.tenant_id
     AND s.active
     AND (s.events IS NULL OR i.event_name = ANY (s.events))
     AND (s.organization_ids IS NULL OR i.org_text = ANY (s.organization_ids))
    CROSS JOIN LATERAL (
        SELECT CASE s.ordering WHEN 'case' THEN i.case_key WHEN 'endpoint' THEN i.endpoint_key
                               WHEN 'task' THEN i.task_key END AS key
    ) AS k
    RETURNING event_id
), counted AS (
    SELECT i.id, count(r.event_id) AS n
    FROM input i LEFT JOIN routed r ON r.event_id = i.id
    GROUP BY i.id
)
SELECT c.id, c.n,
       CASE WHEN (SELECT count(*) FROM routed) > 0
            THEN pg_notify($7, '')::text END AS notified
FROM counted c;

-- name: ingest_spooled_events
-- The spool's drain: like ingest_events, with each event's arrival time ($7), and idempotent
-- by event id. An event already in the outbox (an earlier drain of the same segment committed
-- it before a crash, or the commit that failed for ingest had in fact gone through) is
-- skipped with its deliveries: only events inserted here are routed, so a drain repeated any
-- number of times makes each delivery once. Deliveries are due from, and ordered by, the
-- event's arrival, so the backlog is claimed in arrival order. $9-$11: the events' keys, as
-- in ingest_events.
WITH input AS (
    SELECT *
    FROM unnest($1::uuid[], $2::text[], $3::text[], $4::jsonb[], $5::text[], $6::bytea[],
                $7::timestamptz[], $9::text[], $10::text[], $11::text[]) WITH ORDINALITY
         AS i(id, tenant_id, event_name, organization_id, org_text, body, received_at,
              case_key, endpoint_key, task_key, pos)
), event AS (
    INSERT INTO events (id, tenant_id, event_name, organization_id, body, received_at)
    SELECT id, tenant_id, event_name, organization_id, body, received_at FROM input
    ON CONFLICT (id) DO NOTHING
    RETURNING id
), routed AS (
    INSERT INTO deliveries (id, event_id, event_sink_id, tenant_id, sink_type,
                            next_attempt_at, created_at, order_key, order_pos)
    SELECT gen_random_uuid(), i.id, s.id, s.tenant_id, s.sink_type, i.received_at,
           i.received_at, k.key, CASE WHEN k.key IS NOT NULL THEN i.pos END
    FROM input i
    JOIN event e ON e.id = i.id
    JOIN event_sinks s
      ON s.tenant_id = i.tenant_id
     AND s.active
     AND (s.events IS NULL OR i.event_name = ANY (s.events))
     AND (s.organization_ids IS NULL OR i.org_text = ANY (s.organization_ids))
    CROSS JOIN LATERAL (
        SELECT CASE s.ordering WHEN 'case' THEN i.case_key WHEN 'endpoint' THEN i.endpoint_key
                               WHEN 'task' THEN i.task_key END AS key
    ) AS k
    RETURNING event_id
)
SELECT (SELECT count(*) FROM event) AS inserted,
       (SELECT count(*) FROM routed) AS routed,
       CASE WHEN (SELECT count(*) FROM routed) > 0
            THEN pg_notify($8, '')::text END AS notified;

-- name: claim_deliveries
-- Claim due deliveries, sink by sink: each sink with pending deliveries (found by a skip
-- scan of deliveries_sink_due_idx, one probe per sink, deleted sinks included) offers its
-- oldest due ones, at most its room: $6 less the claims the caller counts against it ($5
-- sinks, $7 their counts). Only when those offers fall short of $2, and $9 is true, do sinks
-- not named in $10 (the sinks failing here) offer their next ones for what is left, at most
-- $11 of them in all, ranked after every room's offers: a sink with a backlog takes the
-- workers others leave idle, a failing sink never more than its room. The oldest $2 of the
-- offers are claimed. The lease end goes into
-- next_attempt_at, so an expired lease is just a due row again. The claim commits before any
-- HTTP is sent. $8: deliveries this process still runs (a send, or a completion waiting for
-- the database to come back): never claimed again here, even when their lease has lapsed,
-- or an outage longer than a lease would make the process send them a second time.
-- A keyed delivery (order_key, set for sinks with ``ordering``) is offered only while no
-- earlier delivery of its key to its sink is pending (due, backing off or in flight): each
-- key's deliveries go out one at a time, in order of arrival, whichever instance claims them,
-- and other keys pass it by. An unkeyed row never reaches the subquery.
WITH RECURSIVE sink AS (
    (SELECT event_sink_id AS id FROM deliveries WHERE status = 'pending'
     ORDER BY event_sink_id LIMIT 1)
    UNION ALL
    SELECT (SELECT event_sink_id FROM deliveries
            WHERE status = 'pending' AND event_sink_id > sink.id
            ORDER BY event_sink_id LIMIT 1)
    FROM sink
    WHERE sink.id IS NOT NULL
), room AS (
    SELECT sink.id, greatest(0, $6 - coalesce(r.running, 0)) AS room
    FROM sink
    LEFT JOIN unnest($5::uuid[], $7::int[]) AS r(sink_id, running) ON r.sink_id = sink.id
    WHERE sink.id IS NOT NULL
), offered AS (
    SELECT offer.id, offer.next_attempt_at, offer.created_at
    FROM room
    CROSS JOIN LATERAL (
        SELECT d.id, d.next_attempt_at, d.created_at
        FROM deliveries d
        WHERE d.event_sink_id = room.id
          AND d.status = 'pending'
          AND d.next_attempt_at <= now()
          AND d.sink_type = ANY ($1::text[])
          AND d.id <> ALL ($8::uuid[])
          AND (d.order_key IS NULL OR NOT EXISTS (
                SELECT 1 FROM deliveries p
                WHERE p.event_sink_id = d.event_sink_id
                  AND p.order_key = d.order_key
                  AND p.status = 'pending'
                  AND (p.created_at, p.order_pos, p.id) < (d.created_at, d.order_pos, d.id)))
        -- created_at breaks ties: a backlog made due at once drains in order of arrival.
        ORDER BY d.next_attempt_at, d.created_at
        LIMIT room.room
        FOR UPDATE SKIP LOCKED
    ) AS offer
), spilled AS (
    -- Read (and locked) only when the rooms fell short: LIMIT 0 reads nothing.
    SELECT offer.id, offer.next_attempt_at, offer.created_at
    FROM room
    CROSS JOIN LATERAL (
        SELECT d.id, d.next_attempt_at, d.created_at
        FROM deliveries d
        WHERE d.event_sink_id = room.id
          AND d.status = 'pending'
          AND d.next_attempt_at <= now()
          AND d.sink_type = ANY ($1::text[])
          AND d.id <> ALL ($8::uuid[])
          AND d.id <> ALL (ARRAY(SELECT id FROM offered))
          AND (d.order_key IS NULL OR NOT EXISTS (
                SELECT 1 FROM deliveries p
                WHERE p.event_sink_id = d.event_sink_id
                  AND p.order_key = d.order_key
                  AND p.status = 'pending'
                  AND (p.created_at, p.order_pos, p.id) < (d.created_at, d.order_pos, d.id)))
        ORDER BY d.next_attempt_at, d.created_at
        LIMIT (SELECT greatest(0, least($11, $2 - count(*))) FROM offered)
        FOR UPDATE SKIP LOCKED
    ) AS offer
    WHERE $9::boolean AND room.id <> ALL ($10::uuid[])
), due AS (
    SELECT id
    FROM (SELECT id, next_attempt_at, created_at, false AS spill, 0::bigint AS n
          FROM offered
          UNION ALL
          SELECT id, next_attempt_at, created_at, true,
                 row_number() OVER (ORDER BY next_attempt_at, created_at)
          FROM spilled) AS o
    WHERE n <= $11
    ORDER BY spill, next_attempt_at, created_at
    LIMIT $2
), claimed AS (
    UPDATE deliveries d
    SET claims = d.claims + 1,
        claim_token = gen_random_uuid(),
        claimed_by = $4,
        next_attempt_at = now() + make_interval(secs => $3),
        updated_at = now()
    -- An array, not a join with "due": a prepared statement's generic plan cannot know $2,
    -- guesses "due" at a tenth of the table and joins it by scanning the whole table (and
    -- events) at every claim. Probing the primary key for each id never depends on that guess.
    WHERE d.id = ANY (ARRAY(SELECT id FROM due))
    RETURNING d.id, d.event_id, d.event_sink_id, d.tenant_id, d.sink_type, d.attempts,
              d.claims, d.claim_token, d.created_at, d.digest_id
)
SELECT c.id, c.event_id, c.event_sink_id, c.tenant_id, c.sink_type, c.attempts, c.claims,
       c.claim_token, c.created_at, e.event_name, e.organization_id, e.body, e.received_at,
       -- NULL when the sink was deleted (event_sinks.args is NOT NULL): no flag needed.
       s.args AS sink_args,
       c.digest_id, s.digest AS sink_digest
FROM claimed c
JOIN events e ON e.id = c.event_id
LEFT JOIN event_sinks s ON s.id = c.event_sink_id
ORDER BY c.created_at;

-- name: complete_deliveries
-- Record many claims' attempts and their deliveries' new states in one statement (one commit
-- for a whole batch). $1-$12: one element per claim; $13-$21: one per attempt, $13 naming its
-- claim by position (1-based). The attempts are written even if the lease was lost (they
-- happened); a state only with its claim token. Returns the claims whose state was kept. (A
-- data-modifying CTE runs to completion whether or not the final SELECT reads it.)
-- $23: one error_detail per attempt (after the lock key, so the numbering above holds).
-- $22 is the audit-write lock, taken shared by a one-time filter of the INSERT (so before any
-- attempt id is drawn) and held to the commit: the sealer's horizon (audit_seal_horizon)
-- relies on it. The same filter turns synchronous_commit off for this transaction: its
-- commit does not wait for the WAL flush (see repository.complete_deliveries).
-- The same statement keeps the sinks' health (sink_health, sink_health_minutes; migration 6)
-- up to date, so reading it never scans the audit log. Locks: the deliveries first, in id
-- order (the final SELECT reads "updated"), then the health rows, one per sink, in sink id
-- order: concurrent batches of other instances take them in the same order.
-- Failover: a delivery made dead here whose sink names an active fallback gets, once
-- (failed_over_to was unset), a new delivery of its event to the fallback, due now and
-- whatever the fallback's filters say; the two name each other (failed_over_to / _from).
-- A fallback gets at most one failover delivery of an event, so even a cycle the API did not
-- see in time (two concurrent updates) cannot go round forever: deliveries of one event dead
-- in this batch whose sinks share a fallback make one (DISTINCT ON), one that already exists
-- (an earlier batch) is not made again, and every such dead delivery names that one in
-- failed_over_to. Another instance's batch failing the same event over to the same fallback
-- at the same moment is stopped by the unique index deliveries_failover_once_idx (ON CONFLICT
-- DO NOTHING); the losing delivery then keeps failed_over_to unset (its statement cannot see
-- the winner's row).
WITH claim AS (
    SELECT *
    FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::timestamptz[], $5::text[], $6::int[],
                $7::text[], $8::uuid[], $9::text[], $10::text[], $11::uuid[], $12::text[])
         WITH ORDINALITY
         AS c(id, claim_token, status, next_attempt_at, last_error, attempts, tenant_id,
              event_id, event_name, organization_id, event_sink_id, sink_type, claim_no)
), locked AS (
    -- In id order, as renew_leases locks them (different orders can deadlock).
    SELECT d.id, c.claim_token, d.failed_over_to
    FROM deliveries d
    JOIN claim c ON d.id = c.id AND d.claim_token = c.claim_token
    ORDER BY d.id
    FOR UPDATE OF d
), fails_over AS MATERIALIZED (
    -- Every delivery made dead here that fails over, with the failover delivery its event
    -- already has at the fallback, if any.
    SELECT l.id, c.event_id, c.tenant_id, f.id AS sink_id, f.sink_type,
           (SELECT o.id FROM deliveries o
            WHERE o.event_id = c.event_id AND o.event_sink_id = f.id
              AND o.failed_over_from IS NOT NULL) AS existing_id
    FROM locked l
    JOIN claim c ON c.id = l.id AND c.claim_token = l.claim_token
    JOIN event_sinks s ON s.id = c.event_sink_id
    JOIN event_sinks f ON f.id = s.fallback_event_sink_id AND f.active
    WHERE c.status = 'dead'
      AND l.failed_over_to IS NULL
), failover AS MATERIALIZED (
    -- The new failover deliveries: one per event and fallback, from its first dead delivery.
    SELECT DISTINCT ON (event_id, sink_id)
           id, gen_random_uuid() AS new_id, event_id, tenant_id, sink_id, sink_type
    FROM fails_over
    WHERE existing_id IS NULL
    ORDER BY event_id, sink_id, id
), failed_over AS (
    INSERT INTO deliveries (id, event_id, event_sink_id, tenant_id, sink_type,
                            failed_over_from)
    SELECT fo.new_id, fo.event_id, fo.sink_id, fo.tenant_id, fo.sink_type, fo.id
    FROM failover fo
    ON CONFLICT (event_id, event_sink_id) WHERE failed_over_from IS NOT NULL DO NOTHING
    RETURNING id, event_id, event_sink_id
), linked AS (
    -- Each failing-over delivery and the one failover delivery of its event at its fallback.
    SELECT fs.id, coalesce(fs.existing_id, n.id) AS failed_over_to
    FROM fails_over fs
    LEFT JOIN failed_over n ON n.event_id = fs.event_id AND n.event_sink_id = fs.sink_id
), updated AS (
    UPDATE deliveries d
    SET status = c.status,
        attempts = d.attempts + c.attempts,
        next_attempt_at = coalesce(c.next_attempt_at, now()),
        last_error = c.last_error,
        claim_token = NULL,
        claimed_by = NULL,
        updated_at = now(),
        failed_over_to = coalesce(lk.failed_over_to, d.failed_over_to)
    FROM locked l
    JOIN claim c ON c.id = l.id AND c.claim_token = l.claim_token
    LEFT JOIN linked lk ON lk.id = l.id
    WHERE d.id = l.id
    RETURNING c.id, c.claim_token, c.event_sink_id, c.status
), attempt AS (
    SELECT c.id, c.tenant_id, c.event_id, c.event_name, c.organization_id, c.event_sink_id,
           c.sink_type, a.*
    FROM unnest($13::bigint[], $14::int[], $15::text[], $16::int[], $17::text[], $18::text[],
                $19::int[], $20::timestamptz[], $21::timestamptz[], $23::text[])
         AS a(claim_no, attempt, outcome, status_code, error, response_body, duration_ms,
              next_attempt_at, created_at, error_detail)
    JOIN claim c USING (claim_no)
), recorded AS (
    INSERT INTO delivery_attempts (
        delivery_id, tenant_id, event_id, event_name, organization_id, event_sink_id,
        event_sink_type, attempt, outcome, status_code, error, response_body, duration_ms,
        next_attempt_at, created_at, error_detail)
    SELECT id, tenant_id, event_id, event_name, organization_id::jsonb, event_sink_id,
           sink_type, attempt, outcome, status_code, error, response_body, duration_ms,
           next_attempt_at, created_at, error_detail
    FROM attempt
    WHERE (SELECT pg_advisory_xact_lock_shared($22)::text
                  || set_config('synchronous_commit', 'off', true)) IS NOT NULL
), batch AS (
    -- Per sink, what this batch saw: its latest attempt, latest success, latest failure.
    SELECT event_sink_id,
           max(created_at) AS last_attempt_at,
           max(created_at) FILTER (WHERE outcome = 'success') AS last_success_at,
           max(created_at) FILTER (WHERE outcome = 'failure') AS last_failure_at,
           (array_agg(outcome ORDER BY created_at DESC, claim_no DESC, attempt DESC))[1]
               AS outcome,
           (array_agg(error ORDER BY created_at DESC, claim_no DESC, attempt DESC)
               FILTER (WHERE outcome = 'failure'))[1] AS last_error,
           (array_agg(status_code ORDER BY created_at DESC, claim_no DESC, attempt DESC)
               FILTER (WHERE outcome = 'failure'))[1] AS last_status_code
    FROM attempt
    GROUP BY event_sink_id
), run AS (
    -- The batch's last run of one outcome per sink: when it began and how many attempts.
    -- A batch of one outcome only has no latest attempt of the other (NULL): the upsert then
    -- continues the stored run of that outcome rather than starting one.
    SELECT b.event_sink_id, b.last_attempt_at, b.last_success_at, b.last_failure_at,
           b.last_error, b.last_status_code,
           CASE b.outcome WHEN 'success' THEN 'healthy' ELSE 'failing' END AS state,
           coalesce(min(a.created_at), b.last_attempt_at) AS since,
           CASE b.outcome WHEN 'success' THEN 0 ELSE greatest(count(a.created_at), 1) END
               AS consecutive_failures
    FROM batch b
    LEFT JOIN attempt a
      ON a.event_sink_id = b.event_sink_id
     AND a.outcome = b.outcome
     AND a.created_at > coalesce(CASE b.outcome WHEN 'success' THEN b.last_failure_at
                                                ELSE b.last_success_at END, '-infinity')
    GROUP BY b.event_sink_id, b.last_attempt_at, b.last_success_at, b.last_failure_at,
             b.last_error, b.last_status_code, b.outcome
), health AS (
    INSERT INTO sink_health AS h (
        event_sink_id, state, since, last_attempt_at, last_success_at, last_failure_at,
        last_error, last_status_code, consecutive_failures)
    SELECT event_sink_id, state, since, last_attempt_at, last_success_at, last_failure_at,
           last_error, last_status_code, consecutive_failures
    FROM run
    ORDER BY event_sink_id
    ON CONFLICT (event_sink_id) DO UPDATE
    -- A batch whose latest attempt is older than the stored one (another instance's batch
    -- committed first) adds its times and error only; it does not turn the state back.
    SET state = CASE WHEN EXCLUDED.last_attempt_at >= h.last_attempt_at
                     THEN EXCLUDED.state ELSE h.state END,
        since = CASE WHEN EXCLUDED.last_attempt_at < h.last_attempt_at THEN h.since
                     WHEN EXCLUDED.state = h.state
                      AND (CASE EXCLUDED.state WHEN 'failing' THEN EXCLUDED.last_success_at
                                               ELSE EXCLUDED.last_failure_at END) IS NULL
                     THEN h.since
                     ELSE EXCLUDED.since END,
        consecutive_failures =
            CASE WHEN EXCLUDED.last_attempt_at < h.last_attempt_at
                 THEN h.consecutive_failures
                 WHEN EXCLUDED.state = 'failing' AND h.state = 'failing'
                  AND EXCLUDED.last_success_at IS NULL
                 THEN h.consecutive_failures + EXCLUDED.consecutive_failures
                 ELSE EXCLUDED.consecutive_failures END,
        last_attempt_at = greatest(h.last_attempt_at, EXCLUDED.last_attempt_at),
        last_success_at = greatest(h.last_success_at, EXCLUDED.last_success_at),
        last_failure_at = greatest(h.last_failure_at, EXCLUDED.last_failure_at),
        last_error = CASE WHEN EXCLUDED.last_failure_at >= coalesce(h.last_failure_at, '-infinity')
                          THEN EXCLUDED.last_error ELSE h.last_error END,
        last_status_code =
            CASE WHEN EXCLUDED.last_failure_at >= coalesce(h.last_failure_at, '-infinity')
                 THEN EXCLUDED.last_status_code ELSE h.last_status_code END,
        updated_at = now()
), minutes AS (
    -- This minute's counters: deliveries whose "delivered" state was kept, failed attempts.
    INSERT INTO sink_health_minutes AS m (event_sink_id, minute, delivered, failed_attempts)
    SELECT event_sink_id, date_trunc('minute', now()),
           count(*) FILTER (WHERE kind = 'delivered'), count(*) FILTER (WHERE kind = 'failed')
    FROM (SELECT event_sink_id, 'delivered' AS kind FROM updated WHERE status = 'delivered'
          UNION ALL
          SELECT event_sink_id, 'failed' FROM attempt WHERE outcome = 'failure') AS k
    GROUP BY event_sink_id
    ORDER BY event_sink_id
    ON CONFLICT (event_sink_id, minute) DO UPDATE
    SET delivered = m.delivered + EXCLUDED.delivered,
        failed_attempts = m.failed_attempts + EXCLUDED.failed_attempts
)
SELECT id, claim_token FROM updated;

-- name: renew_leases
-- Extend running claims ($1 ids, $2 their claim tokens) by $3 seconds; returns the ids of
-- those still ours. Rows are locked in id order, as complete_deliveries locks them: two
-- statements that lock many rows in different orders can deadlock.
WITH mine AS (
    SELECT d.id
    FROM deliveries d
    JOIN unnest($1::uuid[], $2::uuid[]) AS c(id, claim_token)
      ON d.id = c.id AND d.claim_token = c.claim_token
    WHERE d.status = 'pending'
    ORDER BY d.id
    FOR UPDATE OF d
)
UPDATE deliveries d
SET next_attempt_at = now() + make_interval(secs => $3)
FROM mine
WHERE d.id = mine.id
RETURNING d.id;

-- name: wake_sink_backlog
-- $1 a sink that has just answered again, $2 when the attempt that succeeded began. The sink's
-- pending deliveries whose last claim ended before then failed while the sink was down: the
-- oldest $3 of them (deliveries_sink_backlog_idx) become due at their own arrival time, so the
-- backlog drains in order of arrival (overdue ones too); the dispatcher wakes the next chunk
-- while this one drains. Ones that failed since failed against a sink that answers, and keep
-- their backoff. The new time depends on the row only, so concurrent wakes agree, and a woken
-- row (next_attempt_at = created_at) is not touched again. Rows another statement holds are
-- left to the next chunk (SKIP LOCKED).
WITH chunk AS (
    SELECT d.id
    FROM deliveries d
    WHERE d.event_sink_id = $1
      AND d.status = 'pending'
      AND d.claim_token IS NULL
      AND d.next_attempt_at > d.created_at
      AND d.updated_at <= $2
      -- A digest's carrier not yet tried waits for its window to close, not for the sink.
      AND (d.digest_id IS NULL OR d.attempts > 0)
    ORDER BY d.created_at
    LIMIT $3
    FOR UPDATE SKIP LOCKED
)
UPDATE deliveries d
SET next_attempt_at = d.created_at
-- By key from an array: see claim_deliveries (a generic plan cannot know $3).
WHERE d.id = ANY (ARRAY(SELECT id FROM chunk));

-- name: defer_delivery
-- The sender says this delivery's turn is later (Slack pacing): back to the queue, due then.
-- Nothing was sent, so the claim does not count against the retry schedule.
UPDATE deliveries
SET next_attempt_at = now() + make_interval(secs => $3),
    claims = greatest(claims - 1, 0),
    claim_token = NULL,
    claimed_by = NULL,
    updated_at = now()
WHERE id = $1 AND claim_token = $2 AND status = 'pending'
RETURNING id;

-- name: release_deliveries
-- Hand unfinished claims back (shutdown): due now, and the claim does not count.
UPDATE deliveries
SET next_attempt_at = now(),
    claims = greatest(claims - 1, 0),
    claim_token = NULL,
    claimed_by = NULL,
    updated_at = now()
WHERE claim_token = ANY ($1::uuid[])
  AND status = 'pending';

-- name: insert_sink
INSERT INTO event_sinks (id, tenant_id, name, description, sink_type, args, events,
                         organization_ids, active, ordering, fallback_event_sink_id, digest)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
RETURNING *;

-- name: lock_tenant_sinks
-- Serialises sink creation per tenant, so that two creates cannot both pass the cap.
SELECT pg_advisory_xact_lock(hashtextextended('air-relay:event_sinks:' || $1, 0));

-- name: count_sinks
SELECT count(*) FROM event_sinks WHERE tenant_id = $1;

-- name: list_sinks
-- One page, oldest first; $2/$3 are the (created_at, id) of the previous page's last sink.
SELECT * FROM event_sinks
WHERE tenant_id = $1 AND ($2::timestamptz IS NULL OR (created_at, id) > ($2, $3))
ORDER BY created_at, id
LIMIT $4;

-- name: get_sink
SELECT * FROM event_sinks WHERE id = $1;

-- name: update_sink
UPDATE event_sinks
SET name = $2, description = $3, sink_type = $4, args = $5, events = $6,
    organization_ids = $7, active = $8, ordering = $9, fallback_event_sink_id = $10,
    digest = $11, updated_at = now()
WHERE id = $1
RETURNING *;

-- name: delete_sink
DELETE FROM event_sinks WHERE id = $1 RETURNING id, tenant_id;

-- name: fallback_dependents
-- The sinks that name $1 as their fallback (a delete of $1 is refused while any does).
SELECT id, name FROM event_sinks WHERE fallback_event_sink_id = $1 ORDER BY created_at, id;

-- name: fallback_chain
-- The sinks a failover from $1 can reach, $1 first, in chain order (at most $2 of them; a
-- cycle, which the API refuses to make, ends the walk where it closes).
WITH RECURSIVE chain AS (
    SELECT s.id, s.tenant_id, s.fallback_event_sink_id, 1 AS depth, ARRAY[s.id] AS seen
    FROM event_sinks s
    WHERE s.id = $1
    UNION ALL
    SELECT n.id, n.tenant_id, n.fallback_event_sink_id, c.depth + 1, c.seen || n.id
    FROM chain c
    JOIN event_sinks n ON n.id = c.fallback_event_sink_id
    WHERE c.depth < $2 AND NOT n.id = ANY (c.seen)
)
SELECT id, tenant_id FROM chain ORDER BY depth;

-- name: audit_log_page
-- Keyset pagination on id, newest first; a NULL parameter means "no filter". seal_id is the
-- seal whose id range holds the row (NULL until one does). failed_over_to / _from link a
-- dead delivery's rows and its fallback's (read from the delivery while it is kept).
SELECT a.id, a.created_at, a.tenant_id, a.event_id, a.event_name, a.organization_id,
       a.event_sink_id, a.event_sink_type, a.attempt, a.outcome, a.status_code, a.error,
       a.response_body, a.duration_ms, a.next_attempt_at, a.error_detail,
       (SELECT s.id FROM audit_seals s
        WHERE s.last_id >= a.id AND s.first_id <= a.id
        ORDER BY s.last_id LIMIT 1) AS seal_id,
       (SELECT d.failed_over_to FROM deliveries d WHERE d.id = a.delivery_id) AS failed_over_to,
       (SELECT d.failed_over_from FROM deliveries d WHERE d.id = a.delivery_id)
           AS failed_over_from,
       w.id AS digest_id, w.member_count AS digest_count
FROM delivery_attempts a
-- A digest's attempts are its carrier's: they name the digest and how many it carried.
LEFT JOIN digest_windows w ON w.carrier_id = a.delivery_id
WHERE a.tenant_id = $1
  AND ($2::uuid IS NULL OR a.event_sink_id = $2)
  AND ($3::text IS NULL OR a.event_name = $3)
  AND ($4::int IS NULL OR a.status_code = $4)
  AND ($5::text IS NULL OR a.outcome = $5)
  AND ($6::timestamptz IS NULL OR a.created_at >= $6)
  AND ($7::timestamptz IS NULL OR a.created_at <= $7)
  AND ($8::bigint IS NULL OR a.id < $8)
ORDER BY a.id DESC
LIMIT $9;

-- name: pending_stats
-- Deliveries waiting to go out (a held one too: it waits for its digest) and the age of the
-- oldest, counted as sinks_health counts its oldest_pending_at: a storm digest's delivery from
-- its window's end, none while the window is open.
SELECT (SELECT count(*) FROM deliveries WHERE status = 'pending')
       + (SELECT count(*) FROM deliveries WHERE status = 'held') AS pending,
       coalesce(extract(epoch FROM now() - min(p.since)), 0)::float8 AS oldest_age_seconds
FROM (
    SELECT CASE WHEN d.digest_id IS NULL THEN d.created_at
                ELSE (SELECT CASE WHEN max(w.closes_at) > now() THEN NULL
                                  ELSE greatest(d.created_at, max(w.closes_at)) END
                      FROM digest_windows w WHERE w.id = d.digest_id) END AS since
    FROM deliveries d
    WHERE d.status = 'pending'
) AS p;

-- name: delivery_page
-- Deliveries of one tenant, newest first, keyset on (created_at, id); a NULL filter means
-- "no filter". The bounds are written with coalesce, never "$n IS NULL OR ...", so they stay
-- index conditions on deliveries_tenant_idx and a deep page costs what the first one does.
-- created_at is when the event arrived (ingest writes event and deliveries in one statement).
-- A delivery held for a digest is shown pending (it is, until the digest goes), with its
-- digest_id; held ones are listed under status=pending too.
SELECT d.id, d.tenant_id, d.event_id, e.event_name, e.organization_id, d.event_sink_id,
       d.sink_type AS event_sink_type,
       CASE WHEN d.status = 'held' THEN 'pending' ELSE d.status END AS status,
       d.attempts, d.last_error,
       CASE WHEN d.status IN ('pending', 'held') THEN d.next_attempt_at END AS next_attempt_at,
       d.created_at, d.updated_at, d.failed_over_to, d.failed_over_from, d.digest_id
FROM deliveries d
JOIN events e ON e.id = d.event_id
WHERE d.tenant_id = $1
  AND ($2::text IS NULL OR d.status = $2 OR (d.status = 'held' AND $2 = 'pending'))
  AND ($3::uuid IS NULL OR d.event_sink_id = $3)
  AND ($4::text IS NULL OR e.event_name = $4)
  AND d.created_at >= coalesce($5::timestamptz, '-infinity')
  AND d.created_at <= coalesce($6::timestamptz, 'infinity')
  AND (d.created_at, d.id) < (coalesce($7::timestamptz, 'infinity'),
                              coalesce($8::uuid, 'ffffffff-ffff-ffff-ffff-ffffffffffff'))
ORDER BY d.created_at DESC, d.id DESC
LIMIT $9;

-- name: retry_delivery
-- Requeue one dead delivery of a tenant in $2 (NULL = any tenant), record the operator
-- action and wake the dispatchers ($4, the notify channel), all in one statement. The
-- durable schedule starts over (claims 0); attempts and last_error stay, so attempt numbers
-- continue in the audit log.
-- One row when the delivery is visible (previous_status tells whether it was requeued),
-- none when it is not.
-- A dead delivery whose sink was deleted is not requeued (sink_exists tells): it could only
-- die again.
-- Storm digests: a requeued digest carrier takes its digest's dead members back to 'held'
-- (they finish with the digest again, as when it first went); a member requeued alone drops
-- its digest_id and goes out on its own (its digest is not sent again). Locks: the target,
-- then the members in id order, as a carrier's completion takes them.
WITH target AS (
    SELECT d.id, d.status, d.digest_id,
           EXISTS (SELECT 1 FROM event_sinks s WHERE s.id = d.event_sink_id) AS sink_exists,
           coalesce(w.carrier_id = d.id, false) AS carrier
    FROM deliveries d
    LEFT JOIN digest_windows w ON w.id = d.digest_id
    WHERE d.id = $1
      AND ($2::text[] IS NULL OR d.tenant_id = ANY ($2::text[]))
    FOR UPDATE OF d
), member AS (
    SELECT m.id
    FROM target t
    JOIN deliveries m ON m.digest_id = t.digest_id AND m.id <> t.id
    WHERE t.carrier AND t.status = 'dead' AND t.sink_exists AND m.status = 'dead'
    ORDER BY m.id
    FOR UPDATE OF m
), rejoined AS (
    UPDATE deliveries d
    SET status = 'held',
        claims = 0,
        claim_token = NULL,
        claimed_by = NULL,
        updated_at = now()
    FROM member m
    WHERE d.id = m.id AND d.status = 'dead'
    RETURNING d.id
), requeued AS (
    UPDATE deliveries d
    SET status = 'pending',
        next_attempt_at = now(),
        claims = 0,
        claim_token = NULL,
        claimed_by = NULL,
        updated_at = now(),
        digest_id = CASE WHEN t.carrier THEN d.digest_id END
    FROM target t
    WHERE d.id = t.id AND t.status = 'dead' AND t.sink_exists
    RETURNING d.id, d.tenant_id, d.event_id, d.event_sink_id, d.sink_type, d.status,
              d.attempts, d.last_error, d.next_attempt_at, d.created_at, d.updated_at,
              d.failed_over_to, d.failed_over_from
), recorded AS (
    INSERT INTO operator_actions (tenant_id, action, actor, target_id, params, affected)
    SELECT r.tenant_id, 'delivery_retry', $3, r.id,
           jsonb_build_object('attempts_before', r.attempts)
               || CASE WHEN j.n > 0 THEN jsonb_build_object('digest_members', j.n)
                       ELSE '{}'::jsonb END,
           1 + j.n
    FROM requeued r
    CROSS JOIN (SELECT count(*) AS n FROM rejoined) j
    RETURNING id
)
-- A delivery held for a digest is pending to the API (as delivery_page shows it).
SELECT CASE WHEN t.status = 'held' THEN 'pending' ELSE t.status END AS previous_status,
       t.sink_exists,
       r.id, r.tenant_id, r.event_id, e.event_name, e.organization_id, r.event_sink_id,
       r.sink_type AS event_sink_type, r.status, r.attempts, r.last_error, r.next_attempt_at,
       r.created_at, r.updated_at, r.failed_over_to, r.failed_over_from,
       (SELECT id FROM recorded) AS action_id,
       CASE WHEN r.id IS NOT NULL
            THEN pg_notify($4, '')::text END AS notified
FROM target t
LEFT JOIN requeued r ON r.id = t.id
LEFT JOIN events e ON e.id = r.event_id;

-- name: replay_sink
-- Requeue a sink's finished deliveries that arrived in [$4, $5] (statuses $3, only ever
-- delivered or dead: a pending delivery is never touched), record the operator action and
-- wake the dispatchers ($8, the notify channel), in one statement. Same reset as
-- retry_delivery, and the same rule for storm digests: a requeued carrier takes its digest's
-- members (of those statuses, arrived when they may) back to 'held', so its events go out
-- once, in the digest; a member whose carrier is not requeued drops its digest_id and goes
-- out on its own. Rows are locked in id order, as complete_deliveries locks them.
WITH chosen AS (
    SELECT id
    FROM deliveries
    WHERE tenant_id = $1
      AND event_sink_id = $2
      AND status IN ('delivered', 'dead')
      AND status = ANY ($3::text[])
      AND created_at >= $4
      AND created_at <= $5
), scope AS (
    SELECT id FROM chosen
    UNION
    SELECT m.id
    FROM chosen c
    JOIN digest_windows w ON w.carrier_id = c.id
    JOIN deliveries m ON m.digest_id = w.id
    WHERE m.status IN ('delivered', 'dead') AND m.status = ANY ($3::text[])
), locked AS (
    SELECT d.id, d.digest_id
    FROM deliveries d
    JOIN scope s ON s.id = d.id
    WHERE d.status IN ('delivered', 'dead') AND d.status = ANY ($3::text[])
    ORDER BY d.id
    FOR UPDATE OF d
), role AS (
    SELECT l.id,
           coalesce(w.carrier_id = l.id, false) AS carrier,
           EXISTS (SELECT 1 FROM locked c WHERE c.id = w.carrier_id AND c.id <> l.id)
               AS with_carrier,
           EXISTS (SELECT 1 FROM chosen c WHERE c.id = l.id) AS chosen
    FROM locked l
    LEFT JOIN digest_windows w ON w.id = l.digest_id
), requeued AS (
    UPDATE deliveries d
    SET status = CASE WHEN r.with_carrier THEN 'held' ELSE 'pending' END,
        next_attempt_at = now(),
        claims = 0,
        claim_token = NULL,
        claimed_by = NULL,
        updated_at = now(),
        digest_id = CASE WHEN r.carrier OR r.with_carrier THEN d.digest_id END
    FROM role r
    WHERE d.id = r.id AND (r.chosen OR r.with_carrier)
    RETURNING d.id
), recorded AS (
    INSERT INTO operator_actions (tenant_id, action, actor, target_id, params, affected)
    SELECT $1, 'sink_replay', $6, $2, $7::jsonb, count(*) FROM requeued
    RETURNING id, affected
)
SELECT id AS action_id, affected,
       CASE WHEN affected > 0
            THEN pg_notify($8, '')::text END AS notified
FROM recorded;

-- name: delivery_detail
-- One delivery of a tenant in $2 (NULL = any tenant), with its event as stored (the exact
-- bytes AIR sent) and whether its sink still exists. A delivery held for a digest is shown
-- as delivery_page shows it: pending, due with its digest, naming it (digest_id).
SELECT d.id, d.tenant_id, d.event_id, e.event_name, e.organization_id, d.event_sink_id,
       d.sink_type AS event_sink_type,
       CASE WHEN d.status = 'held' THEN 'pending' ELSE d.status END AS status,
       d.attempts, d.last_error,
       CASE WHEN d.status IN ('pending', 'held') THEN d.next_attempt_at END AS next_attempt_at,
       d.created_at, d.updated_at, d.failed_over_to, d.failed_over_from, d.digest_id,
       e.body, e.received_at,
       EXISTS (SELECT 1 FROM event_sinks s WHERE s.id = d.event_sink_id) AS sink_exists
FROM deliveries d
JOIN events e ON e.id = d.event_id
WHERE d.id = $1
  AND ($2::text[] IS NULL OR d.tenant_id = ANY ($2::text[]));

-- name: delivery_attempts
-- The newest $2 attempts of delivery $1 (through delivery_attempts_delivery_idx), newest
-- first, each with the seal that covers it and the failover links, as audit_log_page shows
-- them.
SELECT id, created_at, tenant_id, event_id, event_name, organization_id, event_sink_id,
       event_sink_type, attempt, outcome, status_code, error, response_body, duration_ms,
       next_attempt_at, error_detail,
       (SELECT s.id FROM audit_seals s
        WHERE s.last_id >= a.id AND s.first_id <= a.id
        ORDER BY s.last_id LIMIT 1) AS seal_id,
       (SELECT d.failed_over_to FROM deliveries d WHERE d.id = a.delivery_id) AS failed_over_to,
       (SELECT d.failed_over_from FROM deliveries d WHERE d.id = a.delivery_id)
           AS failed_over_from
FROM delivery_attempts a
WHERE delivery_id = $1
ORDER BY id DESC
LIMIT $2;

-- name: retry_deliveries
-- Bulk retry: requeue the oldest $6 dead deliveries of tenant $1 that match the listing's
-- filters ($2 sink, $3 event name, $4/$5 arrival window; NULL = no filter) and whose sink
-- still exists, record the operator action ($7 actor, $8 params, plus the ids requeued) and
-- wake the dispatchers ($9), in one statement. Same reset as retry_delivery. Rows are locked
-- in id order, as complete_deliveries and renew_leases lock theirs (different orders can
-- deadlock); a row no longer dead once locked is left alone. more: another retryable one
-- remains; sink_deleted: matching dead deliveries of deleted sinks, counted up to $6. No
-- action is recorded when nothing was retryable but some matched a deleted sink (a 409).
-- The candidates come from deliveries_dead_idx, oldest first.
-- Storm digests, as retry_delivery: a requeued carrier takes its digest's dead members back
-- to 'held' (counted in affected, chosen or not), a chosen member whose carrier is requeued
-- too is held, never sent alone, and a member requeued without its carrier drops its
-- digest_id and goes out on its own.
WITH candidate AS (
    SELECT d.id, d.created_at
    FROM deliveries d
    JOIN events e ON e.id = d.event_id
    WHERE d.tenant_id = $1
      AND d.status = 'dead'
      AND ($2::uuid IS NULL OR d.event_sink_id = $2)
      AND ($3::text IS NULL OR e.event_name = $3)
      AND d.created_at >= coalesce($4::timestamptz, '-infinity')
      AND d.created_at <= coalesce($5::timestamptz, 'infinity')
      AND EXISTS (SELECT 1 FROM event_sinks s WHERE s.id = d.event_sink_id)
    ORDER BY d.created_at, d.id
    LIMIT $6 + 1
), gone AS (
    SELECT count(*) AS n
    FROM (
        SELECT 1
        FROM deliveries d
        JOIN events e ON e.id = d.event_id
        WHERE d.tenant_id = $1
          AND d.status = 'dead'
          AND ($2::uuid IS NULL OR d.event_sink_id = $2)
          AND ($3::text IS NULL OR e.event_name = $3)
          AND d.created_at >= coalesce($4::timestamptz, '-infinity')
          AND d.created_at <= coalesce($5::timestamptz, 'infinity')
          AND NOT EXISTS (SELECT 1 FROM event_sinks s WHERE s.id = d.event_sink_id)
        LIMIT $6
    ) g
), chosen AS (
    SELECT id FROM candidate ORDER BY created_at, id LIMIT $6
), scope AS (
    -- Storm digests (as retry_delivery): a chosen carrier brings its digest's dead members.
    SELECT id FROM chosen
    UNION
    SELECT m.id
    FROM chosen c
    JOIN digest_windows w ON w.carrier_id = c.id
    JOIN deliveries m ON m.digest_id = w.id
    WHERE m.status = 'dead'
), locked AS (
    SELECT d.id, d.digest_id
    FROM deliveries d
    JOIN scope s ON s.id = d.id
    WHERE d.status = 'dead'
    ORDER BY d.id
    FOR UPDATE OF d
), role AS (
    SELECT l.id,
           coalesce(w.carrier_id = l.id, false) AS carrier,
           EXISTS (SELECT 1 FROM locked c WHERE c.id = w.carrier_id AND c.id <> l.id)
               AS with_carrier,
           EXISTS (SELECT 1 FROM chosen c WHERE c.id = l.id) AS chosen
    FROM locked l
    LEFT JOIN digest_windows w ON w.id = l.digest_id
), requeued AS (
    -- A member whose carrier is requeued here waits for the digest again ('held'); one
    -- requeued without it drops its digest_id and goes out on its own.
    UPDATE deliveries d
    SET status = CASE WHEN r.with_carrier THEN 'held' ELSE 'pending' END,
        next_attempt_at = now(),
        claims = 0,
        claim_token = NULL,
        claimed_by = NULL,
        updated_at = now(),
        digest_id = CASE WHEN r.carrier OR r.with_carrier THEN d.digest_id END
    FROM role r
    WHERE d.id = r.id AND (r.chosen OR r.with_carrier)
    RETURNING d.id
), recorded AS (
    INSERT INTO operator_actions (tenant_id, action, actor, target_id, params, affected)
    SELECT $1, 'deliveries_retry', $7, $2,
           $8::jsonb || jsonb_build_object(
               'delivery_ids', coalesce(jsonb_agg(r.id ORDER BY r.id), '[]'::jsonb)),
           count(*)
    FROM requeued r
    HAVING count(*) > 0 OR (SELECT n FROM gone) = 0
    RETURNING id
)
SELECT (SELECT count(*) FROM requeued) AS affected,
       (SELECT count(*) FROM candidate) > $6 AS more,
       (SELECT n FROM gone) AS sink_deleted,
       (SELECT id FROM recorded) AS action_id,
       CASE WHEN (SELECT count(*) FROM requeued) > 0
            THEN pg_notify($9, '')::text END AS notified;

-- name: dismiss_deliveries
-- Bulk dismiss: the oldest $6 dead deliveries of tenant $1 that match the listing's filters
-- (as retry_deliveries; a deleted sink's too) become dismissed, and the operator action is
-- recorded ($7 actor, $8 params, plus the ids dismissed), in one statement. Their attempts
-- stay in the audit log. Rows are locked in id order, as in retry_deliveries.
WITH candidate AS (
    SELECT d.id, d.created_at
    FROM deliveries d
    JOIN events e ON e.id = d.event_id
    WHERE d.tenant_id = $1
      AND d.status = 'dead'
      AND ($2::uuid IS NULL OR d.event_sink_id = $2)
      AND ($3::text IS NULL OR e.event_name = $3)
      AND d.created_at >= coalesce($4::timestamptz, '-infinity')
      AND d.created_at <= coalesce($5::timestamptz, 'infinity')
    ORDER BY d.created_at, d.id
    LIMIT $6 + 1
), chosen AS (
    SELECT id FROM candidate ORDER BY created_at, id LIMIT $6
), locked AS (
    SELECT d.id
    FROM deliveries d
    JOIN chosen c ON c.id = d.id
    WHERE d.status = 'dead'
    ORDER BY d.id
    FOR UPDATE OF d
), dismissed AS (
    UPDATE deliveries d
    SET status = 'dismissed',
        updated_at = now()
    FROM locked l
    WHERE d.id = l.id
    RETURNING d.id
), recorded AS (
    INSERT INTO operator_actions (tenant_id, action, actor, target_id, params, affected)
    SELECT $1, 'deliveries_dismiss', $7, $2,
           $8::jsonb || jsonb_build_object(
               'delivery_ids', coalesce(jsonb_agg(x.id ORDER BY x.id), '[]'::jsonb)),
           count(*)
    FROM dismissed x
    RETURNING id
)
SELECT (SELECT count(*) FROM dismissed) AS affected,
       (SELECT count(*) FROM candidate) > $6 AS more,
       0::bigint AS sink_deleted,
       (SELECT id FROM recorded) AS action_id;

-- name: retention_cutoff
-- The database's clock decides what is old: updated_at and received_at were set by it.
SELECT now() - make_interval(secs => $1);

-- name: purge_deliveries
-- One batch of finished deliveries older than the cutoff; their attempts go by ON DELETE
-- CASCADE. SKIP LOCKED: a row someone else holds (a retry in flight) is left for next time,
-- so the purge never waits on delivery traffic.
WITH doomed AS (
    SELECT id
    FROM deliveries
    WHERE status IN ('delivered', 'dead', 'dismissed')
      AND updated_at < $1
    LIMIT $2
    FOR UPDATE SKIP LOCKED
)
DELETE FROM deliveries d
USING doomed
WHERE d.id = doomed.id;

-- name: purge_events
-- One batch of events older than the cutoff that no delivery refers to any more (an event
-- with a pending or recent delivery stays).
WITH doomed AS (
    SELECT e.id
    FROM events e
    WHERE e.received_at < $1
      AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = e.id)
    LIMIT $2
    FOR UPDATE SKIP LOCKED
)
DELETE FROM events e
USING doomed
WHERE e.id = doomed.id;

-- name: purge_audit_seal
-- Retention of the audit log: the oldest seal, if it was made before the cutoff ($1), goes
-- with every row it covers, in one statement, so a batch is purged whole or not at all and
-- unsealed rows never. The newest seal always stays: the chain goes on from its hash.
-- FOR UPDATE (not SKIP LOCKED): a second instance waits, then finds the row gone and stops,
-- rather than purging the next seal out of order.
WITH doomed AS (
    SELECT id, first_id, last_id
    FROM audit_seals
    WHERE sealed_at < $1
      AND id < (SELECT max(id) FROM audit_seals)
    ORDER BY id
    LIMIT 1
    FOR UPDATE
), rows AS (
    DELETE FROM delivery_attempts a
    USING doomed
    WHERE a.id BETWEEN doomed.first_id AND doomed.last_id
    RETURNING 1
), seal AS (
    DELETE FROM audit_seals s
    USING doomed
    WHERE s.id = doomed.id
    RETURNING s.id
)
SELECT (SELECT count(*) FROM seal) AS seals, (SELECT count(*) FROM rows) AS rows;

-- name: audit_seal_horizon
-- The sealer's horizon: every audit row with an id up to the answer has committed (or rolled
-- back) for good. Attempt rows are inserted only under the audit-write lock in shared mode
-- ($1; see complete_deliveries), held from before their ids are drawn until their commit; ids
-- are drawn in increasing order. So once this lock is granted in exclusive mode, no
-- transaction that drew an id up to the highest id visible here is still in flight, and
-- no later one can draw an id that low. NULL when the lock is held right now (a delivery is
-- recording its attempts): the sealer tries again shortly, so it never makes them wait.
SELECT CASE WHEN pg_try_advisory_xact_lock($1)
            THEN (SELECT coalesce(max(id), 0) FROM delivery_attempts) END AS horizon;

-- name: audit_seal_horizon_wait
-- The same horizon, waiting for the lock (at most the session's lock_timeout): the sealer
-- falls back to this when the lock was busy at every try, so sealing always progresses.
SELECT (SELECT coalesce(max(id), 0) FROM delivery_attempts) AS horizon
FROM (SELECT pg_advisory_xact_lock($1)::text) AS locked;

-- name: set_lock_timeout
-- For the rest of the transaction: $1 such as '2s'.
SELECT set_config('lock_timeout', $1, true);

-- name: audit_sealer_lock
-- One sealer at a time across instances, for the rest of the transaction: false when another
-- is sealing now (this one skips its turn).
SELECT pg_try_advisory_xact_lock($1);

-- name: latest_audit_seal
SELECT id, sealed_at, first_id, last_id, row_count, prev_hash, hash
FROM audit_seals
ORDER BY id DESC
LIMIT 1;

-- name: latest_audit_seal_id
SELECT max(id) FROM audit_seals;

-- name: seal_clock
SELECT clock_timestamp();

-- name: audit_batch_span
-- The next seal's batch: the rows from $1 up to the horizon $2, at most $3 of them (an index
-- scan of ids only): its last id and its row count, which the seal's header names.
SELECT coalesce(max(id), 0) AS last_id, count(*) AS row_count
FROM (SELECT id FROM delivery_attempts WHERE id >= $1 AND id <= $2 ORDER BY id LIMIT $3) AS batch;

-- name: audit_rows_to_seal
-- One page of a seal's batch: rows from $1 up to its last id $2, in id order, at most $3.
SELECT id, delivery_id, tenant_id, event_id, event_name, organization_id, event_sink_id,
       event_sink_type, attempt, outcome, status_code, error, response_body, duration_ms,
       next_attempt_at, created_at, error_detail
FROM delivery_attempts
WHERE id >= $1 AND id <= $2
ORDER BY id
LIMIT $3;

-- name: insert_audit_seal
INSERT INTO audit_seals (id, sealed_at, first_id, last_id, row_count, prev_hash, hash)
VALUES ($1, $2, $3, $4, $5, $6, $7);

-- name: audit_seals_in_order
-- Verification: every seal, oldest first.
SELECT id, sealed_at, first_id, last_id, row_count, prev_hash, hash
FROM audit_seals
ORDER BY id;

-- name: audit_rows_from
-- Verification: every audit row from id $1 on, in id order (read through a cursor).
SELECT id, delivery_id, tenant_id, event_id, event_name, organization_id, event_sink_id,
       event_sink_type, attempt, outcome, status_code, error, response_body, duration_ms,
       next_attempt_at, created_at, error_detail
FROM delivery_attempts
WHERE id >= $1
ORDER BY id;

-- name: audit_rows_before
-- Verification: rows below the oldest seal's range (retention leaves none).
SELECT count(*) FROM delivery_attempts WHERE id < $1;

-- name: digest_lock
-- Storm digests (air_relay.delivery.digests): routing a delivery into a window and sealing a
-- window take this lock of the (sink $1, eventName $2, organizationId as text $3) pair for
-- the rest of the transaction, so a delivery never joins a window being sealed.
SELECT pg_advisory_xact_lock(
    hashtextextended('air-relay:digest:' || $1::text || ':' || $2 || ':' || $3, 0));

-- name: digest_open_window
-- One row: whether delivery $6 opened a window already (opened: claimed again after a
-- crash, it is sent again on its own, never held in its own window), and the unsealed window
-- of the pair ($1-$3) that an event received at $4 falls in (id NULL when none): received
-- before it closes, and at most its length ($5 seconds) before it opened (deliveries are
-- claimed roughly, not strictly, in arrival order). Only windows opened within $5 seconds of
-- $4 are read, so windows left without members cost nothing later.
SELECT EXISTS (SELECT 1 FROM digest_windows WHERE opener_id = $6) AS opened,
       w.id, w.carrier_id, w.closes_at
FROM (SELECT) AS one
LEFT JOIN LATERAL (
    SELECT id, carrier_id, closes_at
    FROM digest_windows
    WHERE event_sink_id = $1 AND event_name = $2 AND org_text = $3
      AND sealed_at IS NULL
      AND opened_at > $4::timestamptz - make_interval(secs => $5::float8)
      AND opened_at < $4::timestamptz + make_interval(secs => $5::float8)
      AND closes_at > $4::timestamptz
    ORDER BY opened_at
    LIMIT 1
) AS w ON true;

-- name: digest_open
-- A new window, opened by delivery $9 (which goes out at once), received at $8.
INSERT INTO digest_windows (id, event_sink_id, tenant_id, event_name, org_text,
                            organization_id, window_seconds, max_listed, opened_at,
                            closes_at, opener_id)
VALUES (gen_random_uuid(), $1, $2, $3, $4, $5, $6::int, $7, $8::timestamptz,
        $8::timestamptz + make_interval(secs => $6::int), $9);

-- name: digest_hold
-- Claimed delivery $1 (claim token $2) joins window $3, due with it at $4: held, or with $5
-- the window's carrier (pending, due at $4; its claims send the digest). Nothing was sent,
-- so the claim does not count. held = 0 when the claim was no longer ours.
WITH held AS (
    UPDATE deliveries
    SET status = CASE WHEN $5::boolean THEN 'pending' ELSE 'held' END,
        digest_id = $3,
        next_attempt_at = $4,
        claims = greatest(claims - 1, 0),
        claim_token = NULL,
        claimed_by = NULL,
        updated_at = now()
    WHERE id = $1 AND claim_token = $2 AND status = 'pending'
    RETURNING id
), carrier AS (
    UPDATE digest_windows w
    SET carrier_id = held.id
    FROM held
    WHERE w.id = $3 AND $5::boolean
    RETURNING w.id
)
SELECT (SELECT count(*) FROM held) AS held, (SELECT count(*) FROM carrier) AS carried;

-- name: digest_seal
-- Window $1, claimed through its carrier $2: sealed (once; no delivery joins it after this)
-- with its member count. No row when $2 is not the window's carrier.
UPDATE digest_windows w
SET sealed_at = coalesce(w.sealed_at, now()),
    member_count = coalesce(w.member_count,
                            (SELECT count(*) FROM deliveries d WHERE d.digest_id = w.id))
WHERE w.id = $1 AND w.carrier_id = $2
RETURNING w.id, w.event_name, w.organization_id, w.window_seconds, w.max_listed,
          w.opened_at, w.closes_at, w.member_count;

-- name: digest_members
-- The first $2 members of digest $1, in order of arrival.
SELECT e.id AS event_id, e.body, e.received_at
FROM deliveries d
JOIN events e ON e.id = d.event_id
WHERE d.digest_id = $1
ORDER BY e.received_at, d.created_at, d.id
LIMIT $2;

-- name: digest_finish_members
-- The digest's verdict for its held members, written in its carrier's completion: delivered
-- or dead with the digest's attempts ($2 status, $3 attempts, $4 last error), or still held,
-- due with the carrier's retry ($5). Returns how many were finished or kept held.
-- Members delivered count in this minute's sink health (delivered_last_hour) as the carrier
-- does (complete_deliveries, earlier in the same transaction, counted it and locked the same
-- minute row: now() is the transaction's time).
WITH finished AS (
    UPDATE deliveries
    SET status = CASE WHEN $2 = 'pending' THEN 'held' ELSE $2 END,
        attempts = $3,
        last_error = $4,
        next_attempt_at = coalesce($5, now()),
        updated_at = now()
    WHERE digest_id = $1 AND status = 'held'
    RETURNING event_sink_id, status
), minutes AS (
    INSERT INTO sink_health_minutes AS m (event_sink_id, minute, delivered)
    SELECT event_sink_id, date_trunc('minute', now()), count(*)
    FROM finished
    WHERE status = 'delivered'
    GROUP BY event_sink_id
    ORDER BY event_sink_id
    ON CONFLICT (event_sink_id, minute) DO UPDATE
    SET delivered = m.delivered + EXCLUDED.delivered
)
SELECT count(*) FROM finished;

-- name: digest_fail_over_members
-- A dead digest's members fail over as complete_deliveries fails over the delivery it makes
-- dead (their carrier did there): run in the carrier's completion, after
-- digest_finish_members. Each member of digest $1 that is dead and not yet failed over, of a
-- sink naming an active fallback, gets a new delivery of its event to the fallback, due now,
-- unless the fallback already has a failover delivery of that event; the two name each other
-- (failed_over_to / _from). The members are already locked (digest_finish_members wrote
-- them in this transaction). Another instance failing the same event over to the same
-- fallback at the same moment is stopped by deliveries_failover_once_idx, as in
-- complete_deliveries: the member then keeps failed_over_to unset (its statement cannot see
-- the winner's row), and the carrier's completion still commits.
WITH member AS MATERIALIZED (
    SELECT d.id, d.event_id, d.tenant_id, f.id AS sink_id, f.sink_type
    FROM deliveries d
    JOIN event_sinks s ON s.id = d.event_sink_id
    JOIN event_sinks f ON f.id = s.fallback_event_sink_id AND f.active
    WHERE d.digest_id = $1
      AND d.status = 'dead'
      AND d.failed_over_to IS NULL
      AND NOT EXISTS (SELECT 1 FROM deliveries o
                      WHERE o.event_id = d.event_id AND o.event_sink_id = f.id
                        AND o.failed_over_from IS NOT NULL)
), failed_over AS (
    INSERT INTO deliveries (id, event_id, event_sink_id, tenant_id, sink_type,
                            failed_over_from)
    SELECT gen_random_uuid(), event_id, sink_id, tenant_id, sink_type, id
    FROM member
    ON CONFLICT (event_id, event_sink_id) WHERE failed_over_from IS NOT NULL DO NOTHING
    RETURNING id, failed_over_from
)
UPDATE deliveries d
SET failed_over_to = fo.id
FROM failed_over fo
WHERE d.id = fo.failed_over_from;

-- name: purge_digest_windows
-- Retention of storm digest windows that closed before the cutoff and that nothing names any
-- more: those that never held a delivery (most windows: their opener went out alone and
-- nothing else came), and those whose digest is gone (its carrier delivery purged, and its
-- attempts too: while an audit row of the carrier is kept, the audit log names its digest
-- through the window). Both lookups are by index (the deliveries' key,
-- delivery_attempts_delivery_idx).
WITH doomed AS (
    SELECT w.id
    FROM digest_windows w
    WHERE w.closes_at < $1
      AND (w.carrier_id IS NULL
           OR (NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.id = w.carrier_id)
               AND NOT EXISTS (SELECT 1 FROM delivery_attempts a
                               WHERE a.delivery_id = w.carrier_id)))
    LIMIT $2
    FOR UPDATE OF w SKIP LOCKED
)
DELETE FROM digest_windows w
USING doomed
WHERE w.id = doomed.id;

-- name: migration_lock
-- Taken first in each migration's transaction, so several instances starting at once apply
-- each migration once (the others wait, then find it applied). A transaction-level lock,
-- not a session one: through a transaction-mode pooler the unlock of a session lock could
-- run on another server connection and leave the lock held. $1 is migrate.MIGRATION_LOCK_KEY.
SELECT pg_advisory_xact_lock($1);

-- name: migration_applied
SELECT EXISTS (SELECT 1 FROM air_relay_schema_migrations WHERE version = $1);

-- name: create_migrations_table
CREATE TABLE IF NOT EXISTS air_relay_schema_migrations (
    version    integer PRIMARY KEY,
    name       text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- name: applied_migrations
SELECT version FROM air_relay_schema_migrations;

-- name: record_migration
INSERT INTO air_relay_schema_migrations (version, name) VALUES ($1, $2);

-- name: migrations_table_exists
SELECT to_regclass('air_relay_schema_migrations') IS NOT NULL;

-- name: schema_version
SELECT coalesce(max(version), 0) FROM air_relay_schema_migrations;

-- name: sinks_health
-- The health of the sinks of the tenants $1 (NULL: every tenant), or of sink $2 only: the
-- stored state (sink_health, kept by complete_deliveries), the last hour's counters (at most
-- 61 minute rows per sink) and the sink's pending (held for a digest too) and dead
-- deliveries, each counted from a partial index on the sink (deliveries_sink_due_idx,
-- deliveries_sink_held_idx, deliveries_sink_dead_idx). Nothing here reads the audit log.
-- A storm digest waits for its window by design: its deliveries count towards the oldest
-- pending one from the window's end (looked up by key), and not at all while it is open;
-- a held delivery is not counted there, its digest's carrier (pending) stands for it.
SELECT s.id AS event_sink_id, s.tenant_id, s.name, s.sink_type AS type, s.active,
       h.state AS stored_state, h.since, h.last_success_at, h.last_failure_at, h.last_error,
       h.last_status_code, coalesce(h.consecutive_failures, 0) AS consecutive_failures,
       p.pending, p.oldest_pending_at, x.dead,
       coalesce(m.delivered, 0) AS delivered_last_hour,
       coalesce(m.failed_attempts, 0) AS failed_attempts_last_hour
FROM event_sinks s
LEFT JOIN sink_health h ON h.event_sink_id = s.id
CROSS JOIN LATERAL (
    SELECT count(*) + (SELECT count(*) FROM deliveries d
                       WHERE d.event_sink_id = s.id AND d.status = 'held') AS pending,
           min(q.since) AS oldest_pending_at
    FROM (
        SELECT CASE WHEN d.digest_id IS NULL THEN d.created_at
                    ELSE (SELECT CASE WHEN max(w.closes_at) > now() THEN NULL
                                      ELSE greatest(d.created_at, max(w.closes_at)) END
                          FROM digest_windows w WHERE w.id = d.digest_id) END AS since
        FROM deliveries d
        WHERE d.event_sink_id = s.id AND d.status = 'pending'
    ) AS q
) AS p
CROSS JOIN LATERAL (
    SELECT count(*) AS dead
    FROM deliveries d
    WHERE d.event_sink_id = s.id AND d.status = 'dead'
) AS x
CROSS JOIN LATERAL (
    SELECT sum(hm.delivered)::bigint AS delivered, sum(hm.failed_attempts)::bigint AS failed_attempts
    FROM sink_health_minutes hm
    WHERE hm.event_sink_id = s.id AND hm.minute > now() - interval '1 hour'
) AS m
WHERE ($1::text[] IS NULL OR s.tenant_id = ANY ($1::text[]))
  AND ($2::uuid IS NULL OR s.id = $2)
ORDER BY s.tenant_id, s.created_at, s.id;

-- name: prune_sink_health
-- Retention of the health counters: minutes older than two hours (the read side wants one),
-- and the health of sinks deleted since. SKIP LOCKED: never waits on a completion.
WITH old_minutes AS (
    DELETE FROM sink_health_minutes m
    USING (SELECT event_sink_id, minute FROM sink_health_minutes
           WHERE minute < now() - interval '2 hours'
           FOR UPDATE SKIP LOCKED) AS o
    WHERE m.event_sink_id = o.event_sink_id AND m.minute = o.minute
    RETURNING 1
), gone AS (
    DELETE FROM sink_health h
    USING (SELECT event_sink_id FROM sink_health g
           WHERE NOT EXISTS (SELECT 1 FROM event_sinks s WHERE s.id = g.event_sink_id)
           FOR UPDATE SKIP LOCKED) AS o
    WHERE h.event_sink_id = o.event_sink_id
    RETURNING 1
)
SELECT (SELECT count(*) FROM old_minutes) AS minutes, (SELECT count(*) FROM gone) AS sinks;

-- name: tables_to_analyze
-- Of the tables $3, those whose planner statistics lag far behind them while they are young:
-- fewer than $1 rows at their last ANALYZE (-1: never analyzed), at least $2 live rows now,
-- and more than twice what the statistics say. Prepared statements keep a generic plan made from those
-- statistics; autovacuum's first ANALYZE can come a minute or more after a new database's
-- first events, and until then the claim and the completion scan whole tables. may_analyze:
-- whether this role owns the table (ANALYZE of another role's table only warns and skips it).
SELECT c.relname::text AS name, pg_has_role(c.relowner, 'USAGE') AS may_analyze
FROM pg_class c
JOIN pg_stat_user_tables s ON s.relid = c.oid
WHERE c.oid = ANY ($3::regclass[])
  AND c.reltuples < $1
  AND s.n_live_tup >= $2
  AND s.n_live_tup > 2 * greatest(c.reltuples, 0)
ORDER BY c.relname;
