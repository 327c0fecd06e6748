-- SMART client kinds (issue 4): besides Backend Services clients, apps that authenticate with
-- a private key (confidential-asymmetric), with a client secret made by the server
-- (confidential-symmetric: only its argon2 hash is kept) or not at all (public, PKCE required);
-- their redirect URIs and launch URI; the admin flag of clients that may use the admin API; and
-- whether the operator or dynamic registration (RFC 7591) made the client.
-- SQLite cannot change a table's CHECK constraints: the table is made anew and filled.
CREATE TABLE auth_client_new (
    client_id     TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    kind          TEXT NOT NULL
        CHECK (kind IN ('backend', 'confidential-asymmetric', 'confidential-symmetric', 'public')),
    jwks          TEXT,
    jwks_url      TEXT,
    scopes        TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    auth_method   TEXT NOT NULL DEFAULT 'private_key_jwt',
    secret_hash   TEXT,                    -- argon2 PHC string
    redirect_uris TEXT NOT NULL DEFAULT '', -- space-separated
    launch_uri    TEXT,
    admin         BIGINT NOT NULL DEFAULT 0 CHECK (admin IN (0, 1)),
    registered_by TEXT NOT NULL DEFAULT 'operator' CHECK (registered_by IN ('operator', 'dynamic')),
    CONSTRAINT auth_client_credentials CHECK (
        (auth_method = 'private_key_jwt' AND kind IN ('backend', 'confidential-asymmetric')
            AND secret_hash IS NULL AND (jwks IS NULL) <> (jwks_url IS NULL))
        OR (auth_method IN ('client_secret_basic', 'client_secret_post')
            AND kind = 'confidential-symmetric'
            AND secret_hash IS NOT NULL AND jwks IS NULL AND jwks_url IS NULL)
        OR (auth_method = 'none' AND kind = 'public'
            AND secret_hash IS NULL AND jwks IS NULL AND jwks_url IS NULL)
    )
);
INSERT INTO auth_client_new (client_id, name, kind, jwks, jwks_url, scopes, created_at)
    SELECT client_id, name, kind, jwks, jwks_url, scopes, created_at FROM auth_client;
DROP TABLE auth_client;
ALTER TABLE auth_client_new RENAME TO auth_client;
CREATE INDEX auth_client_registered_by ON auth_client (registered_by);
