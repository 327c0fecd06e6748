-- Words of the current version of each resource for `_text` and `_content`, written in the
-- same transaction as the resource: one row per distinct normalized word (see
-- fhir_profiles::text), `narrative` = 1 when the word is in the narrative (`text.div`).
-- Searched by prefix (`word >= $w AND word < $w || U+10FFFF`) on idx_word_value, which
-- also covers the subquery (rkey), so a search reads only index pages. The rows are
-- written and deleted only with their resource's version (store::write_version), and
-- resources are never removed (deletes are tombstones), so nothing can dangle.
CREATE TABLE idx_word (
    rkey INTEGER NOT NULL,      -- resource (rkey); no foreign key: its check would cost a third of each insert
    rtype TEXT NOT NULL,
    word TEXT NOT NULL,
    narrative SMALLINT NOT NULL
);
CREATE INDEX idx_word_value ON idx_word (rtype, word, narrative, rkey);
CREATE INDEX idx_word_rkey ON idx_word (rkey);
