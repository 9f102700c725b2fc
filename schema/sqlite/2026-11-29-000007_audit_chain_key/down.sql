DROP TABLE audit_chain_key;
