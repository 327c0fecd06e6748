-- fhir-gateway import (issue 6): how far each NDJSON file is imported, keyed by the SHA-256
-- of its content, moved in the transaction of every batch, so that an interrupted import
-- continues after its last committed batch. No file names (they may name patients).
CREATE TABLE import_file (
    file_hash TEXT PRIMARY KEY,
    -- lines (and bytes) of the file already done: the next batch starts after them
    next_line INTEGER NOT NULL,
    next_byte INTEGER NOT NULL,
    accepted INTEGER NOT NULL,
    rejected INTEGER NOT NULL,
    -- 1 once the whole file is done: importing the same content again does nothing
    done SMALLINT NOT NULL,
    started_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);

-- The rejected lines of an import and why (an OperationOutcome as JSON text), written in the
-- batch's transaction; the error file is written from here.
CREATE TABLE import_rejection (
    file_hash TEXT NOT NULL REFERENCES import_file (file_hash),
    line INTEGER NOT NULL,
    outcome TEXT NOT NULL,
    PRIMARY KEY (file_hash, line)
);
