-- Small named values the engine remembers between runs (e.g. which rule
-- pack version last planned every user).
CREATE TABLE settings (
    key         TEXT PRIMARY KEY,
    value       TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);
