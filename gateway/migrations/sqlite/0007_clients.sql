-- SMART on FHIR clients (issue 4): the apps and systems the gateway's authorization server
-- issues tokens to. Only public material is stored: a client authenticates with a JWT signed
-- by its private key, checked against its JWKS (inline) or the JWKS at its URL.
CREATE TABLE auth_client (
    client_id  TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    kind       TEXT NOT NULL CHECK (kind IN ('backend')), -- Backend Services (client_credentials)
    jwks       TEXT,                   -- the client's public JSON Web Key Set, as JSON
    jwks_url   TEXT,                   -- or where it is published
    scopes     TEXT NOT NULL,          -- the scopes it may be granted, space-separated
    created_at BIGINT NOT NULL,        -- milliseconds since the Unix epoch
    CONSTRAINT auth_client_one_key_source CHECK ((jwks IS NULL) <> (jwks_url IS NULL))
);

-- The `jti` of every client assertion accepted, kept until the assertion expires, so that an
-- assertion is accepted at most once, across restarts and replicas.
CREATE TABLE auth_assertion_jti (
    client_id  TEXT NOT NULL,
    jti        TEXT NOT NULL,
    expires_at BIGINT NOT NULL,        -- the assertion's exp, seconds since the Unix epoch
    PRIMARY KEY (client_id, jti)
);
CREATE INDEX auth_assertion_jti_expires_at ON auth_assertion_jti (expires_at);
