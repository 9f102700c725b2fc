-- Issue 14: the tenant's change feed, the transactional outbox of its events.
-- Every create, replace and delete of an instance, and every "study stable",
-- is a row here, numbered 1, 2, 3… with no gap: the number comes from
-- change_feed_head, a single row updated in the same transaction as the change
-- itself, last in that transaction. The row lock this takes (PostgreSQL) makes
-- several Kastell processes on one database number their changes in commit
-- order, so a reader that saw N has missed nothing below N.
CREATE TABLE change_feed (
    seq INTEGER PRIMARY KEY,
    occurred_at TEXT NOT NULL,
    action TEXT NOT NULL,
    -- Empty for a change of the tenant itself (a key event).
    study_instance_uid TEXT,
    series_instance_uid TEXT,
    sop_instance_uid TEXT,
    sop_class_uid TEXT,
    -- What the action adds (JSON): a study-stable event's counts.
    detail TEXT
);
CREATE TABLE change_feed_head (
    singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
    last_seq INTEGER NOT NULL
);
INSERT INTO change_feed_head (singleton, last_seq) VALUES (1, 0);

-- Studies that received an instance and have not yet been announced stable:
-- when last_arrival_ms is older than the quiet time, one "study-stable" change
-- is written and the row deleted, in one transaction (a new instance puts the
-- row back: the study is open again).
CREATE TABLE studies_settling (
    study_instance_uid TEXT PRIMARY KEY,
    last_arrival_ms BIGINT NOT NULL
);
CREATE INDEX studies_settling_by_arrival ON studies_settling (last_arrival_ms);

-- Each event sink (the NATS publisher, each webhook subscription, the job
-- dispatcher) and the last change it delivered: the outbox's cursor. The lease
-- lets one process at a time deliver for a sink; another takes over when the
-- lease runs out.
CREATE TABLE event_sinks (
    name TEXT PRIMARY KEY,
    delivered_seq BIGINT NOT NULL,
    lease_owner TEXT,
    lease_until_ms BIGINT NOT NULL,
    last_error TEXT,
    updated_at TEXT NOT NULL
);

-- Changes a sink gave up on after its retries (a webhook that kept failing):
-- shown by `kastell events status`; the sink has moved past them.
CREATE TABLE event_dead_letters (
    sink TEXT NOT NULL,
    seq BIGINT NOT NULL,
    attempts INTEGER NOT NULL,
    last_error TEXT NOT NULL,
    failed_at TEXT NOT NULL,
    PRIMARY KEY (sink, seq)
);

-- Jobs the workers finished (precomputing a stable study's metadata and
-- thumbnails…), by the id of the change that asked for them: a job redelivered
-- after it was done is acknowledged without running again.
CREATE TABLE jobs_done (
    job_id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    finished_at TEXT NOT NULL
);
