-- Users whose match to Salesforce is ambiguous (several candidates, keys
-- that disagree, an account linked elsewhere, a rehire): nothing is
-- written for them until an operator links or rejects (`provisor review`).
CREATE TABLE reviews (
    entra_id    TEXT PRIMARY KEY,
    reason      TEXT NOT NULL,
    candidates  TEXT NOT NULL,             -- JSON array of Salesforce User Ids
    status      TEXT NOT NULL,             -- 'open' | 'linked' | 'rejected'
    sf_id       TEXT,                      -- the account linked by the operator
    created_at  TEXT NOT NULL,
    decided_at  TEXT
);
