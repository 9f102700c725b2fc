DROP TABLE key_requests;
DROP TABLE retired_masters;
DROP TRIGGER audit_chain_key_no_update;
CREATE TRIGGER audit_chain_key_no_update BEFORE UPDATE ON audit_chain_key
BEGIN
    SELECT RAISE(ABORT, 'audit_chain_key is write-once');
END;
ALTER TABLE audit_chain_key DROP COLUMN master_key;
ALTER TABLE tenant_keys DROP COLUMN master_key;
