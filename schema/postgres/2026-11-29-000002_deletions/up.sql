-- UIDs of studies, series and instances deleted through DICOMweb, so retrieval can
-- answer 410 Gone rather than 404 (PS3.18 §8.5). Storing the UID again removes it.
CREATE TABLE deleted_uids (
    uid TEXT PRIMARY KEY,
    level TEXT NOT NULL CHECK (level IN ('study', 'series', 'instance')),
    deleted_at TEXT NOT NULL
);
