-- The audit trail: one row per audited event (store, search, retrieve, delete, key
-- operation, login failure, refused access), append-only and hash-chained.
--
-- `seq` is assigned by the writer, never by the database: it is gap-free (1, 2, 3,
-- ...) so that a deleted row shows as a gap. Writers serialise on
-- pg_advisory_xact_lock(0x4B41_5544_4954) ("KAUDIT") and read the head inside
-- that transaction, so several servers sharing this database extend one chain.
-- `hash` is the hex SHA-256 of `prev_hash` followed by the canonical encoding of
-- the row (every column but the two hashes, see src/audit/chain.rs); `prev_hash`
-- is the previous row's `hash`, 64 zeros for seq 1. `kastell audit verify` walks
-- the chain.
--
-- `at` is RFC 3339 UTC with microseconds, so text order is time order. `detail`
-- is short text for operators and never holds patient names or IDs; UIDs sit in
-- their own columns (`instance_uids` space-separated).
CREATE TABLE audit_events (
    seq BIGINT PRIMARY KEY CHECK (seq >= 1),
    at TEXT NOT NULL,
    actor TEXT NOT NULL,
    actor_kind TEXT NOT NULL,
    client_address TEXT,
    tenant TEXT NOT NULL,
    action TEXT NOT NULL,
    outcome TEXT NOT NULL,
    status BIGINT,
    study_uid TEXT,
    series_uid TEXT,
    instance_uids TEXT,
    detail TEXT,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
-- `kastell audit export --since`.
CREATE INDEX audit_events_at ON audit_events (at);

-- Append-only: Kastell never updates, deletes or truncates, and the database
-- refuses to. This stops mistakes, not an attacker who can drop the triggers;
-- the hash chain (and an anchor of its head kept elsewhere) is what detects that.
CREATE FUNCTION audit_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_events is append-only (% refused)', TG_OP;
END
$$;
CREATE TRIGGER audit_events_no_change BEFORE UPDATE OR DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_events_append_only();
CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION audit_events_append_only();
