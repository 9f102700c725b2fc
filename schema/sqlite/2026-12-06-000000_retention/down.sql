DROP TABLE retention_releases;
DROP INDEX legal_holds_target;
DROP TABLE legal_holds;
