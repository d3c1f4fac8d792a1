-- The sealed audit log: the rows of delivery_attempts are sealed, in batches of consecutive
-- ids, into a hash chain (air_relay.delivery.sealing holds the canonical form and the hash).

-- One seal per batch. A seal covers every audit row whose id lies in [first_id, last_id];
-- its hash is SHA-256 over its own header, the previous seal's hash and those rows in id
-- order. ids are the places in the chain (1, 2, 3 ...), never reused; a seal's first_id is
-- the previous seal's last_id + 1, so the ranges tile the ids without gaps or overlaps.
CREATE TABLE audit_seals (
    id        bigint      PRIMARY KEY CHECK (id > 0),
    sealed_at timestamptz NOT NULL,
    first_id  bigint      NOT NULL,
    last_id   bigint      NOT NULL,
    row_count integer     NOT NULL CHECK (row_count > 0),
    -- 64 lowercase hex digits; the first seal's prev_hash is 64 zeros.
    prev_hash text        NOT NULL,
    hash      text        NOT NULL,
    CHECK (first_id <= last_id)
);

-- Which seal covers an audit row (the audit log shows it as seal_id).
CREATE UNIQUE INDEX audit_seals_last_id_idx ON audit_seals (last_id);

-- Audit rows outlive their delivery: retention purges them by whole sealed batches, never one
-- delivery's rows at a time, so the cascade from deliveries goes. (Every attempt row carries
-- its tenant, event and sink, so it reads the same without its delivery.)
ALTER TABLE delivery_attempts DROP CONSTRAINT delivery_attempts_delivery_id_fkey;
