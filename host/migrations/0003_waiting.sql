-- Users held back by something outside provisor's control (no licence seat
-- left): they stay dirty, spend no attempts, and are retried every cycle.
ALTER TABLE entra_users ADD COLUMN waiting TEXT;
