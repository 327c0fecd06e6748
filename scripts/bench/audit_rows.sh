#!/usr/bin/env bash
# What one AuditEvent costs PostgreSQL, row by row (BENCHMARKS.md, "Audit trail"): pgbench
# (one client, synchronous_commit off, so a transaction's time is the backend's work and
# not the disk's flush) inserts batches of records shaped like the gateway's, into the
# database that `KEEP=1 scripts/bench/audit.sh` leaves behind (the Synthea set and its
# AuditEvents: real tables, real index sizes). Each shape runs with 12 and with 48 records
# a transaction; the difference over 36 is the cost of one more record, without the
# transaction's own.
#
# Shapes, per record:
#   full17   resource, version and log leaf rows, and the 17 index rows a read's record had
#            before 0033 (entity x2, patient, address, _id, action, agent:identifier,
#            entity-role x2, entity-type x2, outcome, subtype, type, _lastUpdated, date, policy)
#   full11   the same with the 11 index rows it has since (no _id, _lastUpdated, entity-type,
#            entity-role)
#   bare     resource, version and log leaf rows only
#   narrow   one row in a table of its own (id, time, body) with its log leaf and two
#            reference rows: the layout a dedicated audit table would have
# Usage: scripts/bench/audit_rows.sh; DUR seconds per run (default 6); ROUNDS (default 2);
# SHAPES (default all four, in that order).
# Writes into fhir_bench_audit (a benchmark's database; drop it after).
set -euo pipefail
cd "$(dirname "$0")/../.."
PG=postgres://postgres@127.0.0.1:5432
DB=fhir_bench_audit
DUR=${DUR:-6}
ROUNDS=${ROUNDS:-2}
PGBENCH=$(ls /usr/lib/postgresql/*/bin/pgbench | tail -1)
OUT=target/bench-audit-rows
mkdir -p $OUT
psql -Atq "$PG/$DB" -c "SELECT 1 FROM resource_version WHERE resource_type = 'AuditEvent' LIMIT 1" | grep -q 1 ||
  { echo "no AuditEvents in $DB: run KEEP=1 scripts/bench/audit.sh first" >&2; exit 2; }
psql -q "$PG/$DB" <<'EOF'
-- the narrow shape's leaves belong to no resource_version row
ALTER TABLE log_leaf DROP CONSTRAINT IF EXISTS log_leaf_vkey_fkey;
CREATE TABLE IF NOT EXISTS trial_audit (vkey BIGINT PRIMARY KEY DEFAULT nextval('resource_version_vkey_seq'),
  id TEXT COLLATE "C" NOT NULL UNIQUE, recorded BIGINT NOT NULL, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS trial_audit_ref (vkey BIGINT NOT NULL, target_type TEXT COLLATE "C" NOT NULL,
  target_id TEXT COLLATE "C" NOT NULL);
CREATE INDEX IF NOT EXISTS trial_audit_ref_target ON trial_audit_ref (target_id, target_type, vkey);
CREATE TABLE IF NOT EXISTS trial_body (b TEXT);
TRUNCATE trial_body;
INSERT INTO trial_body SELECT body FROM resource_version WHERE resource_type = 'AuditEvent' ORDER BY vkey DESC LIMIT 1;
EOF
# $1: the index rows' CTEs (after the resource, version and leaf rows)
full() {
  cat <<EOF
\set ts random(1700000000000, 1800000000000)
BEGIN;
WITH r AS (INSERT INTO resource (resource_type, id, version_id, last_updated, deleted)
  SELECT 'AuditEvent', gen_random_uuid()::text, 1, :ts, 0 FROM generate_series(1, :n) RETURNING rkey),
v AS (INSERT INTO resource_version (rkey, resource_type, version_id, last_updated, method, body)
  SELECT rkey, 'AuditEvent', 1, :ts, 'POST', (SELECT b FROM trial_body) || rkey FROM r RETURNING vkey, rkey),
l AS (INSERT INTO log_leaf (vkey, salt, content_hash, leaf_hash)
  SELECT vkey, sha256(vkey::text::bytea), sha256(rkey::text::bytea), sha256((vkey + 1)::text::bytea) FROM v)$1
SELECT 1;
COMMIT;
EOF
}
refs=",
ir AS (INSERT INTO idx_reference (rkey, rtype, param, grp, target_type, target_id)
  SELECT rkey, 'AuditEvent', p, 0, t, md5(rkey::text || p) FROM r,
  (VALUES ('entity', 'MedicationRequest'), ('entity', 'Patient'), ('patient', 'Patient')) AS q(p, t)),
st AS (INSERT INTO idx_string (rkey, rtype, param, grp, norm, exact)
  SELECT rkey, 'AuditEvent', 'address', 0, '127.0.0.1', '127.0.0.1' FROM r),
iu AS (INSERT INTO idx_uri (rkey, rtype, param, grp, value)
  SELECT rkey, 'AuditEvent', 'policy', 0, 'urn:fhir-gateway:token:' || md5(rkey::text) FROM r)"
tokens() {  # $1: extra token rows, $2: extra date rows
  echo ",
it AS (INSERT INTO idx_token (rkey, rtype, param, grp, system, code)
  SELECT rkey, 'AuditEvent', p, 0, 'http://example.org/' || p, c FROM r,
  (VALUES ('action', 'R'), ('agent:identifier', 'operator'), ('outcome', '0'), ('subtype', 'read'), ('type', 'rest')$1) AS q(p, c)),
id AS (INSERT INTO idx_date (rkey, rtype, param, grp, lo, hi)
  SELECT rkey, 'AuditEvent', p, 0, :ts, :ts + 1 FROM r, (VALUES ('date')$2) AS q(p))"
}
full "$refs$(tokens ", ('_id', 'x'), ('entity-role', '4'), ('entity-role', '1'), ('entity-type', '2'), ('entity-type', '1')" ", ('_lastUpdated')")" > $OUT/full17.sql
full "$refs$(tokens "" "")" > $OUT/full11.sql
full "" > $OUT/bare.sql
cat > $OUT/narrow.sql <<'EOF'
\set ts random(1700000000000, 1800000000000)
BEGIN;
WITH a AS (INSERT INTO trial_audit (id, recorded, body)
  SELECT gen_random_uuid()::text, :ts, (SELECT b FROM trial_body) FROM generate_series(1, :n) RETURNING vkey),
l AS (INSERT INTO log_leaf (vkey, salt, content_hash, leaf_hash)
  SELECT vkey, sha256(vkey::text::bytea), sha256((vkey + 2)::text::bytea), sha256((vkey + 1)::text::bytea) FROM a)
INSERT INTO trial_audit_ref (vkey, target_type, target_id)
  SELECT vkey, t, md5(vkey::text || t) FROM a, (VALUES ('MedicationRequest'), ('Patient')) AS q(t);
COMMIT;
EOF
ms() {  # shape, records per transaction: the mean transaction time in ms
  PGOPTIONS="-c synchronous_commit=off" "$PGBENCH" -n -c1 -T"$DUR" -D n="$2" -f "$OUT/$1.sql" "$PG/$DB" 2>&1 |
    awk '/latency average/ {print $4}'
}
echo "== machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
for round in $(seq "$ROUNDS"); do
  for shape in ${SHAPES:-full17 full11 bare narrow}; do
    a=$(ms $shape 12)
    b=$(ms $shape 48)
    awk -v s=$shape -v a="$a" -v b="$b" -v r=$round 'BEGIN {
      printf "round %d %-7s 12 a transaction %.2f ms, 48 %.2f ms: %.0f µs a record more\n", r, s, a, b, (b - a) * 1000 / 36 }'
  done
done
