-- Binding Patient records to wallets (issue 5): the one-time link codes staff issue and
-- patients redeem by signing in with their wallet, and the history of every bind and unbind.
-- The binding itself is patient_wallet (migration 0012).

-- Link codes: random (80 bits), single use, expiring; only the SHA-256 of the code (without
-- its hyphens) is stored. Issuing a new code for a patient removes their unused ones.
CREATE TABLE patient_link_code (
    code_hash  TEXT PRIMARY KEY,
    patient_id TEXT NOT NULL,   -- the Patient resource's id
    issued_by  TEXT NOT NULL,               -- the admin client's id, or cli
    created_at BIGINT NOT NULL,             -- ms since the epoch
    expires_at BIGINT NOT NULL,             -- ms since the epoch
    used_at    BIGINT                       -- redeemed
);
CREATE INDEX patient_link_code_patient ON patient_link_code (patient_id);

-- Every bind and unbind (PRODUCT.md "Consent": audited), numbered per patient.
CREATE TABLE patient_wallet_history (
    patient_id     TEXT NOT NULL,
    seq            BIGINT NOT NULL,          -- 1, 2, ... per patient
    wallet_address TEXT NOT NULL,            -- 0x + 40 lowercase hex digits
    action         TEXT NOT NULL CHECK (action IN ('bind', 'unbind')),
    actor          TEXT NOT NULL,            -- an admin client's id, cli, or link-code
    at             BIGINT NOT NULL,          -- ms since the epoch
    PRIMARY KEY (patient_id, seq)
);

-- Wrong link codes tried in a browser session: redemption stops after a few.
ALTER TABLE auth_session ADD COLUMN link_failures BIGINT NOT NULL DEFAULT 0;

-- Patient users added before bindings existed get theirs (one per Patient, the oldest).
INSERT INTO patient_wallet (patient_id, wallet_address, user_id, bound_at)
SELECT substr(fhir_user, 9), wallet_address, user_id, created_at FROM auth_user
WHERE kind = 'patient' AND disabled_at IS NULL AND fhir_user LIKE 'Patient/%'
ORDER BY created_at, user_id
ON CONFLICT DO NOTHING;
INSERT INTO patient_wallet_history (patient_id, seq, wallet_address, action, actor, at)
SELECT patient_id, 1, wallet_address, 'bind', 'migration', bound_at FROM patient_wallet;
