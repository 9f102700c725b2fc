-- The key that seals the audit chain (HMAC-SHA256 over each row and the previous
-- row's tag), wrapped by the master key provider like the tenant keys: someone who
-- can write this database but does not hold the master key cannot recompute the
-- chain after editing, inserting or deleting rows. One row, made when the first
-- Kastell that seals with it starts. `first_keyed_seq` is the first row it seals:
-- rows before it were written by an earlier Kastell, hash-chained with SHA-256
-- only. It is bound into the wrapping, so changing it makes the key unreadable.
CREATE TABLE audit_chain_key (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    wrapped_key BLOB NOT NULL,
    first_keyed_seq BIGINT NOT NULL CHECK (first_keyed_seq >= 1),
    created_at TEXT NOT NULL
);
CREATE TRIGGER audit_chain_key_no_update BEFORE UPDATE ON audit_chain_key
BEGIN
    SELECT RAISE(ABORT, 'audit_chain_key is write-once');
END;
CREATE TRIGGER audit_chain_key_no_delete BEFORE DELETE ON audit_chain_key
BEGIN
    SELECT RAISE(ABORT, 'audit_chain_key is write-once');
END;
