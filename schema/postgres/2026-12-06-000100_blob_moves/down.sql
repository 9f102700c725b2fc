DROP TABLE blob_moves;
