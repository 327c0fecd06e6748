//! Consent recorded on chain from the SMART approval page (issue 5, item 6), against a real
//! anvil and a consent-enforcing gateway (tests/api/consent.rs's world), on both backends: a
//! patient signs in with their wallet, the approval page offers to record the consent, the
//! gateway builds the grant for the wallet to sign from the pending request, a local key signs
//! the typed data as a browser wallet would (`eth_signTypedData_v4`), and the approval relays
//! it before the code is issued; the app can then read what was granted and nothing else. A
//! bad signature shows the page again and approves nothing; an unticked box approves as
//! before. Then the page's own script in headless Chromium with an injected test wallet.

use alloy::primitives::{Address, B256, Bytes, U256};
use alloy::signers::SignerSync as _;
use alloy::signers::local::PrivateKeySigner;
use anchor::consent::{GrantRequest, grantee_of_client, signing_hash_grant};
use gateway::auth::clients::{self, ClientKind, NewClient};
use gateway::auth::users::{self, Credential, Kind};
use gateway::store::Store;
use serde_json::{Value, json};

use crate::authorize::{
    Browser, REDIRECT_URI, Setup, authorize_url_with, exchange, field, location, param, pkce,
};
use crate::consent::{World, now, world};
use crate::helpers::Db;
use crate::siwe::{message_for, post_signed, sign};

/// What the app asks for.
const SCOPES: &str = "openid fhirUser launch/patient patient/Observation.rs patient/Condition.rs";
const CONSENT_BOX: &str = "Also record this consent on the blockchain";

/// A patient (with an Observation and a Condition) whose wallet is bound to their record,
/// and a registered app.
struct Scene {
    setup: Setup,
    wallet: PrivateKeySigner,
    observation: String,
    condition: String,
}

async fn scene(w: &World) -> Scene {
    let patient_id = w
        .create(json!({"resourceType": "Patient", "name": [{"family": "Chalmers"}]}))
        .await;
    let subject = json!({"reference": format!("Patient/{patient_id}")});
    let observation = w
        .create(json!({"resourceType": "Observation", "status": "final",
                       "code": {"coding": [{"system": "http://loinc.org", "code": "4548-4"}]},
                       "subject": subject}))
        .await;
    let condition = w
        .create(
            json!({"resourceType": "Condition", "subject": subject, "code": {"text": "asthma"}}),
        )
        .await;
    let store = Store::connect(&w.app.database).await.expect("the store");
    let client = clients::register(
        &store,
        NewClient::app("Growth Chart", ClientKind::Public, REDIRECT_URI, SCOPES),
    )
    .await
    .expect("registered")
    .client;
    let wallet = PrivateKeySigner::random();
    let user = users::add(
        &store,
        Kind::Patient,
        Credential::Wallet(format!("{:#x}", wallet.address())),
        &format!("Patient/{patient_id}"),
    )
    .await
    .expect("the patient user, bound to the wallet");
    store.close().await;
    Scene {
        setup: Setup {
            client_id: client.client_id,
            patient_id,
            patient_user_id: user.user_id,
        },
        wallet,
        observation,
        condition,
    }
}

/// The patient's standalone launch up to the approval page: the browser, the page, its
/// Content-Security-Policy and the PKCE verifier.
async fn approval_page(w: &World, s: &Scene) -> (Browser, String, String, String) {
    let app = &w.app;
    let mut browser = Browser::new();
    let (verifier, challenge) = pkce();
    let url = authorize_url_with(
        app,
        &s.setup.client_id,
        &challenge,
        &[("scope", Some(SCOPES))],
    );
    let next = location(&browser.get(&url).await);
    let sign_in = browser.page(&next).await;
    let message = message_for(&mut browser, app, &sign_in, &s.wallet).await;
    let response = post_signed(
        &mut browser,
        app,
        &sign_in,
        &message,
        &sign(&s.wallet, &message),
    )
    .await;
    let response = browser.get(&location(&response)).await;
    assert_eq!(response.status(), 200);
    let csp = response.headers()["content-security-policy"]
        .to_str()
        .expect("ASCII")
        .to_owned();
    let page = response.text().await.expect("text");
    (browser, page, csp, verifier)
}

