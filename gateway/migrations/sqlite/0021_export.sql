-- Bulk Data $export (issue 6): durable jobs, run by a worker in any serve process under a
-- lease it renews; a job whose worker died is claimed again once the lease runs out.
CREATE TABLE export_job (
    id TEXT PRIMARY KEY,
    -- the requesting client (only it may poll, cancel and download); NULL: the operator
    client_id TEXT,
    -- the requester's access at kick-off (JSON: actor, client, scopes, purpose of use; no token)
    access TEXT NOT NULL,
    -- what was asked (JSON: level, group, types, _since, _typeFilter, the kick-off URL)
    request TEXT NOT NULL,
    -- accepted, running, completed or failed (a cancelled job is deleted)
    state TEXT NOT NULL,
    worker TEXT,
    lease_until INTEGER,
    attempts INTEGER NOT NULL,
    progress TEXT,
    -- a failed job's OperationOutcome (JSON) and HTTP status
    error TEXT,
    error_status INTEGER,
    transaction_time INTEGER,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE INDEX export_job_state ON export_job (state, created_at);

-- The NDJSON output files of a job, in the database so that any replica serves them.
CREATE TABLE export_file (
    job_id TEXT NOT NULL REFERENCES export_job (id),
    seq INTEGER NOT NULL,
    resource_type TEXT NOT NULL,
    count INTEGER NOT NULL,
    content TEXT NOT NULL,
    PRIMARY KEY (job_id, seq)
);
