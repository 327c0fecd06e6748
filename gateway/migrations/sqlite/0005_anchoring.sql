-- Anchoring (the chain side of the log): where each batch landed, and where this log lives.
--
-- `log_batch` gains the anchoring account (the log's key in the registry) and the hash of
-- the anchoring block, so a proof names the batch by (contract, anchorer, number) and an
-- auditor can check that the block is still canonical.
ALTER TABLE log_batch ADD COLUMN anchorer TEXT;
ALTER TABLE log_batch ADD COLUMN block_hash TEXT;

-- The one chain, registry and account this database's log is anchored with, recorded when
-- the first anchor goes out (or the registry is deployed). A gateway configured with another
-- chain, registry or key refuses to start rather than begin a second, disjoint log.
CREATE TABLE log_chain (
    id          SMALLINT PRIMARY KEY CHECK (id = 1),
    chain_id    BIGINT NOT NULL,
    registry    TEXT NOT NULL,         -- 0x-prefixed, lowercase
    anchorer    TEXT NOT NULL,         -- 0x-prefixed, lowercase
    recorded_at BIGINT NOT NULL        -- milliseconds since the Unix epoch
);
