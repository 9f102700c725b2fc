-- Issue 15: what keeps a study from being deleted before its time.
--
-- Retention itself is not stored: a study's keep-until date is computed from
-- the configured rules ([lifecycle.retention]) and the study's own attributes
-- (received date, StudyDate, modalities, SOP classes, the patient's age at the
-- study) whenever a deletion is weighed, so rules apply to every study, old or
-- new. What is stored is what people decided about single studies and patients.

-- A legal hold on one study, or on every study of one patient (PatientID, with
-- its issuer when given). Active while lifted_at is NULL; lifted holds stay as
-- the record of what was held, by whom and why.
CREATE TABLE legal_holds (
    hold_id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL CHECK (kind IN ('study', 'patient')),
    -- The Study Instance UID, or the PatientID.
    target TEXT NOT NULL,
    issuer_of_patient_id TEXT,
    reason TEXT NOT NULL,
    placed_by TEXT NOT NULL,
    placed_at TEXT NOT NULL,
    lifted_by TEXT,
    lifted_at TEXT,
    lift_reason TEXT
);
CREATE INDEX legal_holds_target ON legal_holds (target);

-- A study released from its retention period before it ended: an audited
-- override with its stated reason. A legal hold still blocks deletion.
CREATE TABLE retention_releases (
    study_instance_uid TEXT PRIMARY KEY,
    released_by TEXT NOT NULL,
    released_at TEXT NOT NULL,
    reason TEXT NOT NULL
);
