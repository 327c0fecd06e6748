-- Erasure (crypto-shredding, PRODUCT.md promise 8): `fhir-gateway erase` removes a record's
-- content and the salts of its log leaves; the leaf hashes stay, so every batch keeps its
-- root and every other version's proof still verifies.
--
-- A version whose body was erased keeps its row (history shows that it existed) and records
-- when it was erased. A deletion tombstone (body NULL, erased_at NULL) is never erased.
ALTER TABLE resource_version ADD COLUMN erased_at INTEGER; -- milliseconds since the Unix epoch

-- An erased leaf loses its content hash with its salt: without the salt the content hash
-- proves nothing about the leaf, and it is an unsalted hash of the content that would confirm
-- a guess of it. Only an erased leaf (no salt) may lack it. SQLite cannot drop a NOT NULL:
-- the table is rebuilt (nothing references log_leaf).
CREATE TABLE log_leaf_0006 (
    vkey         INTEGER PRIMARY KEY REFERENCES resource_version (vkey),
    log_index    INTEGER UNIQUE,        -- NULL until sequenced; then 0, 1, 2, ... without gaps
    salt         BLOB,                  -- 32 random bytes, never on chain; NULL once erased
    content_hash BLOB,                  -- SHA-256 of the RFC 8785 form of the version; NULL once erased
    leaf_hash    BLOB NOT NULL,         -- SHA-256(0x00 || salt || content_hash)
    CONSTRAINT log_leaf_content_hash_until_erased CHECK (content_hash IS NOT NULL OR salt IS NULL)
);
INSERT INTO log_leaf_0006 (vkey, log_index, salt, content_hash, leaf_hash)
    SELECT vkey, log_index, salt, content_hash, leaf_hash FROM log_leaf;
DROP TABLE log_leaf;
ALTER TABLE log_leaf_0006 RENAME TO log_leaf;
CREATE INDEX log_leaf_unsequenced ON log_leaf (vkey) WHERE log_index IS NULL;

-- Each erasure, for the operator's records: which resource, when, how many versions, and the
-- reason the operator gave (a reference to the request, never patient data: see README).
CREATE TABLE erasure (
    ekey      INTEGER PRIMARY KEY,
    rkey      INTEGER NOT NULL REFERENCES resource (rkey),
    erased_at INTEGER NOT NULL,        -- milliseconds since the Unix epoch
    versions  INTEGER NOT NULL,        -- how many versions lost their content
    reason    TEXT NOT NULL
);
CREATE INDEX erasure_rkey ON erasure (rkey);
