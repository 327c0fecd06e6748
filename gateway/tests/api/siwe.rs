//! Sign-In with Ethereum (EIP-4361) against the real database: the gateway writes the message,
//! a wallet key (alloy's local signer) signs it as a browser wallet would (EIP-191), and the
//! gateway verifies it once, for the browser it was written for, and never again. Then the
//! sign-in page's endpoints driven as a browser would: a patient completes a standalone launch
//! with their wallet, and every sign-in that must not succeed is refused on the page.

use ::siwe as siwe_crate;
use alloy::signers::SignerSync as _;
use alloy::signers::local::PrivateKeySigner;
use gateway::auth::binding;
use gateway::auth::siwe::{self, SiwePolicy};
use gateway::auth::users::{self, Credential, Kind};
use gateway::store::Store;
use serde_json::Value;

use crate::authorize::{
    Browser, Setup, approve_except, authorize_url_with, exchange, field, location, param, pkce,
    setup,
};
use crate::both;
use crate::helpers::TestApp;

pub(crate) fn sign(signer: &PrivateKeySigner, message: &str) -> String {
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

/// A patient user whose wallet is `wallet`, for the setup's Patient (unbound from the
/// setup's patient user first: one record, one wallet).
async fn add_patient_user(app: &TestApp, setup: &Setup, wallet: &PrivateKeySigner) -> String {
    let store = Store::connect(&app.database).await.expect("the store");
    binding::unbind(&store, &setup.patient_id, binding::CLI)
        .await
        .expect("the database")
        .expect("the setup's patient user was bound");
    let user = users::add(
        &store,
        Kind::Patient,
        Credential::Wallet(format!("{:#x}", wallet.address())),
        &format!("Patient/{}", setup.patient_id),
    )
    .await
    .expect("patient added");
    store.close().await;
    user.user_id
}

/// A patient's standalone launch up to the sign-in page: the page, its CSP and the PKCE
/// verifier.
pub(crate) async fn sign_in_page(
    browser: &mut Browser,
    app: &TestApp,
    setup: &Setup,
) -> (String, String, String) {
    let (verifier, challenge) = pkce();
    let url = authorize_url_with(
        app,
        &setup.client_id,
        &challenge,
        &[("scope", Some("openid fhirUser launch/patient patient/*.rs"))],
    );
    let next = location(&browser.get(&url).await);
    let response = browser.get(&next).await;
    assert_eq!(response.status(), 200);
    let csp = response.headers()["content-security-policy"]
        .to_str()
        .expect("ASCII")
        .to_owned();
    let page = response.text().await.expect("text");
    assert!(page.contains("<h1>Sign in</h1>"), "{page}");
    (page, csp, verifier)
}

/// `POST [base]/auth/siwe/message` from the sign-in page `page`: status and JSON.
pub(crate) async fn ask_message(
    browser: &mut Browser,
    app: &TestApp,
    page: &str,
    address: &str,
) -> (u16, Value) {
    let response = browser
        .post(
            &format!("{}/auth/siwe/message", app.base),
            &[
                ("csrf_token", &field(page, "csrf_token")),
                ("address", address),
            ],
        )
        .await;
    let status = response.status().as_u16();
    (status, response.json().await.expect("JSON"))
}

/// The message the gateway writes for `wallet`, from the sign-in page `page`.
pub(crate) async fn message_for(
    browser: &mut Browser,
    app: &TestApp,
    page: &str,
    wallet: &PrivateKeySigner,
) -> String {
    let (status, body) = ask_message(browser, app, page, &format!("{:#x}", wallet.address())).await;
    assert_eq!(status, 200, "{body}");
    body["message"].as_str().expect("a message").to_owned()
}

/// Posts a signed message with the sign-in page's form.
pub(crate) async fn post_signed(
    browser: &mut Browser,
    app: &TestApp,
    page: &str,
    message: &str,
    signature: &str,
) -> reqwest::Response {
    browser
        .post(
            &format!("{}/auth/siwe/sign-in", app.base),
            &[
                ("csrf_token", &field(page, "csrf_token")),
                ("request", &field(page, "request")),
                ("message", message),
                ("signature", signature),
            ],
        )
        .await
}

/// A refusal: the sign-in page again (200), with an error summary saying `expected`.
pub(crate) async fn assert_refused(response: reqwest::Response, expected: &str) -> String {
    assert_eq!(response.status(), 200, "the sign-in page again");
    let page = response.text().await.expect("text");
    assert!(
        page.contains("There is a problem") && page.contains("href=\"#siwe-button\""),
        "an error summary about the wallet: {page}"
    );
    assert!(page.contains(expected), "expected {expected:?} on {page}");
    page
}

both!(
    a_patient_signs_in_with_their_wallet_and_gets_their_own_record,
    async |app: TestApp| {
        let setup = setup(&app).await;
        let wallet = PrivateKeySigner::random();
        add_patient_user(&app, &setup, &wallet).await;
        let mut browser = Browser::new();
        let (page, csp, verifier) = sign_in_page(&mut browser, &app, &setup).await;
        assert!(
            page.contains("Sign in with Ethereum wallet")
                && page.contains("role=\"status\"")
                && page.contains(&format!("<script src=\"{}/auth/siwe.js\"", app.base)),
            "the wallet button, its status line and script: {page}"
        );
        assert!(
            csp.contains(&format!("script-src {}/auth/siwe.js;", app.base))
                && csp.contains(&format!("connect-src {}/auth/siwe/message;", app.base))
                && csp.starts_with("default-src 'none'"),
            "only the wallet script may run: {csp}"
        );
        let script = browser.get(&format!("{}/auth/siwe.js", app.base)).await;
        assert_eq!(script.status(), 200);
        assert!(
            script.headers()["content-type"]
                .to_str()
                .expect("ASCII")
                .starts_with("text/javascript")
        );
        assert!(
            script
                .text()
                .await
                .expect("text")
                .contains("eth_requestAccounts")
        );

        let message = message_for(&mut browser, &app, &page, &wallet).await;
        let domain = app.base.split('/').nth(2).expect("host:port");
        assert!(
            message.starts_with(&format!("{domain} wants you to sign in"))
                && message.contains("Chain ID: 1\n"),
            "the default chain and the base URL's domain: {message}"
        );
        let signature = sign(&wallet, &message);
        let response = post_signed(&mut browser, &app, &page, &message, &signature).await;
        let approve = browser.page(&location(&response)).await;
        assert!(
            !approve.contains("Choose a patient"),
            "a patient picks no one: {approve}"
        );
        assert!(
            !approve.contains("Also record this consent on the blockchain")
                && !approve.contains("<script"),
            "a gateway without a chain offers no consent on chain: {approve}"
        );
        let back = approve_except(&mut browser, &app, &approve, &[]).await;
        let code = param(&back, "code").expect("a code");
        let (status, body) = exchange(&app, &setup, &code, &verifier).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["patient"], setup.patient_id.as_str());

        // the same signed message again, from another browser: refused
        let mut other = Browser::new();
        let (other_page, _, _) = sign_in_page(&mut other, &app, &setup).await;
        let response = post_signed(&mut other, &app, &other_page, &message, &signature).await;
        assert_refused(response, "already used").await;
    }
);

