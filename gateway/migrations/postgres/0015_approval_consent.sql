-- Consent recorded from the SMART approval page (issue 5): the grant the gateway offered the
-- patient's wallet to sign for a pending authorization request (JSON: the chosen scopes and
-- expiry, and the EIP-712 Grant's fields: wallet, grantee, types, purpose, expiry, nonce,
-- deadline). The approval relays exactly this, never fields sent back by the page.
ALTER TABLE auth_request ADD COLUMN consent_offer TEXT;
