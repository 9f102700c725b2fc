DROP TABLE instance_metadata;
