-- Each instance's DICOM JSON metadata (what WADO-RS .../metadata returns for it,
-- bulk values as BulkDataURIs under a placeholder base URL), written at STOW,
-- deflated and sealed under the tenant's key in the blob format
-- (schema/BLOB_FORMAT.md, "Records"): a series' metadata is then one query,
-- not a ranged read of every instance's blob. A row is a copy, never the only
-- one: instances without it (stored before this table, with elements after
-- Pixel Data, or with the copy turned off) are read from their blob.
CREATE TABLE instance_metadata (
    instance_fk BIGINT PRIMARY KEY REFERENCES instances (instance_pk) ON DELETE CASCADE,
    sealed BYTEA NOT NULL
);
