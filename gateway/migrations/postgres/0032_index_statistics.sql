-- Statistics on the search index tables' columns taken together. PostgreSQL otherwise takes
-- a row's type, parameter, code and system (or reference target) as independent, so it
-- multiplies their selectivities: it estimated 36 idx_token rows for an Observation's LOINC
-- code that has 546, and the cached generic plan of `Observation?patient=&code=` started
-- from that code instead of from the patient's few references (2.1 ms instead of 0.36 ms a
-- page; BENCHMARKS.md, "Consent"). The dependencies between these columns correct that
-- estimate, also for the generic plans (unknown parameters) that the gateway's prepared
-- statements run on. They are filled by the next ANALYZE (autovacuum's, or the operator's).
CREATE STATISTICS idx_token_columns (ndistinct, dependencies) ON rtype, param, code, system FROM idx_token;
CREATE STATISTICS idx_reference_columns (ndistinct, dependencies) ON rtype, param, target_id FROM idx_reference;
