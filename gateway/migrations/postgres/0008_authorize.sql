-- SMART App Launch (issue 4): users, sessions, authorization codes, launches, refresh tokens.
-- (Clients' redirect and launch URIs and kinds are migration 0009's.)

-- Users who sign in at the authorization server's pages: practitioners and staff with a
-- password (argon2 hash, PHC string), patients with an Ethereum wallet (Sign-In with Ethereum).
CREATE TABLE auth_user (
    user_id         TEXT PRIMARY KEY,
    kind            TEXT NOT NULL CHECK (kind IN ('patient', 'practitioner', 'staff')),
    username        TEXT UNIQUE,           -- practitioners and staff
    password_hash   TEXT,                  -- argon2id PHC string; never the password
    wallet_address  TEXT UNIQUE,           -- patients: 0x + 40 lowercase hex digits
    fhir_user       TEXT NOT NULL,         -- Patient/123, Practitioner/7, ...
    failed_sign_ins BIGINT NOT NULL DEFAULT 0, -- consecutive failed password sign-ins
    locked_until    BIGINT,                -- no password sign-in before (ms since the epoch)
    disabled_at     BIGINT,                -- ms since the epoch; a disabled user cannot sign in
    created_at      BIGINT NOT NULL,
    CONSTRAINT auth_user_credential CHECK (
        (kind = 'patient' AND wallet_address IS NOT NULL AND username IS NULL)
        OR (kind <> 'patient' AND username IS NOT NULL AND password_hash IS NOT NULL))
);

-- Browser sessions of the pages. The cookie holds a random id; only its SHA-256 is stored.
-- A session starts anonymous (user_id NULL) and is replaced by a new one at sign-in.
CREATE TABLE auth_session (
    session_hash TEXT PRIMARY KEY,
    user_id      TEXT,
    csrf_token   TEXT NOT NULL,            -- echoed by every form of the session
    created_at   BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL,          -- ms since the epoch
    ended_at     BIGINT                    -- signed out (ends online_access refresh tokens)
);

-- Authorization requests between /auth/authorize and the user's decision.
CREATE TABLE auth_request (
    request_id     TEXT PRIMARY KEY,
    session_hash   TEXT NOT NULL,
    client_id      TEXT NOT NULL,
    redirect_uri   TEXT NOT NULL,
    scope          TEXT NOT NULL,          -- what the client may be granted of what it asked
    state          TEXT NOT NULL,
    code_challenge TEXT NOT NULL,          -- PKCE S256
    nonce          TEXT,
    patient        TEXT,                   -- from an EHR launch, or picked
    encounter      TEXT,
    ehr_launch     BIGINT NOT NULL DEFAULT 0,
    expires_at     BIGINT NOT NULL
);

-- Authorization codes: single use; only their SHA-256 is stored. `family_id` names everything
-- issued from the code (access tokens, refresh tokens), revoked together if the code is reused.
CREATE TABLE auth_code (
    code_hash      TEXT PRIMARY KEY,
    family_id      TEXT NOT NULL,
    client_id      TEXT NOT NULL,
    redirect_uri   TEXT NOT NULL,
    user_id        TEXT NOT NULL,
    session_hash   TEXT NOT NULL,
    scope          TEXT NOT NULL,
    code_challenge TEXT NOT NULL,
    nonce          TEXT,
    patient        TEXT,
    encounter      TEXT,
    need_patient_banner BIGINT NOT NULL,
    expires_at     BIGINT NOT NULL,
    used_at        BIGINT
);

-- Launch values issued by the EHR side (page or CLI): single use, short-lived; hashed.
CREATE TABLE auth_launch (
    launch_hash TEXT PRIMARY KEY,
    client_id   TEXT,                      -- when the launch is for one client only
    patient     TEXT NOT NULL,
    encounter   TEXT,
    expires_at  BIGINT NOT NULL,
    used_at     BIGINT
);

-- Refresh tokens: opaque, hashed, rotated at every use; a used one presented again revokes
-- its whole family.
CREATE TABLE auth_refresh (
    token_hash   TEXT PRIMARY KEY,
    family_id    TEXT NOT NULL,
    client_id    TEXT NOT NULL,
    user_id      TEXT NOT NULL,
    session_hash TEXT,                     -- online_access: valid while this session lives
    scope        TEXT NOT NULL,
    patient      TEXT,
    encounter    TEXT,
    need_patient_banner BIGINT NOT NULL,
    created_at   BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL,
    used_at      BIGINT,
    revoked_at   BIGINT
);
CREATE INDEX auth_refresh_family ON auth_refresh (family_id);

-- The access tokens issued to a family (so that revoking the family revokes them).
CREATE TABLE auth_access (
    jti        TEXT PRIMARY KEY,
    family_id  TEXT NOT NULL,
    expires_at BIGINT NOT NULL             -- the token's exp, seconds since the epoch
);
CREATE INDEX auth_access_family ON auth_access (family_id);

-- Revoked access tokens, kept until they expire.
CREATE TABLE auth_revoked_jti (
    jti        TEXT PRIMARY KEY,
    expires_at BIGINT NOT NULL             -- the token's exp, seconds since the epoch
);
