-- provisor state. Portable SQL (SQLite now, PostgreSQL later): TEXT ids,
-- BIGINT counters, timestamps as RFC 3339 text.

-- Delta links and in-round checkpoints per Graph resource.
CREATE TABLE sync_state (
    resource    TEXT PRIMARY KEY,          -- 'users' | 'groups'
    delta_link  TEXT,                      -- last complete round's link
    next_link   TEXT,                      -- checkpoint inside a round
    updated_at  TEXT NOT NULL
);

-- Mirror of Entra users as last read, and the work still owed for them.
CREATE TABLE entra_users (
    id          TEXT PRIMARY KEY,
    data        TEXT NOT NULL,             -- EntraUser as JSON
    removed     TEXT,                      -- NULL | 'softDeleted' | 'hardDeleted'
    dirty       INTEGER NOT NULL DEFAULT 1,
    attempts    INTEGER NOT NULL DEFAULT 0,
    last_error  TEXT,
    request_id  TEXT,                      -- Graph request-id of the last change
    updated_at  TEXT NOT NULL
);
CREATE INDEX entra_users_dirty ON entra_users (dirty);

CREATE TABLE entra_groups (
    id            TEXT PRIMARY KEY,
    display_name  TEXT,
    removed       INTEGER NOT NULL DEFAULT 0,
    updated_at    TEXT NOT NULL
);

CREATE TABLE memberships (
    group_id   TEXT NOT NULL,
    member_id  TEXT NOT NULL,
    PRIMARY KEY (group_id, member_id)
);
CREATE INDEX memberships_member ON memberships (member_id);

-- Confirmed Entra objectId <-> Salesforce User Id.
CREATE TABLE links (
    entra_id    TEXT PRIMARY KEY,
    sf_id       TEXT NOT NULL UNIQUE,
    matched_by  TEXT NOT NULL,             -- 'created' | 'FederationIdentifier' | 'Username'
    linked_at   TEXT NOT NULL
);

-- Durable outbox: every action is journaled before it is sent.
CREATE TABLE outbox (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    cycle       TEXT NOT NULL,
    entra_id    TEXT NOT NULL,
    kind        TEXT NOT NULL,
    payload     TEXT NOT NULL,             -- the Action as JSON
    status      TEXT NOT NULL,             -- 'pending' | 'done' | 'failed' | 'unknown'
    result      TEXT,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);
CREATE INDEX outbox_status ON outbox (status);

-- Users whose actions failed too often, with the last error.
CREATE TABLE dead_letters (
    entra_id    TEXT PRIMARY KEY,
    reason      TEXT NOT NULL,
    attempts    INTEGER NOT NULL,
    parked_at   TEXT NOT NULL
);

-- Append-only, hash-chained audit trail.
CREATE TABLE audit (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    at         TEXT NOT NULL,
    cycle      TEXT NOT NULL,
    event      TEXT NOT NULL,              -- e.g. 'user.created'
    entra_id   TEXT,
    sf_id      TEXT,
    detail     TEXT NOT NULL,              -- JSON
    prev_hash  TEXT NOT NULL,
    hash       TEXT NOT NULL
);
