-- Email changes Salesforce holds until the address's owner confirms them
-- (72 hours): not re-sent every cycle, not reported as drift meanwhile.
CREATE TABLE pending_emails (
    entra_id      TEXT PRIMARY KEY,
    email         TEXT NOT NULL,
    requested_at  TEXT NOT NULL
);
