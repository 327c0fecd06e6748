-- The search index tables lose their foreign key to resource, as idx_word never had one
-- (0003), like PostgreSQL's (see postgres/0025): nothing can dangle without it, since index
-- rows are written only in the transaction that writes their resource's version and a
-- resource row is never removed. SQLite cannot drop a constraint: each table is made again
-- without it and its rows copied.

CREATE TABLE idx_string_new (
    rkey INTEGER NOT NULL, rtype TEXT NOT NULL,
    param TEXT NOT NULL, grp INTEGER NOT NULL,
    norm TEXT NOT NULL, exact TEXT NOT NULL
);
INSERT INTO idx_string_new SELECT * FROM idx_string;
DROP TABLE idx_string;
ALTER TABLE idx_string_new RENAME TO idx_string;
CREATE INDEX idx_string_value ON idx_string (rtype, param, norm);
CREATE INDEX idx_string_rkey ON idx_string (rkey);

CREATE TABLE idx_token_new (
    rkey INTEGER NOT NULL, rtype TEXT NOT NULL,
    param TEXT NOT NULL, grp INTEGER NOT NULL,
    system TEXT, code TEXT, text TEXT
);
INSERT INTO idx_token_new SELECT * FROM idx_token;
DROP TABLE idx_token;
ALTER TABLE idx_token_new RENAME TO idx_token;
CREATE INDEX idx_token_value ON idx_token (rtype, param, code, system);
CREATE INDEX idx_token_rkey ON idx_token (rkey);

CREATE TABLE idx_reference_new (
    rkey INTEGER NOT NULL, rtype TEXT NOT NULL,
    param TEXT NOT NULL, grp INTEGER NOT NULL,
    target_type TEXT, target_id TEXT, version TEXT, url TEXT
);
INSERT INTO idx_reference_new SELECT * FROM idx_reference;
DROP TABLE idx_reference;
ALTER TABLE idx_reference_new RENAME TO idx_reference;
CREATE INDEX idx_reference_value ON idx_reference (rtype, param, target_id, target_type);
CREATE INDEX idx_reference_target ON idx_reference (target_type, target_id);
CREATE INDEX idx_reference_url ON idx_reference (rtype, param, url);
CREATE INDEX idx_reference_rkey ON idx_reference (rkey);

CREATE TABLE idx_date_new (
    rkey INTEGER NOT NULL, rtype TEXT NOT NULL,
    param TEXT NOT NULL, grp INTEGER NOT NULL,
    lo INTEGER NOT NULL, hi INTEGER NOT NULL   -- [lo, hi) in milliseconds since the epoch
);
INSERT INTO idx_date_new SELECT * FROM idx_date;
DROP TABLE idx_date;
ALTER TABLE idx_date_new RENAME TO idx_date;
CREATE INDEX idx_date_value ON idx_date (rtype, param, lo, hi);
CREATE INDEX idx_date_rkey ON idx_date (rkey);

CREATE TABLE idx_number_new (
    rkey INTEGER NOT NULL, rtype TEXT NOT NULL,
    param TEXT NOT NULL, grp INTEGER NOT NULL,
    value REAL NOT NULL, lo REAL NOT NULL, hi REAL NOT NULL
);
INSERT INTO idx_number_new SELECT * FROM idx_number;
DROP TABLE idx_number;
ALTER TABLE idx_number_new RENAME TO idx_number;
CREATE INDEX idx_number_value ON idx_number (rtype, param, value);
CREATE INDEX idx_number_rkey ON idx_number (rkey);

CREATE TABLE idx_quantity_new (
    rkey INTEGER NOT NULL, rtype TEXT NOT NULL,
    param TEXT NOT NULL, grp INTEGER NOT NULL,
    value REAL NOT NULL, lo REAL NOT NULL, hi REAL NOT NULL,
    system TEXT, code TEXT, unit TEXT
);
INSERT INTO idx_quantity_new SELECT * FROM idx_quantity;
DROP TABLE idx_quantity;
ALTER TABLE idx_quantity_new RENAME TO idx_quantity;
CREATE INDEX idx_quantity_value ON idx_quantity (rtype, param, value);
CREATE INDEX idx_quantity_rkey ON idx_quantity (rkey);

CREATE TABLE idx_uri_new (
    rkey INTEGER NOT NULL, rtype TEXT NOT NULL,
    param TEXT NOT NULL, grp INTEGER NOT NULL,
    value TEXT NOT NULL
);
INSERT INTO idx_uri_new SELECT * FROM idx_uri;
DROP TABLE idx_uri;
ALTER TABLE idx_uri_new RENAME TO idx_uri;
CREATE INDEX idx_uri_value ON idx_uri (rtype, param, value);
CREATE INDEX idx_uri_rkey ON idx_uri (rkey);