/// The form of the approval page `page` with `scopes` ticked, plus `extra`.
fn approval_form(page: &str, scopes: &[&str], extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut form = vec![
        ("csrf_token".to_owned(), field(page, "csrf_token")),
        ("request".to_owned(), field(page, "request")),
    ];
    form.extend(scopes.iter().map(|s| ("scope".to_owned(), (*s).to_owned())));
    form.extend(
        extra
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    form
}

async fn post(browser: &mut Browser, url: &str, form: &[(String, String)]) -> reqwest::Response {
    let pairs: Vec<(&str, &str)> = form.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    browser.post(url, &pairs).await
}

/// The grant of the typed data's message (what a wallet shows and signs).
fn grant_of(typed: &Value) -> GrantRequest {
    let m = &typed["message"];
    let text = |name: &str| m[name].as_str().unwrap_or_else(|| panic!("{name} in {m}"));
    GrantRequest {
        patient: text("patient").parse().expect("an address"),
        grantee: text("grantee").parse().expect("32 bytes"),
        resource_types: m["resourceTypes"]
            .as_array()
            .expect("types")
            .iter()
            .map(|t| t.as_str().expect("a type").to_owned())
            .collect(),
        purpose: text("purpose").to_owned(),
        expires_at: text("expiresAt").parse().expect("a number"),
        nonce: text("nonce").parse().expect("a number"),
        deadline: text("deadline").parse().expect("a number"),
    }
}

/// `eth_signTypedData_v4` of `typed` with `key`: the EIP-712 digest of its domain and
/// message, signed (65 bytes, hex).
fn sign_typed(key: &PrivateKeySigner, typed: &Value) -> String {
    let domain = &typed["domain"];
    let chain_id = domain["chainId"].as_u64().expect("the chain id");
    let registry: Address = domain["verifyingContract"]
        .as_str()
        .expect("the registry")
        .parse()
        .expect("an address");
    let hash: B256 = signing_hash_grant(chain_id, registry, &grant_of(typed));
    let signature = key.sign_hash_sync(&hash).expect("signs");
    format!(
        "0x{}",
        hex::encode(Bytes::from(signature.as_bytes().to_vec()))
    )
}

/// Asks the gateway for the grant to sign with `scopes` ticked: status and JSON.
async fn typed_data(
    browser: &mut Browser,
    w: &World,
    page: &str,
    scopes: &[&str],
    expiry: &str,
) -> (u16, Value) {
    let form = approval_form(page, scopes, &[("consent_expiry", expiry)]);
    let response = post(browser, &w.app.url("auth/approve/consent"), &form).await;
    let status = response.status().as_u16();
    (status, response.json().await.expect("JSON"))
}

const TICKED: [&str; 4] = [
    "openid",
    "fhirUser",
    "launch/patient",
    "patient/Observation.rs",
];

macro_rules! on_both {
    ($name:ident, $body:expr) => {
        mod $name {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                ($body)(Db::Postgres).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                ($body)(Db::Sqlite).await;
            }
        }
    };
}

