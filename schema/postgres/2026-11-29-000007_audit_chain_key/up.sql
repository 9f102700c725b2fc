-- The key that seals the audit chain (HMAC-SHA256 over each row and the previous
-- row's tag), wrapped by the master key provider like the tenant keys: someone who
-- can write this database but does not hold the master key cannot recompute the
-- chain after editing, inserting or deleting rows. One row, made when the first
-- Kastell that seals with it starts. `first_keyed_seq` is the first row it seals:
-- rows before it were written by an earlier Kastell, hash-chained with SHA-256
-- only. It is bound into the wrapping, so changing it makes the key unreadable.
CREATE TABLE audit_chain_key (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    wrapped_key BYTEA NOT NULL,
    first_keyed_seq BIGINT NOT NULL CHECK (first_keyed_seq >= 1),
    created_at TEXT NOT NULL
);
CREATE FUNCTION audit_chain_key_write_once() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_chain_key is write-once (% refused)', TG_OP;
END
$$;
CREATE TRIGGER audit_chain_key_no_change BEFORE UPDATE OR DELETE ON audit_chain_key
    FOR EACH ROW EXECUTE FUNCTION audit_chain_key_write_once();
CREATE TRIGGER audit_chain_key_no_truncate BEFORE TRUNCATE ON audit_chain_key
    FOR EACH STATEMENT EXECUTE FUNCTION audit_chain_key_write_once();
