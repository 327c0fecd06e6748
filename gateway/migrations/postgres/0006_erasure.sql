-- Erasure (crypto-shredding, PRODUCT.md promise 8): `fhir-gateway erase` removes a record's
-- content and the salts of its log leaves; the leaf hashes stay, so every batch keeps its
-- root and every other version's proof still verifies.
--
-- A version whose body was erased keeps its row (history shows that it existed) and records
-- when it was erased. A deletion tombstone (body NULL, erased_at NULL) is never erased.
ALTER TABLE resource_version ADD COLUMN erased_at BIGINT; -- milliseconds since the Unix epoch

-- An erased leaf loses its content hash with its salt: without the salt the content hash
-- proves nothing about the leaf, and it is an unsalted hash of the content that would confirm
-- a guess of it. Only an erased leaf (no salt) may lack it.
ALTER TABLE log_leaf ALTER COLUMN content_hash DROP NOT NULL;
ALTER TABLE log_leaf ADD CONSTRAINT log_leaf_content_hash_until_erased
    CHECK (content_hash IS NOT NULL OR salt IS NULL);

-- Each erasure, for the operator's records: which resource, when, how many versions, and the
-- reason the operator gave (a reference to the request, never patient data: see README).
CREATE TABLE erasure (
    ekey      BIGSERIAL PRIMARY KEY,
    rkey      BIGINT NOT NULL REFERENCES resource (rkey),
    erased_at BIGINT NOT NULL,         -- milliseconds since the Unix epoch
    versions  BIGINT NOT NULL,         -- how many versions lost their content
    reason    TEXT NOT NULL
);
CREATE INDEX erasure_rkey ON erasure (rkey);
