DROP TABLE key_requests;
DROP TABLE retired_masters;
DROP TRIGGER audit_chain_key_no_change ON audit_chain_key;
DROP TRIGGER audit_chain_key_no_delete ON audit_chain_key;
CREATE TRIGGER audit_chain_key_no_change BEFORE UPDATE OR DELETE ON audit_chain_key
    FOR EACH ROW EXECUTE FUNCTION audit_chain_key_write_once();
ALTER TABLE audit_chain_key DROP COLUMN master_key;
ALTER TABLE tenant_keys DROP COLUMN master_key;
