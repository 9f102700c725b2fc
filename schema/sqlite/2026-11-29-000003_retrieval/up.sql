-- Where each frame of encapsulated pixel data sits in the blob, found while the
-- instance streamed in (STOW): space-separated offsets of each frame's first item
-- header, then the offset of the sequence delimiter. Frame n spans
-- [offset n, offset n+1). NULL for native pixel data (frames are computed from
-- Rows x Columns) and for instances stored before this column existed.
ALTER TABLE instances ADD COLUMN frame_offsets TEXT;

-- Objects derived from stored instances and kept encrypted in the blob store:
-- per-series metadata JSON and thumbnails. A row is valid while source_etag equals
-- the etag computed from the current instances; a stale row is replaced (and its
-- blob removed) on the next request, and rows of deleted UIDs go with them.
CREATE TABLE derived_blobs (
    scope_uid TEXT NOT NULL,
    kind TEXT NOT NULL,
    variant TEXT NOT NULL,
    source_etag TEXT NOT NULL,
    blob_key TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (scope_uid, kind, variant)
);
