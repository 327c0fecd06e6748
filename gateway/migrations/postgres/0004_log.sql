-- The anchored log (PRODUCT.md, "The log format"): one leaf per stored resource version,
-- written in the version's own transaction, and the batches the leaves are sealed into.
--
-- A leaf is written unsequenced (`log_index` NULL). The sequencer (one at a time: an advisory
-- lock) gives committed unsequenced leaves the next contiguous indexes, in the order it finds
-- them (by `vkey`), and seals sequenced leaves into batches; the chain client submits sealed
-- batches in order and records where they landed.
CREATE TABLE log_leaf (
    vkey         BIGINT PRIMARY KEY REFERENCES resource_version (vkey),
    log_index    BIGINT UNIQUE,          -- NULL until sequenced; then 0, 1, 2, ... without gaps
    salt         BYTEA,                  -- 32 random bytes, never on chain; NULL once erased
    content_hash BYTEA NOT NULL,         -- SHA-256 of the RFC 8785 form of the version
    leaf_hash    BYTEA NOT NULL          -- SHA-256(0x00 || salt || content_hash)
);
CREATE INDEX log_leaf_unsequenced ON log_leaf (vkey) WHERE log_index IS NULL;

CREATE TABLE log_batch (
    number        BIGINT PRIMARY KEY,    -- 0, 1, 2, ...: the contract's batch number
    first_index   BIGINT NOT NULL UNIQUE,
    size          BIGINT NOT NULL CHECK (size > 0),
    root          BYTEA NOT NULL,        -- RFC 9162 root over the leaves first_index..+size
    state         TEXT NOT NULL CHECK (state IN ('sealed', 'submitted', 'confirmed')),
    sealed_at     BIGINT NOT NULL,       -- milliseconds since the Unix epoch
    chain_id      BIGINT,                -- where the batch was anchored: NULL until submitted
    contract      TEXT,
    tx_hash       TEXT,
    block_number  BIGINT,
    submitted_at  BIGINT,
    confirmed_at  BIGINT
);
CREATE INDEX log_batch_state ON log_batch (state, number);
