-- Break-the-glass (issue 5): the practitioners and staff the operator allows to read patient
-- data without a consent grant in an emergency (purpose of use ETREAT; always audited and
-- flagged). Their tokens carry the permission (claim `btg`); each use is recorded below.
ALTER TABLE auth_user ADD COLUMN break_glass BIGINT NOT NULL DEFAULT 0;

-- Every request served under break-the-glass: who, through which app, what, when. The
-- patient's view of it (and its AuditEvent) is issue 7's; nothing here is ever deleted.
CREATE TABLE break_glass_access (
    access_id  TEXT PRIMARY KEY,
    at         BIGINT NOT NULL,            -- ms since the epoch
    user_id    TEXT NOT NULL,
    client_id  TEXT NOT NULL,
    jti        TEXT NOT NULL,
    method     TEXT NOT NULL,
    route      TEXT NOT NULL,              -- the route pattern and the resource path
    patient_id TEXT,                       -- the patient whose record was opened, when one
    status     BIGINT NOT NULL             -- the HTTP status served
);
CREATE INDEX break_glass_access_patient ON break_glass_access (patient_id, at);
