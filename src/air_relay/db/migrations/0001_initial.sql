-- The outbox: sinks, events as received, one delivery per (event, sink), one attempt row per try.

CREATE TABLE event_sinks (
    id               uuid PRIMARY KEY,
    tenant_id        text        NOT NULL,
    name             text        NOT NULL,
    description      text        NOT NULL,
    sink_type        text        NOT NULL CHECK (sink_type IN ('Slack', 'Webhook', 'PagerDuty')),
    args             jsonb       NOT NULL,
    events           text[],
    organization_ids text[],
    active           boolean     NOT NULL DEFAULT true,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX event_sinks_tenant_idx ON event_sinks (tenant_id, created_at);

CREATE TABLE events (
    id              uuid PRIMARY KEY,
    tenant_id       text        NOT NULL,
    event_name      text        NOT NULL,
    -- jsonb keeps AIR's type (integer or string) for the audit log.
    organization_id jsonb       NOT NULL,
    -- The exact bytes AIR sent: Webhook sinks receive them unchanged.
    body            bytea       NOT NULL,
    received_at     timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX events_received_at_idx ON events (received_at);

CREATE TABLE deliveries (
    id              uuid PRIMARY KEY,
    event_id        uuid        NOT NULL REFERENCES events (id) ON DELETE CASCADE,
    -- No foreign key: a deleted sink must not erase its deliveries' history.
    event_sink_id   uuid        NOT NULL,
    tenant_id       text        NOT NULL,
    sink_type       text        NOT NULL,
    status          text        NOT NULL DEFAULT 'pending'
                                CHECK (status IN ('pending', 'delivered', 'dead')),
    -- Attempts made so far, and claims made so far (a claim runs up to attempts_per_claim).
    attempts        integer     NOT NULL DEFAULT 0,
    claims          integer     NOT NULL DEFAULT 0,
    -- For a pending row: when it is next due. While claimed, the end of the lease, so a
    -- lease left by a dead process simply becomes due again.
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    claim_token     uuid,
    claimed_by      text,
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- Exactly what the dispatcher claims: pending rows by due time.
CREATE INDEX deliveries_claimable_idx ON deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX deliveries_event_idx ON deliveries (event_id);

CREATE TABLE delivery_attempts (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    delivery_id     uuid        NOT NULL REFERENCES deliveries (id) ON DELETE CASCADE,
    tenant_id       text        NOT NULL,
    event_id        uuid        NOT NULL,
    event_name      text        NOT NULL,
    organization_id jsonb       NOT NULL,
    event_sink_id   uuid        NOT NULL,
    event_sink_type text        NOT NULL,
    attempt         integer     NOT NULL,
    outcome         text        NOT NULL CHECK (outcome IN ('success', 'failure')),
    status_code     integer,
    error           text,
    response_body   text,
    duration_ms     integer     NOT NULL,
    next_attempt_at timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now()
);

-- The audit log is read per tenant, newest first, by keyset on id.
CREATE INDEX delivery_attempts_tenant_idx ON delivery_attempts (tenant_id, id DESC);
CREATE INDEX delivery_attempts_delivery_idx ON delivery_attempts (delivery_id);
