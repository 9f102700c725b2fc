-- The tenants of this Kastell (hospitals or departments), kept in the control
-- index. The default tenant's data lives in the control index itself; every other
-- tenant has an index of its own (a SQLite file next to this one, or a PostgreSQL
-- schema), so no query can reach across tenants.
CREATE TABLE tenants (
    name TEXT PRIMARY KEY,
    display_name TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('active', 'disabled')),
    created_at TEXT NOT NULL
);
