-- Which search index tables may hold rows of a resource: bit n for the n-th table of
-- store::index::TABLES_WITH_WORDS (idx_string, idx_token, idx_reference, idx_date,
-- idx_number, idx_quantity, idx_uri, idx_word). A superset, never less: NULL (every row
-- written before this column, and resources created in bulk) means any table may. On
-- PostgreSQL an update of a version (store::write_version) sets it, in the statement that
-- makes the resource's index rows exactly the new ones, and skips the tables whose bit is
-- clear in what it replaces (BENCHMARKS.md, "HL7 v2 over MLLP"). Every other writer of
-- index rows either writes a new resource (NULL) or only removes rows.
ALTER TABLE resource ADD COLUMN index_tables SMALLINT;
