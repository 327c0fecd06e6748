-- SMART client kinds (issue 4): besides Backend Services clients, apps that authenticate with
-- a private key (confidential-asymmetric), with a client secret made by the server
-- (confidential-symmetric: only its argon2 hash is kept) or not at all (public, PKCE required);
-- their redirect URIs and launch URI; the admin flag of clients that may use the admin API; and
-- whether the operator or dynamic registration (RFC 7591) made the client.
ALTER TABLE auth_client DROP CONSTRAINT auth_client_kind_check;
ALTER TABLE auth_client DROP CONSTRAINT auth_client_one_key_source;
ALTER TABLE auth_client ADD COLUMN auth_method TEXT NOT NULL DEFAULT 'private_key_jwt';
ALTER TABLE auth_client ADD COLUMN secret_hash TEXT;                     -- argon2 PHC string
ALTER TABLE auth_client ADD COLUMN redirect_uris TEXT NOT NULL DEFAULT ''; -- space-separated
ALTER TABLE auth_client ADD COLUMN launch_uri TEXT;
ALTER TABLE auth_client ADD COLUMN admin BIGINT NOT NULL DEFAULT 0 CHECK (admin IN (0, 1));
ALTER TABLE auth_client ADD COLUMN registered_by TEXT NOT NULL DEFAULT 'operator'
    CHECK (registered_by IN ('operator', 'dynamic'));
ALTER TABLE auth_client ADD CONSTRAINT auth_client_kind
    CHECK (kind IN ('backend', 'confidential-asymmetric', 'confidential-symmetric', 'public'));
ALTER TABLE auth_client ADD CONSTRAINT auth_client_credentials CHECK (
    (auth_method = 'private_key_jwt' AND kind IN ('backend', 'confidential-asymmetric')
        AND secret_hash IS NULL AND (jwks IS NULL) <> (jwks_url IS NULL))
    OR (auth_method IN ('client_secret_basic', 'client_secret_post')
        AND kind = 'confidential-symmetric'
        AND secret_hash IS NOT NULL AND jwks IS NULL AND jwks_url IS NULL)
    OR (auth_method = 'none' AND kind = 'public'
        AND secret_hash IS NULL AND jwks IS NULL AND jwks_url IS NULL)
);
CREATE INDEX auth_client_registered_by ON auth_client (registered_by);