on_both!(
    approving_an_app_records_the_patients_consent_on_chain,
    |db| async move {
        let w = world(db, |_| {}).await;
        let s = scene(&w).await;
        let app_token = w.token(&s.setup.client_id, "system/*.rs", json!({}));
        let (status, _) = w
            .get(&format!("Observation/{}", s.observation), &app_token)
            .await;
        assert_eq!(status, 403, "no consent yet");

        let (mut browser, page, csp, verifier) = approval_page(&w, &s).await;
        assert!(
            page.contains(CONSENT_BOX)
                && page.contains("name=\"consent\" value=\"record\" checked")
                && page.contains("Condition, Observation")
                && page.contains("No health data goes on the blockchain")
                && page.contains("Until I revoke it"),
            "the offer, ticked, in plain words: {page}"
        );
        assert!(
            csp.contains(&format!("script-src {};", w.app.url("auth/consent.js")))
                && csp.contains(&format!(
                    "connect-src {};",
                    w.app.url("auth/approve/consent")
                )),
            "only the consent script may run, and fetch only the grant: {csp}"
        );

        // the grant to sign, for the scopes left ticked (Condition unticked)
        let (status, body) = typed_data(&mut browser, &w, &page, &TICKED, "1y").await;
        assert_eq!(status, 200, "{body}");
        let typed = &body["typedData"];
        assert_eq!(typed["primaryType"], "Grant");
        let grant = grant_of(typed);
        assert_eq!(grant.patient, s.wallet.address());
        assert_eq!(grant.grantee, grantee_of_client(&s.setup.client_id));
        assert_eq!(grant.resource_types, vec!["Observation".to_owned()]);
        assert_eq!(grant.purpose, "TREAT");
        let year = now() as u64 + 365 * 86_400;
        assert!(
            grant.expires_at.abs_diff(year) < 120,
            "{}",
            grant.expires_at
        );
        assert!(grant.deadline > U256::from(now() as u64), "{typed}");

        // no kind of data ticked: nothing to consent to
        let (status, body) = typed_data(&mut browser, &w, &page, &["openid"], "1y").await;
        assert_eq!(status, 400, "{body}");
        assert!(
            body["error"]
                .as_str()
                .is_some_and(|e| e.contains("at least one kind of data")),
            "{body}"
        );

        // without the session's CSRF token: no grant to sign
        let response = browser
            .post(
                &w.app.url("auth/approve/consent"),
                &[
                    ("request", field(&page, "request").as_str()),
                    ("consent_expiry", "1y"),
                ],
            )
            .await;
        assert_eq!(response.status(), 403);

        let approve_url = w.app.url("auth/approve");
        let signed = |signature: &str| {
            let mut extra = vec![
                ("decision", "approve"),
                ("consent", "record"),
                ("consent_expiry", "1y"),
            ];
            extra.push(("consent_signature", signature));
            approval_form(&page, &TICKED, &extra)
        };
        // the box ticked but nothing signed, then signed by another key: the page again,
        // nothing approved, nothing on chain
        for (signature, expected) in [
            ("", "Your wallet has not signed the consent"),
            (
                sign_typed(&PrivateKeySigner::random(), typed).as_str(),
                "not the signature of the wallet linked to your record",
            ),
        ] {
            let response = post(&mut browser, &approve_url, &signed(signature)).await;
            assert_eq!(response.status(), 200, "the approval page again");
            let again = response.text().await.expect("text");
            assert!(
                again.contains("There is a problem")
                    && again.contains("href=\"#consent-record\"")
                    && again.contains(expected)
                    && again.contains("Nothing was allowed"),
                "{expected:?} on {again}"
            );
        }
        assert_eq!(w.reader.grant_count().await.expect("the registry"), 0);

        // fields the page changes after signing are not what the gateway relays
        let changed = approval_form(
            &page,
            &TICKED,
            &[
                ("decision", "approve"),
                ("consent", "record"),
                ("consent_expiry", "revoked"),
                ("consent_signature", &sign_typed(&s.wallet, typed)),
            ],
        );
        let response = post(&mut browser, &approve_url, &changed).await;
        assert_eq!(response.status(), 200);
        assert!(
            response
                .text()
                .await
                .expect("text")
                .contains("changed after your wallet signed")
        );
        assert_eq!(w.reader.grant_count().await.expect("the registry"), 0);

        // the patient's wallet signs: the grant is on chain, then the code goes to the app
        let response = post(
            &mut browser,
            &approve_url,
            &signed(&sign_typed(&s.wallet, typed)),
        )
        .await;
        let back = location(&response);
        assert!(back.starts_with(REDIRECT_URI), "{back}");
        let code = param(&back, "code").expect("a code");
        assert_eq!(w.reader.grant_count().await.expect("the registry"), 1);
        let on_chain = w.reader.grant(1, None).await.expect("the grant");
        assert_eq!(on_chain.patient, s.wallet.address());
        assert_eq!(on_chain.grantee, grantee_of_client(&s.setup.client_id));
        assert_eq!(on_chain.resource_types, vec!["Observation".to_owned()]);
        assert_eq!(on_chain.purpose, "TREAT");
        assert_eq!(on_chain.expires_at, grant.expires_at);
        w.seen(on_chain.granted_block).await;

        let (status, token) = exchange(&w.app, &s.setup, &code, &verifier).await;
        assert_eq!(status, 200, "{token}");
        assert_eq!(token["patient"], s.setup.patient_id.as_str());
        let patient_token = token["access_token"].as_str().expect("a token");
        let (status, _) = w
            .get(&format!("Observation/{}", s.observation), patient_token)
            .await;
        assert_eq!(status, 200);
        // the app itself, by its grantee: what the patient granted, nothing else
        let (status, observation) = w
            .get(&format!("Observation/{}", s.observation), &app_token)
            .await;
        assert_eq!(status, 200, "{observation}");
        let (status, _) = w
            .get(&format!("Condition/{}", s.condition), &app_token)
            .await;
        assert_eq!(status, 403, "Condition was unticked");

        // the box unticked: approved as before, nothing more on chain
        let (mut browser, page, _, _) = approval_page(&w, &s).await;
        let form = approval_form(
            &page,
            &TICKED,
            &[("decision", "approve"), ("consent_expiry", "1y")],
        );
        let back = location(&post(&mut browser, &approve_url, &form).await);
        assert!(param(&back, "code").is_some(), "{back}");
        assert_eq!(w.reader.grant_count().await.expect("the registry"), 1);
    }
);

