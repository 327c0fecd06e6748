-- The anchored log (PRODUCT.md, "The log format"): one leaf per stored resource version,
-- written in the version's own transaction, and the batches the leaves are sealed into.
--
-- A leaf is written unsequenced (`log_index` NULL). The sequencer (one at a time: an advisory
-- lock) gives committed unsequenced leaves the next contiguous indexes, in the order it finds
-- them (by `vkey`), and seals sequenced leaves into batches; the chain client submits sealed
-- batches in order and records where they landed.
CREATE TABLE log_leaf (
    vkey         INTEGER PRIMARY KEY REFERENCES resource_version (vkey),
    log_index    INTEGER UNIQUE,          -- NULL until sequenced; then 0, 1, 2, ... without gaps
    salt         BLOB,                  -- 32 random bytes, never on chain; NULL once erased
    content_hash BLOB NOT NULL,         -- SHA-256 of the RFC 8785 form of the version
    leaf_hash    BLOB NOT NULL          -- SHA-256(0x00 || salt || content_hash)
);
CREATE INDEX log_leaf_unsequenced ON log_leaf (vkey) WHERE log_index IS NULL;

CREATE TABLE log_batch (
    number        INTEGER PRIMARY KEY,    -- 0, 1, 2, ...: the contract's batch number
    first_index   INTEGER NOT NULL UNIQUE,
    size          INTEGER NOT NULL CHECK (size > 0),
    root          BLOB NOT NULL,        -- RFC 9162 root over the leaves first_index..+size
    state         TEXT NOT NULL CHECK (state IN ('sealed', 'submitted', 'confirmed')),
    sealed_at     INTEGER NOT NULL,       -- milliseconds since the Unix epoch
    chain_id      INTEGER,                -- where the batch was anchored: NULL until submitted
    contract      TEXT,
    tx_hash       TEXT,
    block_number  INTEGER,
    submitted_at  INTEGER,
    confirmed_at  INTEGER
);
CREATE INDEX log_batch_state ON log_batch (state, number);
