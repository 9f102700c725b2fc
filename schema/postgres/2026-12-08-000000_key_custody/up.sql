-- Key custody (issue 16). Every wrapped key names the master key that wrapped it
-- (`local`: keys.master_key / keys.master_key_file, or a keys.masters name), so
-- that several masters can be in use while `kastell keys rotate-master` moves the
-- keys from one to another, one row at a time.
ALTER TABLE tenant_keys ADD COLUMN master_key TEXT NOT NULL DEFAULT 'local';
ALTER TABLE audit_chain_key ADD COLUMN master_key TEXT NOT NULL DEFAULT 'local';
-- The chain key stays write-once except for its wrapping: a rotation of the master
-- key re-wraps it (what it seals from, `first_keyed_seq`, is bound into the
-- wrapping and cannot change).
DROP TRIGGER audit_chain_key_no_change ON audit_chain_key;
CREATE TRIGGER audit_chain_key_no_delete BEFORE DELETE ON audit_chain_key
    FOR EACH ROW EXECUTE FUNCTION audit_chain_key_write_once();
CREATE TRIGGER audit_chain_key_no_change BEFORE UPDATE OF id, first_keyed_seq, created_at ON audit_chain_key
    FOR EACH ROW EXECUTE FUNCTION audit_chain_key_write_once();

-- Master keys retired: nothing referenced them any more and, where Kastell can,
-- the key was destroyed at its holder. A retired name is never used again.
CREATE TABLE retired_masters (
    master_key TEXT PRIMARY KEY,
    retired_at TEXT NOT NULL,
    detail TEXT NOT NULL
);

-- Dual control of destructive key operations: a request filed by one
-- administrator, carried out when a different one approves it in time.
CREATE TABLE key_requests (
    request_id BIGSERIAL PRIMARY KEY,
    action TEXT NOT NULL CHECK (action IN ('shred-tenant', 'retire-master')),
    target TEXT NOT NULL,
    requested_by TEXT NOT NULL,
    requested_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'approved', 'cancelled')),
    approved_by TEXT,
    approved_at BIGINT
);
