-- Full resyncs (mark and sweep) and nested group membership.

-- Set while a full enumeration is running; cleared by its last page.
ALTER TABLE sync_state ADD COLUMN resync_round TEXT;
-- The resync round in which an object or membership was last listed.
ALTER TABLE entra_users ADD COLUMN seen_round TEXT;
ALTER TABLE entra_groups ADD COLUMN seen_round TEXT;
ALTER TABLE memberships ADD COLUMN seen_round TEXT;
-- 'user' or 'group' (nested groups are flattened when scope is computed).
ALTER TABLE memberships ADD COLUMN member_type TEXT NOT NULL DEFAULT 'user';