both!(
    wallet_sign_ins_that_must_not_succeed_are_refused_on_the_page,
    async |app: TestApp| {
        let setup = setup(&app).await;
        let wallet = PrivateKeySigner::random();
        let user_id = add_patient_user(&app, &setup, &wallet).await;
        let mut browser = Browser::new();
        let (page, _, _) = sign_in_page(&mut browser, &app, &setup).await;

        // signed by another key than the message's address
        let message = message_for(&mut browser, &app, &page, &wallet).await;
        let forged = sign(&PrivateKeySigner::random(), &message);
        let response = post_signed(&mut browser, &app, &page, &message, &forged).await;
        assert_refused(response, "not the address&#39;s signature").await;

        // a message for another domain, signed by the right key
        let domain = app.base.split('/').nth(2).expect("host:port");
        let elsewhere = message.replace(domain, "evil.example");
        let response = post_signed(
            &mut browser,
            &app,
            &page,
            &elsewhere,
            &sign(&wallet, &elsewhere),
        )
        .await;
        assert_refused(response, "is for evil.example").await;

        // an expired message, signed by the right key
        let policy = SiwePolicy::for_base_url(&app.base, 1).expect("a policy");
        let then = time::OffsetDateTime::now_utc() - time::Duration::minutes(10);
        let expired = siwe_crate::Message {
            domain: policy.domain.parse().expect("an authority"),
            address: wallet.address().0.0,
            statement: Some(policy.statement.clone()),
            uri: policy.uri.parse().expect("a URI"),
            version: siwe_crate::Version::V1,
            chain_id: 1,
            nonce: siwe_crate::generate_nonce(),
            issued_at: then.into(),
            expiration_time: Some((then + time::Duration::minutes(5)).into()),
            not_before: None,
            request_id: None,
            resources: Vec::new(),
        }
        .to_string();
        let response = post_signed(
            &mut browser,
            &app,
            &page,
            &expired,
            &sign(&wallet, &expired),
        )
        .await;
        assert_refused(response, "has expired").await;

        // nothing signed
        let response = post_signed(&mut browser, &app, &page, "", "").await;
        assert_refused(response, "Sign the message with your wallet first").await;

        // a wallet no patient is registered with
        let stranger = PrivateKeySigner::random();
        let strangers = message_for(&mut browser, &app, &page, &stranger).await;
        let response = post_signed(
            &mut browser,
            &app,
            &page,
            &strangers,
            &sign(&stranger, &strangers),
        )
        .await;
        let refused = assert_refused(response, "This wallet is not registered").await;
        assert!(!refused.contains(&setup.patient_id), "{refused}");

        // no CSRF token: no message, no sign-in
        let response = browser
            .post(
                &format!("{}/auth/siwe/message", app.base),
                &[("address", format!("{:#x}", wallet.address()).as_str())],
            )
            .await;
        assert_eq!(response.status(), 403);
        let body: Value = response.json().await.expect("JSON");
        assert!(body["error"].is_string(), "{body}");
        let signature = sign(&wallet, &message);
        let response = browser
            .post(
                &format!("{}/auth/siwe/sign-in", app.base),
                &[
                    ("request", field(&page, "request").as_str()),
                    ("message", &message),
                    ("signature", &signature),
                ],
            )
            .await;
        assert_eq!(response.status(), 403);

        // a malformed address gets no message
        let (status, body) = ask_message(&mut browser, &app, &page, "0x1234").await;
        assert_eq!(status, 400, "{body}");
        assert!(body["error"].is_string(), "{body}");

        // none of the refusals spent the nonce: the right signature still signs in (the
        // message's line breaks as CRLF, as a browser submits a form)
        let crlf = message.replace('\n', "\r\n");
        let response = post_signed(&mut browser, &app, &page, &crlf, &signature).await;
        let next = location(&response);
        assert!(next.contains("/auth/approve?request="), "{next}");

        // a disabled patient cannot sign in
        let store = Store::connect(&app.database).await.expect("the store");
        assert!(users::disable(&store, &user_id).await.expect("disabled"));
        store.close().await;
        let mut browser = Browser::new();
        let (page, _, _) = sign_in_page(&mut browser, &app, &setup).await;
        let message = message_for(&mut browser, &app, &page, &wallet).await;
        let response = post_signed(
            &mut browser,
            &app,
            &page,
            &message,
            &sign(&wallet, &message),
        )
        .await;
        assert_refused(response, "This wallet is not registered").await;
    }
);

