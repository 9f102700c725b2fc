-- De-identification projects (issue 17). A project is a profile (the options of
-- PS3.15 Annex E and the private attributes it keeps) and a secret that keys its
-- UID mapping, pseudonyms and date offsets. The secret is stored only wrapped by
-- the tenant's key (version `key_version`), like a data key: shredding the
-- tenant makes it unreadable, rotating the tenant key re-wraps it.
CREATE TABLE deid_projects (
    name TEXT PRIMARY KEY,
    key_version BIGINT NOT NULL,
    wrapped_secret BYTEA NOT NULL,
    options TEXT NOT NULL,
    safe_private TEXT NOT NULL,
    -- Regions blanked in images that may carry burned-in text (x,y,w,h;...).
    blank_regions TEXT NOT NULL,
    -- 'audited': the de-identified UIDs and pseudonyms handed out are kept
    -- (deid_map) and can be looked up by an administrator, each lookup audited;
    -- 'impossible': nothing is kept and no lookup exists.
    reidentification TEXT NOT NULL CHECK (reidentification IN ('audited', 'impossible')),
    -- The project callers with only the research permission are served through
    -- (at most one; an 'audited' one: research retrieval finds the originals of
    -- the UIDs it handed out through deid_map).
    research BIGINT NOT NULL DEFAULT 0 CHECK (research IN (0, 1)),
    created_at TEXT NOT NULL,
    created_by TEXT NOT NULL,
    CHECK (research = 0 OR reidentification = 'audited')
);
CREATE UNIQUE INDEX deid_projects_one_research ON deid_projects (research) WHERE research = 1;

-- What a project's de-identified identifiers stand for: a UID handed out (study,
-- series, instance: so that research retrieval by it finds the original) or a
-- pseudonym (patient: 'audited' projects only).
CREATE TABLE deid_map (
    project TEXT NOT NULL,
    mapped TEXT NOT NULL,
    original TEXT NOT NULL,
    level TEXT NOT NULL CHECK (level IN ('patient', 'study', 'series', 'instance', 'other')),
    PRIMARY KEY (project, mapped)
);

-- De-identified exports (kastell export): a job, the selection it resolved to
-- (one row per instance, in order) and how far it got, so that an interrupted
-- export resumes where it stopped and its manifest says what went and what was
-- excluded, and why.
CREATE TABLE export_jobs (
    job_id BIGSERIAL PRIMARY KEY,
    project TEXT NOT NULL,
    target TEXT NOT NULL,
    selection TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('running', 'done')),
    created_at TEXT NOT NULL,
    created_by TEXT NOT NULL,
    finished_at TEXT
);
CREATE TABLE export_items (
    job_id BIGINT NOT NULL,
    position BIGINT NOT NULL,
    study_instance_uid TEXT NOT NULL,
    series_instance_uid TEXT NOT NULL,
    sop_instance_uid TEXT NOT NULL,
    -- Where it goes in the file-set: DICOM/STnnnnnn/SEnnnnnn/IMnnnnnn.
    file_id TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'done', 'excluded', 'failed')),
    -- Why excluded or failed; for one done, the de-identified keys of its
    -- directory record (JSON).
    detail TEXT,
    PRIMARY KEY (job_id, position)
);
