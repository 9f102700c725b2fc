-- Tenant key-encryption keys, wrapped by the master key. The unwrapped keys only
-- ever exist in the server's memory. States: `active` (encrypts new objects),
-- `previous` (superseded by a rotation, still opens older objects), `retired` (one
-- version destroyed once no object needed it), `shredded` (every version destroyed:
-- the tenant's data can never be read again). Destroying sets `wrapped_key` NULL.
CREATE TABLE tenant_keys (
    tenant TEXT NOT NULL,
    version BIGINT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('active', 'previous', 'retired', 'shredded')),
    wrapped_key BYTEA,
    created_at TEXT NOT NULL,
    changed_at TEXT NOT NULL,
    PRIMARY KEY (tenant, version)
);
-- At most one active key per tenant.
CREATE UNIQUE INDEX tenant_keys_one_active ON tenant_keys (tenant) WHERE state = 'active';

-- Key operations (creation, rotation, shredding), append-only. Folded into the
-- hash-chained audit trail when that lands.
CREATE TABLE key_events (
    event_pk BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at TEXT NOT NULL,
    tenant TEXT NOT NULL,
    action TEXT NOT NULL,
    key_version BIGINT,
    detail TEXT
);
