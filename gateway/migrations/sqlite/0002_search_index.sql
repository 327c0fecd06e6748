-- Search index rows for the current version of each resource, written in the same
-- transaction as the resource. `param` is the search parameter code; `grp` groups the
-- components of one composite value (0 for plain parameters).
CREATE TABLE idx_string (
    rkey INTEGER NOT NULL REFERENCES resource (rkey), rtype TEXT NOT NULL,
    param TEXT NOT NULL, grp INTEGER NOT NULL,
    norm TEXT NOT NULL, exact TEXT NOT NULL
);
CREATE INDEX idx_string_value ON idx_string (rtype, param, norm);
CREATE INDEX idx_string_rkey ON idx_string (rkey);

CREATE TABLE idx_token (
    rkey INTEGER NOT NULL REFERENCES resource (rkey), rtype TEXT NOT NULL,
    param TEXT NOT NULL, grp INTEGER NOT NULL,
    system TEXT, code TEXT, text TEXT
);
CREATE INDEX idx_token_value ON idx_token (rtype, param, code, system);
CREATE INDEX idx_token_rkey ON idx_token (rkey);

CREATE TABLE idx_reference (
    rkey INTEGER NOT NULL REFERENCES resource (rkey), rtype TEXT NOT NULL,
    param TEXT NOT NULL, grp INTEGER NOT NULL,
    target_type TEXT, target_id TEXT, version TEXT, url TEXT
);
CREATE INDEX idx_reference_value ON idx_reference (rtype, param, target_id, target_type);
CREATE INDEX idx_reference_target ON idx_reference (target_type, target_id);
CREATE INDEX idx_reference_url ON idx_reference (rtype, param, url);
CREATE INDEX idx_reference_rkey ON idx_reference (rkey);

CREATE TABLE idx_date (
    rkey INTEGER NOT NULL REFERENCES resource (rkey), rtype TEXT NOT NULL,
    param TEXT NOT NULL, grp INTEGER NOT NULL,
    lo INTEGER NOT NULL, hi INTEGER NOT NULL   -- [lo, hi) in milliseconds since the epoch
);
CREATE INDEX idx_date_value ON idx_date (rtype, param, lo, hi);
CREATE INDEX idx_date_rkey ON idx_date (rkey);

CREATE TABLE idx_number (
    rkey INTEGER NOT NULL REFERENCES resource (rkey), rtype TEXT NOT NULL,
    param TEXT NOT NULL, grp INTEGER NOT NULL,
    value REAL NOT NULL, lo REAL NOT NULL, hi REAL NOT NULL
);
CREATE INDEX idx_number_value ON idx_number (rtype, param, value);
CREATE INDEX idx_number_rkey ON idx_number (rkey);

CREATE TABLE idx_quantity (
    rkey INTEGER NOT NULL REFERENCES resource (rkey), rtype TEXT NOT NULL,
    param TEXT NOT NULL, grp INTEGER NOT NULL,
    value REAL NOT NULL, lo REAL NOT NULL, hi REAL NOT NULL,
    system TEXT, code TEXT, unit TEXT
);
CREATE INDEX idx_quantity_value ON idx_quantity (rtype, param, value);
CREATE INDEX idx_quantity_rkey ON idx_quantity (rkey);

CREATE TABLE idx_uri (
    rkey INTEGER NOT NULL REFERENCES resource (rkey), rtype TEXT NOT NULL,
    param TEXT NOT NULL, grp INTEGER NOT NULL,
    value TEXT NOT NULL
);
CREATE INDEX idx_uri_value ON idx_uri (rtype, param, value);
CREATE INDEX idx_uri_rkey ON idx_uri (rkey);
