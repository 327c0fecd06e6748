-- Sign-In with Ethereum (EIP-4361) for patients (issue 4): the nonces the gateway put into
-- messages for wallets to sign. A nonce is bound to the browser that asked for it and is
-- consumed by the first sign-in that verifies, so a signed message cannot be replayed.
CREATE TABLE auth_siwe_nonce (
    nonce      TEXT PRIMARY KEY,
    binding    TEXT NOT NULL,          -- SHA-256 of what ties it to one browser (hex)
    expires_at BIGINT NOT NULL         -- seconds since the Unix epoch
);
CREATE INDEX auth_siwe_nonce_expires_at ON auth_siwe_nonce (expires_at);
