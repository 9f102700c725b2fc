DROP TABLE export_items;
DROP TABLE export_jobs;
DROP TABLE deid_map;
DROP TABLE deid_projects;
