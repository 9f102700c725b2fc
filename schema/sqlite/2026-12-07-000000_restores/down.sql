ALTER TABLE studies DROP COLUMN last_retrieved_on;
DROP TABLE blob_restores;
