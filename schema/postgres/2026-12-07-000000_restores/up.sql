-- Issue 15: restores from offline tiers (S3 Glacier Flexible Retrieval, Deep
-- Archive), one row per object asked for: 'requested' until the store says the
-- restore is under way, 'pending' while it is, 'ready' once the object can be
-- read (until ready_until_ms, when the restored copy expires). Retrieval reads
-- these rows, never the store, to decide between serving and 503; the server's
-- poll moves rows on. Rows of objects no instance references any more (moved
-- back or deleted) are removed by the poll.
CREATE TABLE blob_restores (
    blob_key TEXT PRIMARY KEY,
    study_instance_uid TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('requested', 'pending', 'ready')),
    requested_at_ms BIGINT NOT NULL,
    ready_until_ms BIGINT,
    checked_at_ms BIGINT NOT NULL
);
CREATE INDEX blob_restores_by_state ON blob_restores (state, checked_at_ms);

-- The day a study was last retrieved (YYYYMMDD), for move rules on time since
-- the last retrieval; written at most once a day per study.
ALTER TABLE studies ADD COLUMN last_retrieved_on TEXT;
