-- The consent index flattened for enforcement (issue 5): one row per (Patient, grantee,
-- purpose, resource type) that an unrevoked grant of the wallet bound to that Patient opens
-- ('*': every type). Kept in the same transactions as what it is derived from
-- (consent_grant, consent_grant_type, patient_wallet: the follower's rounds and reorg
-- rollbacks, binding and unbinding), so the condition every consent-gated query carries is
-- one probe of the primary key per compartment reference, not a join.
CREATE TABLE consent_access (
    patient_id    TEXT COLLATE "C" NOT NULL,
    grantee       TEXT COLLATE "C" NOT NULL,
    purpose       TEXT COLLATE "C" NOT NULL,
    resource_type TEXT COLLATE "C" NOT NULL,       -- a resource type, or '*'
    grant_id      BIGINT NOT NULL,
    granted_block BIGINT NOT NULL,       -- counts once confirmed (consent.confirmations)
    expires_at    BIGINT NOT NULL,       -- seconds since the epoch; 0: until revoked
    PRIMARY KEY (patient_id, grantee, purpose, resource_type, grant_id)
);
CREATE INDEX consent_access_grant ON consent_access (grant_id);

INSERT INTO consent_access (patient_id, grantee, purpose, resource_type, grant_id, granted_block, expires_at)
SELECT b.patient_id, g.grantee, g.purpose, COALESCE(t.resource_type, '*'), g.grant_id, g.granted_block, g.expires_at
FROM consent_grant g
JOIN patient_wallet b ON b.wallet_address = g.patient_wallet
LEFT JOIN consent_grant_type t ON t.grant_id = g.grant_id AND g.all_types = 0
WHERE g.revoked_block IS NULL AND (g.all_types = 1 OR t.resource_type IS NOT NULL);
