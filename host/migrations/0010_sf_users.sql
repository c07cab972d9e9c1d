-- The last known Salesforce state of managed users: the record as the last
-- plan read it, with what provisor then wrote successfully merged in.
CREATE TABLE sf_users (
    sf_id     TEXT PRIMARY KEY,
    entra_id  TEXT NOT NULL,
    data      TEXT NOT NULL,
    seen_at   TEXT NOT NULL
);
CREATE INDEX sf_users_entra ON sf_users (entra_id);
