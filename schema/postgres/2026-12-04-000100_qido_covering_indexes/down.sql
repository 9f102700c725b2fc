DROP INDEX studies_pk_date_time;
DROP INDEX studies_study_date_time_pk;
CREATE INDEX studies_study_date_time ON studies (study_date, study_time_norm);