/// The page's own script in headless Chromium (`tests/browser/siwe-sign-in.mjs`, Debian's
/// chromium driven by playwright-core from `npm ci`): without a wallet it says one is needed;
/// with a test wallet injected as `window.ethereum` (EIP-1193, signing in node with Foundry's
/// `cast`), the patient clicks the button, approves, and lands on the app with a code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patient_signs_in_with_a_browser_wallet_in_chromium() {
    let app = crate::helpers::spawn_app(crate::helpers::Db::Sqlite).await;
    let setup = setup(&app).await;
    let wallet = PrivateKeySigner::random();
    add_patient_user(&app, &setup, &wallet).await;
    let (verifier, challenge) = pkce();
    let authorize_url = authorize_url_with(
        &app,
        &setup.client_id,
        &challenge,
        &[("scope", Some("openid fhirUser launch/patient patient/*.rs"))],
    );
    let options = serde_json::json!({
        "authorizeUrl": authorize_url,
        "privateKey": format!("0x{}", hex::encode(wallet.to_bytes())),
        "address": wallet.address().to_checksum(None),
        "redirectUri": crate::authorize::REDIRECT_URI,
    });
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/browser/siwe-sign-in.mjs"
    );
    let output = tokio::process::Command::new("node")
        .arg(script)
        .arg(options.to_string())
        .kill_on_drop(true)
        .output()
        .await
        .expect("node runs (Debian nodejs, and `npm ci` for playwright-core and Foundry's cast)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let result: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|_| {
        panic!(
            "the browser script's result: {stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    assert!(output.status.success(), "{result}");
    let no_wallet = result["noWallet"].as_str().expect("the status line");
    assert!(
        no_wallet.contains("No Ethereum wallet was found"),
        "without a wallet the page says one is needed: {no_wallet}"
    );
    assert!(
        result["errors"].as_array().is_some_and(Vec::is_empty),
        "no script errors or CSP violations: {result}"
    );
    assert_eq!(
        result["heading"], "Allow Growth Chart to use your records?",
        "{result}"
    );
    let back = result["back"].as_str().expect("the redirect back");
    assert_eq!(param(back, "state").as_deref(), Some("st4te"), "{back}");
    let code = param(back, "code").expect("a code");
    let (status, body) = exchange(&app, &setup, &code, &verifier).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["patient"], setup.patient_id.as_str());
}
