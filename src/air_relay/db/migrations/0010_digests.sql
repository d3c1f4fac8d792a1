-- Storm digests (the sink option ``digest``): while a window is open for a (sink, eventName,
-- organizationId), further deliveries of that pair are held, and go out together, once, as
-- one digest when the window closes (air_relay.delivery.digests holds the flow).

-- The option as the API took it: {"window_seconds": N, "max_listed": M}; NULL = off.
ALTER TABLE event_sinks ADD COLUMN digest jsonb;

-- A held delivery waits for its window's digest: never claimed itself, finished with it.
-- (The statuses of migration 7, dead letters, stay: 'dismissed'.) As in migration 7, this file
-- is one transaction, so the ACCESS EXCLUSIVE lock of DROP/ADD CONSTRAINT is
-- held through VALIDATE's scan of deliveries to the commit: NOT VALID does not shorten it.
ALTER TABLE deliveries DROP CONSTRAINT deliveries_status_check;
ALTER TABLE deliveries ADD CONSTRAINT deliveries_status_check
    CHECK (status IN ('pending', 'delivered', 'dead', 'dismissed', 'held')) NOT VALID;
ALTER TABLE deliveries VALIDATE CONSTRAINT deliveries_status_check;
-- The digest (window) a delivery went out in, or is held for; NULL for every other delivery.
ALTER TABLE deliveries ADD COLUMN digest_id uuid;
CREATE INDEX deliveries_digest_idx ON deliveries (digest_id) WHERE digest_id IS NOT NULL;

-- One window per (sink, eventName, organizationId) burst, opened by the delivery that went
-- out at once (opener_id). The first delivery held in it becomes its carrier: the pending
-- row, due at closes_at, whose claims send the digest through the usual retries. When the
-- carrier is first claimed the window is sealed: no delivery joins it after that, so its
-- members (deliveries.digest_id = id) are fixed and no member goes out in two digests.
CREATE TABLE digest_windows (
    id              uuid        PRIMARY KEY,
    event_sink_id   uuid        NOT NULL,
    tenant_id       text        NOT NULL,
    event_name      text        NOT NULL,
    -- organizationId as routing compares it (text), and as AIR sent it.
    org_text        text        NOT NULL,
    organization_id jsonb       NOT NULL,
    window_seconds  integer     NOT NULL,
    max_listed      integer     NOT NULL,
    opened_at       timestamptz NOT NULL,
    closes_at       timestamptz NOT NULL,
    opener_id       uuid        NOT NULL,
    carrier_id      uuid,
    sealed_at       timestamptz,
    member_count    integer,
    created_at      timestamptz NOT NULL DEFAULT now()
);

-- The open windows of a pair, found when one of its deliveries is routed.
CREATE INDEX digest_windows_pair_idx ON digest_windows (event_sink_id, event_name, org_text,
                                                        opened_at)
    WHERE sealed_at IS NULL;
CREATE INDEX digest_windows_opener_idx ON digest_windows (opener_id);
-- The audit log names the digest of a carrier's attempts through this.
CREATE UNIQUE INDEX digest_windows_carrier_idx ON digest_windows (carrier_id);
