-- Dead letters: inspect one delivery, retry or dismiss many (POST /v1/delivery/retry,
-- POST /v1/delivery/dismiss).

-- A dismissed delivery is a dead one the operator has looked at and let go: it leaves the
-- dead list, keeps its row and its attempts, and is never sent again. The new check is added
-- NOT VALID, then validated; but this file runs in one transaction (db/migrate.py), so the
-- ACCESS EXCLUSIVE lock DROP/ADD CONSTRAINT take on deliveries is held through VALIDATE's scan
-- of the whole table, to the commit: deliveries is locked for a time proportional to its size
-- (docs/operations.md, Upgrade, says to upgrade in a quiet moment).
ALTER TABLE deliveries DROP CONSTRAINT deliveries_status_check;
ALTER TABLE deliveries ADD CONSTRAINT deliveries_status_check
    CHECK (status IN ('pending', 'delivered', 'dead', 'dismissed')) NOT VALID;
ALTER TABLE deliveries VALIDATE CONSTRAINT deliveries_status_check;

-- Retention purges dismissed deliveries like the other finished ones.
DROP INDEX deliveries_finished_idx;
CREATE INDEX deliveries_finished_idx ON deliveries (updated_at)
    WHERE status IN ('delivered', 'dead', 'dismissed');

-- The bulk actions are recorded too. They have no single target: target_id is the sink they
-- were filtered on, or NULL.
ALTER TABLE operator_actions DROP CONSTRAINT operator_actions_action_check;
ALTER TABLE operator_actions ADD CONSTRAINT operator_actions_action_check
    CHECK (action IN ('delivery_retry', 'sink_replay', 'deliveries_retry', 'deliveries_dismiss'))
    NOT VALID;
-- (As above: validated under the lock the ADD took, held to the commit.)
ALTER TABLE operator_actions VALIDATE CONSTRAINT operator_actions_action_check;
ALTER TABLE operator_actions ALTER COLUMN target_id DROP NOT NULL;

-- The dead letters of a tenant, oldest first: what a bulk retry or dismiss walks. Dead rows
-- are few beside delivered ones, so the index is small, and a tenant with millions of
-- delivered rows is not scanned through to find its dead ones.
CREATE INDEX deliveries_dead_idx ON deliveries (tenant_id, created_at, id) WHERE status = 'dead';
