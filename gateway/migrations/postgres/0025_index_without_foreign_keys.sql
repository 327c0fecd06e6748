-- The search index tables lose their foreign key to resource, as idx_word never had one
-- (0003): checking it is a trigger and a lookup of resource per inserted row, about 40% of
-- PostgreSQL's time in a bulk import (BENCHMARKS.md, "Bulk Data import"). Nothing can
-- dangle without it: index rows are written only in the statement or transaction that
-- writes their resource's version (store::write_version, store::write_new_versions), and a
-- resource row is never removed (deletes are tombstones; erasure keeps the row).
ALTER TABLE idx_string DROP CONSTRAINT idx_string_rkey_fkey;
ALTER TABLE idx_token DROP CONSTRAINT idx_token_rkey_fkey;
ALTER TABLE idx_reference DROP CONSTRAINT idx_reference_rkey_fkey;
ALTER TABLE idx_date DROP CONSTRAINT idx_date_rkey_fkey;
ALTER TABLE idx_number DROP CONSTRAINT idx_number_rkey_fkey;
ALTER TABLE idx_quantity DROP CONSTRAINT idx_quantity_rkey_fkey;
ALTER TABLE idx_uri DROP CONSTRAINT idx_uri_rkey_fkey;
