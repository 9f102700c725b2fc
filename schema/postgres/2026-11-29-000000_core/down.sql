DROP TABLE instances;
DROP TABLE series_requests;
DROP TABLE series;
DROP TABLE studies;
