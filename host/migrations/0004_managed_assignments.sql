-- Permission set assignments provisor made (so it may remove them later).
-- Assignments an admin made by hand are never listed here.
CREATE TABLE managed_assignments (
    entra_id        TEXT NOT NULL,
    permission_set  TEXT NOT NULL,          -- PermissionSet.Name
    assignment_id   TEXT NOT NULL,          -- PermissionSetAssignment.Id
    assigned_at     TEXT NOT NULL,
    PRIMARY KEY (entra_id, permission_set)
);
