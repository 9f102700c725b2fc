DROP TABLE key_events;
DROP TABLE tenant_keys;
