-- The study / series / instance index. Patient attributes live at study level.
-- Column names are unique across the three tables so joined rows read back by name.
-- Person names keep their original value plus a folded copy (`*_norm`: upper case,
-- no accents) for case-insensitive matching and a word list (`*_words`) for fuzzy
-- matching. Times keep the original plus `*_norm` (HHMMSS.FFFFFF) so they compare
-- by meaning.

CREATE TABLE studies (
    study_pk BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    study_instance_uid TEXT NOT NULL UNIQUE,
    patient_name TEXT,
    patient_name_norm TEXT,
    patient_name_words TEXT,
    patient_id TEXT,
    issuer_of_patient_id TEXT,
    patient_birth_date TEXT,
    patient_sex TEXT,
    study_date TEXT,
    study_time TEXT,
    study_time_norm TEXT,
    accession_number TEXT,
    study_id TEXT,
    study_description TEXT,
    referring_physician_name TEXT,
    referring_physician_name_norm TEXT,
    referring_physician_name_words TEXT,
    institution_name TEXT,
    timezone_offset_from_utc TEXT,
    modalities_in_study TEXT,
    sop_classes_in_study TEXT,
    number_of_study_related_series BIGINT NOT NULL DEFAULT 0,
    number_of_study_related_instances BIGINT NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX studies_patient_id ON studies (patient_id);
-- text_pattern_ops so that prefix wildcards (LIKE 'DOE%') use the index whatever
-- the database collation.
CREATE INDEX studies_patient_name_norm ON studies (patient_name_norm text_pattern_ops);
CREATE INDEX studies_patient_id_pattern ON studies (patient_id text_pattern_ops);
CREATE INDEX studies_accession_number_pattern ON studies (accession_number text_pattern_ops);
CREATE INDEX studies_study_date_time ON studies (study_date, study_time_norm);
CREATE INDEX studies_accession_number ON studies (accession_number);

CREATE TABLE series (
    series_pk BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    study_fk BIGINT NOT NULL REFERENCES studies (study_pk) ON DELETE CASCADE,
    series_instance_uid TEXT NOT NULL UNIQUE,
    modality TEXT,
    series_number BIGINT,
    series_description TEXT,
    series_date TEXT,
    series_time TEXT,
    series_time_norm TEXT,
    body_part_examined TEXT,
    performed_procedure_step_start_date TEXT,
    performed_procedure_step_start_time TEXT,
    performed_procedure_step_start_time_norm TEXT,
    -- DICOM JSON of the sequence items, returned as stored.
    request_attributes_sequence TEXT,
    number_of_series_related_instances BIGINT NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX series_study_fk ON series (study_fk, series_pk);
CREATE INDEX series_modality ON series (modality, study_fk);

-- One row per Request Attributes Sequence item, for sequence matching.
CREATE TABLE series_requests (
    series_fk BIGINT NOT NULL REFERENCES series (series_pk) ON DELETE CASCADE,
    scheduled_procedure_step_id TEXT,
    requested_procedure_id TEXT
);
CREATE INDEX series_requests_series_fk ON series_requests (series_fk);

CREATE TABLE instances (
    instance_pk BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    series_fk BIGINT NOT NULL REFERENCES series (series_pk) ON DELETE CASCADE,
    sop_instance_uid TEXT NOT NULL UNIQUE,
    sop_class_uid TEXT NOT NULL,
    instance_number BIGINT,
    image_rows BIGINT,
    image_columns BIGINT,
    bits_allocated BIGINT,
    number_of_frames BIGINT,
    content_date TEXT,
    content_time TEXT,
    content_time_norm TEXT,
    transfer_syntax_uid TEXT NOT NULL,
    -- Where the object is, and where its parts are inside it.
    blob_key TEXT NOT NULL UNIQUE,
    blob_size BIGINT NOT NULL,
    content_sha256 TEXT NOT NULL,
    header_length BIGINT NOT NULL,
    pixel_data_offset BIGINT,
    pixel_data_length BIGINT,
    created_at TEXT NOT NULL
);
CREATE INDEX instances_series_fk ON instances (series_fk, instance_pk);
CREATE INDEX instances_sop_class_uid ON instances (sop_class_uid);
