DROP INDEX studies_study_datetime_utc;
ALTER TABLE studies DROP COLUMN study_datetime_utc;
