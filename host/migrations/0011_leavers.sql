-- Leavers provisor froze, kept until they are deactivated: a frozen but
-- active user still holds a licence seat, and `provisor status` lists
-- them. When Salesforce refuses (or provisor foresees it refusing) the
-- deactivation, the blocker is kept here with when to try again.
CREATE TABLE leavers (
    entra_id        TEXT PRIMARY KEY,
    sf_id           TEXT NOT NULL,
    frozen_at       TEXT NOT NULL,
    deactivated_at  TEXT,
    blocker_kind    TEXT,
    blocker_message TEXT,
    blocker_fix     TEXT,
    blocker_detail  TEXT,                  -- JSON (e.g. the users whose hierarchy field names the leaver)
    org_config      INTEGER NOT NULL DEFAULT 0,
    tries           INTEGER NOT NULL DEFAULT 0,
    blocked_since   TEXT,
    next_try        TEXT,                  -- NULL: at the next cycle
    sessions_ended_at TEXT                 -- NULL: sessions and tokens still to end
);

-- Seats and assignments released after a deactivation, for the seats-freed
-- report: the user licence, and each permission set licence provisor
-- managed.
CREATE TABLE released_seats (
    entra_id     TEXT NOT NULL,
    sf_id        TEXT NOT NULL,
    kind         TEXT NOT NULL,            -- user_licence | permission_set_license
    licence      TEXT NOT NULL,
    released_at  TEXT NOT NULL
);
CREATE INDEX released_seats_at ON released_seats (released_at);

-- Users already inactive in Salesforce when provisor took them over (a
-- leaver before provisor managed it): their open records are handed over
-- by the pack's on-leave; pending until none is left with them.
CREATE TABLE handovers (
    entra_id   TEXT PRIMARY KEY,
    sf_id      TEXT NOT NULL,
    pending    INTEGER NOT NULL,
    since      TEXT NOT NULL,
    done_at    TEXT
);
