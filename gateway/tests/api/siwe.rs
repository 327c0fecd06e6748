//! Sign-In with Ethereum (EIP-4361) against the real database: the gateway writes the message,
//! a wallet key (alloy's local signer) signs it as a browser wallet would (EIP-191), and the
//! gateway verifies it once, for the browser it was written for, and never again.

use alloy::signers::SignerSync as _;
use alloy::signers::local::PrivateKeySigner;
use gateway::auth::siwe::{self, SiwePolicy};
use gateway::store::Store;

use crate::both;
use crate::helpers::TestApp;

fn sign(signer: &PrivateKeySigner, message: &str) -> String {
    let signature = signer
        .sign_message_sync(message.as_bytes())
        .expect("signed");
    format!("0x{}", hex::encode(signature.as_bytes()))
}

both!(
    a_signed_message_signs_in_once_and_only_from_its_browser,
    async |app: TestApp| {
        let store = Store::connect(&app.database).await.expect("the store");
        let policy = SiwePolicy::for_base_url(&app.base, 31337).expect("a policy");
        let wallet = PrivateKeySigner::random();
        let address = format!("{:#x}", wallet.address());

        let message = siwe::new_message(&store, &policy, &address, "browser-a")
            .await
            .expect("the database")
            .expect("a message");
        assert!(message.contains(&policy.domain) && message.contains("Chain ID: 31337"));
        let signature = sign(&wallet, &message);

        // another browser cannot use it
        let refusal = siwe::verify(&store, &policy, &message, &signature, "browser-b")
            .await
            .expect("the database")
            .expect_err("refused");
        assert!(refusal.0.contains("not made for this browser"), "{refusal}");

        // a forged signature is refused and does not spend the nonce
        let forged = sign(&PrivateKeySigner::random(), &message);
        assert!(
            siwe::verify(&store, &policy, &message, &forged, "browser-a")
                .await
                .expect("the database")
                .is_err()
        );

        // the right browser signs in, once
        let signer = siwe::verify(&store, &policy, &message, &signature, "browser-a")
            .await
            .expect("the database")
            .expect("signed in");
        assert_eq!(signer, address.to_lowercase());
        let refusal = siwe::verify(&store, &policy, &message, &signature, "browser-a")
            .await
            .expect("the database")
            .expect_err("a replay is refused");
        assert!(refusal.0.contains("already used"), "{refusal}");

        // a malformed address gets no message
        assert!(
            siwe::new_message(&store, &policy, "0x1234", "browser-a")
                .await
                .expect("the database")
                .is_err()
        );
        store.close().await;
    }
);
