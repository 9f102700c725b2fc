DROP TABLE jobs_done;
DROP TABLE event_dead_letters;
DROP TABLE event_sinks;
DROP INDEX studies_settling_by_arrival;
DROP TABLE studies_settling;
DROP TABLE change_feed_head;
DROP TABLE change_feed;
