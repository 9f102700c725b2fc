DROP TABLE deleted_uids;
