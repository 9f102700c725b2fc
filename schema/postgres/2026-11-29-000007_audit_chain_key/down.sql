DROP TABLE audit_chain_key;
DROP FUNCTION audit_chain_key_write_once();
