DROP TABLE derived_blobs;
ALTER TABLE instances DROP COLUMN frame_offsets;
