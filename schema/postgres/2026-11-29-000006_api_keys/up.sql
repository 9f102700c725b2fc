-- Static API keys for modalities and scripts. Only the SHA-256 of the key text is
-- kept (hex): the key itself is shown once when it is made and never stored.
-- `permissions` is a comma-separated list of read, write, delete, admin or *;
-- `tenant` is a tenant name or * (every tenant). A revoked key keeps its row
-- (`revoked_at` set) so that `kastell apikeys list` still accounts for it.
CREATE TABLE api_keys (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name TEXT NOT NULL,
    tenant TEXT NOT NULL,
    permissions TEXT NOT NULL,
    key_hash TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL,
    revoked_at TEXT
);
