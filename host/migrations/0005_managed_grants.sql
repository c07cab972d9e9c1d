-- Every kind of access provisor grants (permission sets, permission set
-- groups, permission set licences, queue memberships), so that it may
-- revoke them later. Hand-made assignments are never listed here.
CREATE TABLE managed_grants (
    entra_id      TEXT NOT NULL,
    access        TEXT NOT NULL,            -- permission_set | permission_set_group | permission_set_license | queue
    name          TEXT NOT NULL,            -- API name of what is granted
    assignment_id TEXT NOT NULL,            -- Id of the assignment record
    granted_at    TEXT NOT NULL,
    PRIMARY KEY (entra_id, access, name)
);
INSERT INTO managed_grants (entra_id, access, name, assignment_id, granted_at)
    SELECT entra_id, 'permission_set', permission_set, assignment_id, assigned_at FROM managed_assignments;
DROP TABLE managed_assignments;