/// The approval page's own script in headless Chromium (`tests/browser/approve-consent.mjs`,
/// as tests/api/siwe.rs's wallet sign-in): a test wallet injected as `window.ethereum` signs
/// in (`personal_sign`) and signs the grant (`eth_signTypedData_v4`, answered in node by
/// Foundry's `cast wallet sign --data`); the patient allows the app with the box ticked and
/// lands on the app with a code; the grant is on chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patient_records_consent_on_the_approval_page_in_chromium() {
    let w = world(Db::Sqlite, |_| {}).await;
    let s = scene(&w).await;
    let (verifier, challenge) = pkce();
    let options = json!({
        "authorizeUrl": authorize_url_with(&w.app, &s.setup.client_id, &challenge, &[("scope", Some(SCOPES))]),
        "privateKey": format!("0x{}", hex::encode(s.wallet.to_bytes())),
        "address": s.wallet.address().to_checksum(None),
        "redirectUri": REDIRECT_URI,
        "untick": "patient/Condition.rs",
    });
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/browser/approve-consent.mjs"
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
    assert!(
        result["errors"].as_array().is_some_and(Vec::is_empty),
        "no script errors or CSP violations: {result}"
    );
    assert!(
        result["offer"]
            .as_str()
            .is_some_and(|t| t.contains("No health data goes on the blockchain")),
        "{result}"
    );
    assert_eq!(
        result["signedTypedData"], 1,
        "the wallet signed one grant: {result}"
    );
    let back = result["back"].as_str().expect("the redirect back");
    assert_eq!(param(back, "state").as_deref(), Some("st4te"), "{back}");
    let code = param(back, "code").expect("a code");
    assert_eq!(w.reader.grant_count().await.expect("the registry"), 1);
    let on_chain = w.reader.grant(1, None).await.expect("the grant");
    assert_eq!(on_chain.patient, s.wallet.address());
    assert_eq!(on_chain.grantee, grantee_of_client(&s.setup.client_id));
    assert_eq!(on_chain.resource_types, vec!["Observation".to_owned()]);
    assert_eq!(on_chain.purpose, "TREAT");
    let (status, body) = exchange(&w.app, &s.setup, &code, &verifier).await;
    assert_eq!(status, 200, "{body}");
}
