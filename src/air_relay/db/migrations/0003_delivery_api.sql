-- Dead letters, retry and replay (GET /v1/delivery, POST .../retry, POST .../replay), the
-- record of those operator actions, and retention of finished deliveries.

-- The delivery listing: one tenant, newest first, keyset on (created_at, id). A replay's
-- window (tenant, created_at range) is found through it as well.
CREATE INDEX deliveries_tenant_idx ON deliveries (tenant_id, created_at DESC, id DESC);

-- Retention: finished deliveries by the time they finished; pending rows are never purged,
-- so they stay out of this index.
CREATE INDEX deliveries_finished_idx ON deliveries (updated_at)
    WHERE status IN ('delivered', 'dead');

-- Who requeued what, and when: written in the same statement as the requeue itself.
CREATE TABLE operator_actions (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    created_at timestamptz NOT NULL DEFAULT now(),
    tenant_id  text        NOT NULL,
    action     text        NOT NULL CHECK (action IN ('delivery_retry', 'sink_replay')),
    -- A fingerprint of the API key (first 12 hex digits of its SHA-256), never the key.
    actor      text        NOT NULL,
    target_id  uuid        NOT NULL,
    params     jsonb       NOT NULL,
    affected   integer     NOT NULL
);

CREATE INDEX operator_actions_tenant_idx ON operator_actions (tenant_id, id DESC);
