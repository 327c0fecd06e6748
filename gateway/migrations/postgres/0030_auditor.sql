-- The auditor role (issue 7): the staff users the operator allows to read every AuditEvent,
-- whoever's record it is about, without a consent grant (an audit is not an access to the
-- record itself). Their tokens carry the permission (claim `auditor`).
ALTER TABLE auth_user ADD COLUMN auditor BIGINT NOT NULL DEFAULT 0;
