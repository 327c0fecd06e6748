-- PostgreSQL's migration 0032 adds statistics on the search index tables' columns taken
-- together. SQLite's ANALYZE already keeps its statistics per index prefix (sqlite_stat1),
-- which describe those columns together: nothing to add here.
SELECT 1;
