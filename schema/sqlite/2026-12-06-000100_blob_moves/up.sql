-- Issue 15: objects being moved between stores by a lifecycle pass, one row per
-- object, the journal that makes a move crash-safe and claimed by one process:
-- written before the copy ('copying'), switched together with the instance's
-- blob_key in one transaction ('switched'), deleted once the old object is gone.
-- A process that dies leaves its row; when its lease has run out another
-- process takes the row over and finishes ('switched': delete the old object)
-- or undoes ('copying': delete the copy) what it left.
CREATE TABLE blob_moves (
    from_key TEXT PRIMARY KEY,
    to_key TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('copying', 'switched')),
    owner TEXT NOT NULL,
    lease_until_ms BIGINT NOT NULL
);
