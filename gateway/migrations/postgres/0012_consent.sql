-- On-chain patient consent (issue 5): the binding of Patient records to the wallets that sign
-- their grants, and the gateway's index of the ConsentRegistry's events. Every consent-gated
-- query joins these tables, so a revocation written here applies to the next query.

-- Patient <-> wallet (PRODUCT.md "Consent": made through a one-time link code that the patient
-- redeems by signing in with the wallet). A grant signed by a wallet applies to the Patient
-- bound to it now: unbinding ends it for that Patient at once.
CREATE TABLE patient_wallet (
    patient_id     TEXT COLLATE "C" PRIMARY KEY,      -- the Patient resource's id
    wallet_address TEXT NOT NULL UNIQUE,    -- 0x + 40 lowercase hex digits
    user_id        TEXT NOT NULL,           -- the patient user (auth_user) who signs in with it
    bound_at       BIGINT NOT NULL          -- ms since the epoch
);

-- Grants as the ConsentRegistry's events recorded them, with the blocks that did it. A grant
-- counts once its block is `consent.confirmations` deep; a revocation counts at once.
CREATE TABLE consent_grant (
    grant_id       BIGINT PRIMARY KEY,      -- the registry's grant id
    patient_wallet TEXT NOT NULL,           -- the grantor: 0x + 40 lowercase hex digits
    grantee        TEXT COLLATE "C" NOT NULL,        -- 0x + 64 lowercase hex digits (see ConsentRegistry)
    purpose        TEXT COLLATE "C" NOT NULL,        -- a v3 ActReason code: TREAT, HPAYMT, HRESCH, ...
    all_types      BIGINT NOT NULL,         -- 1: every resource type; 0: those in consent_grant_type
    expires_at     BIGINT NOT NULL,         -- seconds since the epoch; 0: until revoked
    granted_block  BIGINT NOT NULL,
    granted_tx     TEXT NOT NULL,
    revoked_block  BIGINT,                  -- the revoking block, NULL while active
    revoked_tx     TEXT
);
CREATE INDEX consent_grant_grantee ON consent_grant (grantee, purpose, patient_wallet);
CREATE INDEX consent_grant_patient ON consent_grant (patient_wallet);
CREATE INDEX consent_grant_granted_block ON consent_grant (granted_block);
CREATE INDEX consent_grant_revoked_block ON consent_grant (revoked_block);

CREATE TABLE consent_grant_type (
    grant_id      BIGINT NOT NULL,
    resource_type TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (grant_id, resource_type)
);

-- Hashes of blocks the index has read through (the cursor's, and those that held events),
-- to find where a reorg forked off; pruned beyond the reorg window.
CREATE TABLE consent_block (
    block_number BIGINT PRIMARY KEY,
    block_hash   TEXT NOT NULL
);

-- Where the index stands (one row): the registry it follows, the last block read, the head
-- seen then, and when (the lag bound is measured from synced_at).
CREATE TABLE consent_cursor (
    id           BIGINT PRIMARY KEY CHECK (id = 1),
    chain_id     BIGINT NOT NULL,
    registry     TEXT NOT NULL,             -- 0x + 40 lowercase hex digits
    start_block  BIGINT NOT NULL,           -- the registry's deployment block
    block_number BIGINT NOT NULL,           -- read through this block
    block_hash   TEXT NOT NULL,
    head         BIGINT NOT NULL,           -- the chain head when last synced
    synced_at    BIGINT NOT NULL            -- ms since the epoch
);
