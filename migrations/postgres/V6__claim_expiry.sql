-- When a delivery's claim runs out: microseconds since the Unix epoch, by the database's
-- clock. A claim lasts longer than one delivery attempt may take; its holder gives the
-- attempt up once the claim may have run out by its own clock, and no other attempt (a new
-- leader's after a failover) claims the delivery before then, so a leader that stalled
-- between its claim and its send cannot send what its successor sends. NULL on a claimed
-- row: claimed before this column existed, run out.
ALTER TABLE hartslag_outbox ADD COLUMN claim_expires bigint;
