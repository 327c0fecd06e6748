-- fhir-gateway import (issue 6): how far each NDJSON file is imported, keyed by the SHA-256
-- of its content, moved in the transaction of every batch, so that an interrupted import
-- continues after its last committed batch. No file names (they may name patients).
CREATE TABLE import_file (
    file_hash TEXT PRIMARY KEY,
    -- lines (and bytes) of the file already done: the next batch starts after them
    next_line BIGINT NOT NULL,
    next_byte BIGINT NOT NULL,
    accepted BIGINT NOT NULL,
    rejected BIGINT NOT NULL,
    -- 1 once the whole file is done: importing the same content again does nothing
    done SMALLINT NOT NULL,
    started_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

-- The rejected lines of an import and why (an OperationOutcome as JSON text), written in the
-- batch's transaction; the error file is written from here.
CREATE TABLE import_rejection (
    file_hash TEXT NOT NULL REFERENCES import_file (file_hash),
    line BIGINT NOT NULL,
    outcome TEXT NOT NULL,
    PRIMARY KEY (file_hash, line)
);
