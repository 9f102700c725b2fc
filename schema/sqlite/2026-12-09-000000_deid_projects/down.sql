DROP TABLE deid_map;
DROP TABLE deid_projects;
