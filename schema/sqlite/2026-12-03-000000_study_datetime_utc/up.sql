-- The study's date and time as an instant in UTC (YYYYMMDDHHMMSS.FFFFFF), for
-- QIDO's TimezoneOffsetFromUTC adjustment of date-time matching. Set only when
-- the study states its TimezoneOffsetFromUTC (0008,0201); studies stored before
-- this column are filled in by the server that applies this migration
-- (Index::fill_study_datetime_utc).
ALTER TABLE studies ADD COLUMN study_datetime_utc TEXT;
CREATE INDEX studies_study_datetime_utc ON studies (study_datetime_utc);
