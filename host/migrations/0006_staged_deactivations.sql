-- Deactivations held back by the accidental-deletion threshold until an
-- operator approves or rejects them (`provisor approve` / `reject`).
CREATE TABLE staged_deactivations (
    entra_id    TEXT PRIMARY KEY,
    sf_id       TEXT,
    batch       TEXT NOT NULL,             -- the cycle that staged it
    reason      TEXT NOT NULL,             -- which limit it tripped
    status      TEXT NOT NULL,             -- 'pending' | 'approved' | 'rejected'
    staged_at   TEXT NOT NULL,
    decided_at  TEXT
);
CREATE INDEX staged_deactivations_batch ON staged_deactivations (batch);
