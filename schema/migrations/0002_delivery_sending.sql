-- A delivery being carried out is 'sending' until its lease (next_attempt_at)
-- ends; `worker deliveries retry` leaves such deliveries alone.
ALTER TABLE deliveries DROP CONSTRAINT deliveries_status_check;
ALTER TABLE deliveries ADD CONSTRAINT deliveries_status_check
    CHECK (status IN ('pending', 'sending', 'sent', 'failed', 'dead', 'skipped'));
DROP INDEX deliveries_due;
CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE status IN ('pending', 'failed', 'sending');
