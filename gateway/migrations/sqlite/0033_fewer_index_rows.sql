-- Fewer index rows for every resource written (BENCHMARKS.md, "Audit trail": each row costs
-- its insert into the table and into each of the table's indexes, ~7 µs on PostgreSQL).
--
-- `_id` and `_lastUpdated` are answered from the resource row's own columns (`id`,
-- `last_updated`), as they always were: their rows in idx_token and idx_date were written
-- for every version and never read. An AuditEvent's `entity-type` and `entity-role` are no
-- longer indexed (`store::is_indexed`): the gateway's records give every entity the type
-- and role its reference already says. Their rows go.
DELETE FROM idx_token WHERE param = '_id';
DELETE FROM idx_date WHERE param = '_lastUpdated';
DELETE FROM idx_token WHERE rtype = 'AuditEvent' AND param IN ('entity-type', 'entity-role');

-- The index on a reference's absolute URL (`subject=http://other.example/fhir/Patient/1`,
-- canonical references) holds only the rows that have one. A reference to a resource on this
-- server (`Patient/1`, nearly every reference) is indexed by its type and id and has no URL:
-- its NULL took an entry in this index all the same. A search by URL (`t.url = $1`)
-- implies `url IS NOT NULL`, so it still uses the index.
DROP INDEX idx_reference_url;
CREATE INDEX idx_reference_url ON idx_reference (rtype, param, url) WHERE url IS NOT NULL;
