//! Binding Patient records to wallets (issue 5): an admin client issues a one-time link code,
//! the patient redeems it on `[base]/auth/link` by signing the gateway's EIP-4361 message with
//! a wallet key (alloy's local signer, as tests/api/siwe.rs), and is then signed in; the
//! binding, its patient user and its history are checked in the database and through the
//! admin API. Every refusal writes nothing; unbinding frees the wallet and ends what the
//! patient user held; a record can then be bound again.

use alloy::signers::local::PrivateKeySigner;
use base64::Engine as _;
use gateway::auth::binding;
use gateway::auth::users::{self, Credential, Kind};
use gateway::store::Store;
use reqwest::Method;
use serde_json::{Value, json};

use crate::authorize::{Browser, Setup, approve_except, exchange, field, location, param, setup};
use crate::both;
use crate::client_kinds::{admin_request, backend_token};
use crate::helpers::TestApp;
use crate::siwe::{assert_refused, message_for, post_signed, sign, sign_in_page};

/// A new Patient; its id.
async fn new_patient(app: &TestApp) -> String {
    app.create(&json!({"resourceType": "Patient", "name": [{"family": "Okafor"}]}))
        .await
}

/// Issues a link code for `patient` with the admin token: the answer (201).
async fn issue(app: &TestApp, admin: &str, patient: &str) -> Value {
    let (status, _, _, body) = admin_request(
        app,
        Method::POST,
        &format!("auth/patients/{patient}/link-codes"),
        Some(admin),
        None,
    )
    .await;
    assert_eq!(status, 201, "{body}");
    body
}

/// The binding and history of `patient` through the admin API: status and body.
async fn binding_of(app: &TestApp, admin: &str, patient: &str) -> (u16, Value) {
    let (status, _, _, body) = admin_request(
        app,
        Method::GET,
        &format!("auth/patients/{patient}/binding"),
        Some(admin),
        None,
    )
    .await;
    (status, body)
}

async fn unbind(app: &TestApp, admin: &str, patient: &str) -> (u16, Value) {
    let (status, _, _, body) = admin_request(
        app,
        Method::DELETE,
        &format!("auth/patients/{patient}/binding"),
        Some(admin),
        None,
    )
    .await;
    (status, body)
}

/// The link page at `url` in `browser`: its HTML (200) and Content-Security-Policy.
async fn link_page(browser: &mut Browser, url: &str) -> (String, String) {
    let response = browser.get(url).await;
    assert_eq!(response.status(), 200);
    let csp = response.headers()["content-security-policy"]
        .to_str()
        .expect("ASCII")
        .to_owned();
    let page = response.text().await.expect("text");
    assert!(
        page.contains("<h1>Link your wallet to your health record</h1>"),
        "{page}"
    );
    (page, csp)
}

/// Posts the link form of `page` with `code`, `message` and `signature`.
async fn post_link(
    browser: &mut Browser,
    app: &TestApp,
    page: &str,
    code: &str,
    message: &str,
    signature: &str,
) -> reqwest::Response {
    browser
        .post(
            &app.url("auth/link"),
            &[
                ("csrf_token", field(page, "csrf_token").as_str()),
                ("code", code),
                ("message", message),
                ("signature", signature),
            ],
        )
        .await
}

/// Redeems `code` with `wallet` in a new browser: the browser (signed in) and the answer.
async fn redeem(
    app: &TestApp,
    code: &str,
    wallet: &PrivateKeySigner,
) -> (Browser, reqwest::Response) {
    let mut browser = Browser::new();
    let (page, _) = link_page(&mut browser, &app.url("auth/link")).await;
    let message = message_for(&mut browser, app, &page, wallet).await;
    let signature = sign(wallet, &message);
    let response = post_link(&mut browser, app, &page, code, &message, &signature).await;
    (browser, response)
}

/// A refusal on the link page (200 with an error summary saying `expected`).
async fn assert_link_refused(response: reqwest::Response, expected: &str) {
    assert_eq!(response.status(), 200, "the link page again");
    let page = response.text().await.expect("text");
    assert!(
        page.contains("There is a problem") && page.contains(expected),
        "expected {expected:?} on {page}"
    );
}

fn address(wallet: &PrivateKeySigner) -> String {
    format!("{:#x}", wallet.address())
}

/// The rows that bind `patient` in the database: (wallet, user id) of `patient_wallet`, and
/// the patient users naming it.
async fn rows_of(app: &TestApp, patient: &str) -> (Vec<(String, String)>, Vec<(String, String)>) {
    use sqlx::Row as _;
    let mut db = app.database_connection().await;
    let bindings =
        sqlx::query("SELECT wallet_address, user_id FROM patient_wallet WHERE patient_id = $1")
            .bind(patient)
            .fetch_all(&mut db)
            .await
            .expect("bindings")
            .iter()
            .map(|r| (r.get("wallet_address"), r.get("user_id")))
            .collect();
    let users = sqlx::query("SELECT wallet_address, user_id FROM auth_user WHERE fhir_user = $1")
        .bind(format!("Patient/{patient}"))
        .fetch_all(&mut db)
        .await
        .expect("users")
        .iter()
        .map(|r| (r.get("wallet_address"), r.get("user_id")))
        .collect();
    (bindings, users)
}

/// A standalone launch signed in with `wallet` at the sign-in page: the token answer.
async fn launch_with_wallet(app: &TestApp, setup: &Setup, wallet: &PrivateKeySigner) -> Value {
    let mut browser = Browser::new();
    let (page, _, verifier) = sign_in_page(&mut browser, app, setup).await;
    let message = message_for(&mut browser, app, &page, wallet).await;
    let response = post_signed(&mut browser, app, &page, &message, &sign(wallet, &message)).await;
    let approve = browser.page(&location(&response)).await;
    let back = approve_except(&mut browser, app, &approve, &[]).await;
    let code = param(&back, "code").expect("a code");
    let (status, body) = exchange(app, setup, &code, &verifier).await;
    assert_eq!(status, 200, "{body}");
    body
}

/// A wallet sign-in at the sign-in page that is refused: the wallet has no patient user.
async fn assert_cannot_sign_in(app: &TestApp, setup: &Setup, wallet: &PrivateKeySigner) {
    let mut browser = Browser::new();
    let (page, _, _) = sign_in_page(&mut browser, app, setup).await;
    let message = message_for(&mut browser, app, &page, wallet).await;
    let response = post_signed(&mut browser, app, &page, &message, &sign(wallet, &message)).await;
    assert_refused(response, "This wallet is not registered").await;
}

both!(
    link_codes_are_issued_to_admin_clients_for_patients_that_exist,
    async |app: TestApp| {
        let patient = new_patient(&app).await;
        let path = format!("auth/patients/{patient}/link-codes");
        let (_, admin) = backend_token(&app, true).await;
        let (_, other) = backend_token(&app, false).await;

        let (status, challenge, _, body) =
            admin_request(&app, Method::POST, &path, None, None).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (401, Some("invalid_request"))
        );
        assert!(challenge.is_some_and(|c| c.starts_with("Bearer")));
        let (status, _, _, body) =
            admin_request(&app, Method::POST, &path, Some("not-a-token"), None).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (401, Some("invalid_token"))
        );
        let (status, _, _, body) =
            admin_request(&app, Method::POST, &path, Some(&other), None).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (403, Some("insufficient_scope"))
        );

        // an unknown Patient, and a deleted one
        let (status, _, _, body) = admin_request(
            &app,
            Method::POST,
            "auth/patients/no-such-patient/link-codes",
            Some(&admin),
            None,
        )
        .await;
        assert_eq!(
            (status, body["error"].as_str()),
            (404, Some("not_found")),
            "{body}"
        );
        let gone = new_patient(&app).await;
        let deleted = app
            .client
            .delete(app.url(&format!("Patient/{gone}")))
            .send()
            .await
            .expect("sent");
        assert!(deleted.status().is_success());
        let (status, _, _, body) = admin_request(
            &app,
            Method::POST,
            &format!("auth/patients/{gone}/link-codes"),
            Some(&admin),
            None,
        )
        .await;
        assert_eq!(status, 404, "{body}");

        let issued = issue(&app, &admin, &patient).await;
        let code = issued["code"].as_str().expect("a code");
        assert_eq!(issued["patient"], patient.as_str());
        assert_eq!(code.len(), 19, "{code}");
        assert!(
            code.split('-').all(|g| g.len() == 4
                && g.bytes()
                    .all(|b| b"0123456789ABCDEFGHJKMNPQRSTVWXYZ".contains(&b))),
            "four groups of four base32 characters: {code}"
        );
        assert_eq!(
            issued["url"],
            format!("{}/auth/link?code={code}", app.base).as_str()
        );
        // seven days by default
        let expires = issued["expires_at"].as_str().expect("an instant");
        let expires = gateway::model::Instant::parse_fhir(expires).expect("a FHIR instant");
        let week = gateway::model::Instant::now().millis() + 7 * 24 * 3600 * 1000;
        assert!((expires.millis() - week).abs() < 60_000, "{issued}");
        // only its hash is stored
        let mut db = app.database_connection().await;
        let stored: Vec<String> = sqlx::query_scalar("SELECT code_hash FROM patient_link_code")
            .fetch_all(&mut db)
            .await
            .expect("codes");
        assert_eq!(stored.len(), 1);
        assert!(!stored[0].contains(&code.replace('-', "")) && stored[0].len() == 64);

        // the binding of a Patient never bound: none, no history
        let (status, body) = binding_of(&app, &admin, &patient).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            body,
            json!({"patient": patient, "binding": null, "history": []})
        );
        let (status, body) = binding_of(&app, &admin, "no-such-patient").await;
        assert_eq!((status, body["error"].as_str()), (404, Some("not_found")));
        let (status, _, _, _) = admin_request(
            &app,
            Method::GET,
            &format!("auth/patients/{patient}/binding"),
            Some(&other),
            None,
        )
        .await;
        assert_eq!(status, 403);
        let (status, body) = unbind(&app, &admin, &patient).await;
        assert_eq!((status, body["error"].as_str()), (404, Some("not_found")));

        // scripts may call the admin API cross-origin (as auth/clients); the link page is
        // the gateway's own (cookies): no CORS
        for (path, cors) in [(path.as_str(), true), ("auth/link", false)] {
            let response = app
                .client
                .request(Method::OPTIONS, app.url(path))
                .header("origin", "https://admin.example.org")
                .header("access-control-request-method", "POST")
                .send()
                .await
                .expect("sent");
            assert_eq!(
                response
                    .headers()
                    .get("access-control-allow-origin")
                    .is_some(),
                cors,
                "{path}"
            );
        }
    }
);

both!(
    a_patient_redeems_a_link_code_with_their_wallet_and_then_signs_in_with_it,
    async |app: TestApp| {
        let setup = setup(&app).await;
        let patient = new_patient(&app).await;
        let (admin_id, admin) = backend_token(&app, true).await;
        let issued = issue(&app, &admin, &patient).await;
        let code = issued["code"].as_str().expect("a code").to_owned();
        let wallet = PrivateKeySigner::random();

        // the link from the care provider opens the page with the code filled in
        let mut browser = Browser::new();
        let (page, csp) = link_page(&mut browser, issued["url"].as_str().expect("a URL")).await;
        assert_eq!(field(&page, "code"), code);
        assert!(
            page.contains(&format!("<script src=\"{}/auth/siwe.js\"", app.base))
                && page.contains("id=\"siwe-form\"")
                && page.contains("id=\"siwe-button\""),
            "the wallet button and its script: {page}"
        );
        assert!(
            csp.starts_with("default-src 'none'")
                && csp.contains(&format!("script-src {}/auth/siwe.js;", app.base))
                && csp.contains(&format!("connect-src {}/auth/siwe/message;", app.base)),
            "only the wallet script may run: {csp}"
        );
        let message = message_for(&mut browser, &app, &page, &wallet).await;
        let signature = sign(&wallet, &message);
        // the message's line breaks as CRLF, as a browser submits a form; the code as typed
        let typed = code.to_lowercase().replace('-', " ");
        let response = post_link(
            &mut browser,
            &app,
            &page,
            &typed,
            &message.replace('\n', "\r\n"),
            &signature,
        )
        .await;
        let next = location(&response);
        assert_eq!(next, format!("{}/auth/link?linked", app.base));
        let done = browser.page(&next).await;
        assert!(
            done.contains("Your wallet is now linked") && done.contains(&address(&wallet)),
            "{done}"
        );

        // the binding and its patient user, made together
        let (bindings, users) = rows_of(&app, &patient).await;
        assert_eq!(bindings.len(), 1);
        assert_eq!(
            bindings, users,
            "the binding names the patient user of the wallet"
        );
        assert_eq!(bindings[0].0, address(&wallet));
        let (status, body) = binding_of(&app, &admin, &patient).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["binding"]["wallet_address"], address(&wallet).as_str());
        assert_eq!(body["binding"]["user_id"], bindings[0].1.as_str());
        let history = body["history"].as_array().expect("a history");
        assert_eq!(history.len(), 1, "{body}");
        assert_eq!(history[0]["action"], "bind");
        assert_eq!(history[0]["actor"], "link-code");
        assert_eq!(history[0]["wallet_address"], address(&wallet).as_str());
        assert!(
            history[0]["at"]
                .as_str()
                .is_some_and(|at| at.ends_with('Z'))
        );

        // the code is used up: not again, from another browser with another wallet either
        let (_, response) = redeem(&app, &code, &PrivateKeySigner::random()).await;
        assert_link_refused(response, "already used").await;
        assert_eq!(rows_of(&app, &patient).await.0.len(), 1);

        // the patient signs in with the wallet and gets their own record
        let token = launch_with_wallet(&app, &setup, &wallet).await;
        assert_eq!(token["patient"], patient.as_str());

        // a newer code replaces an unused one; unbinding by the admin client is recorded
        let older = issue(&app, &admin, &patient).await;
        let newer = issue(&app, &admin, &patient).await;
        let (status, body) = unbind(&app, &admin, &patient).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["unbound"]["wallet_address"], address(&wallet).as_str());
        let other_wallet = PrivateKeySigner::random();
        let (_, response) =
            redeem(&app, older["code"].as_str().expect("a code"), &other_wallet).await;
        assert_link_refused(response, "not right").await;
        let (_, response) =
            redeem(&app, newer["code"].as_str().expect("a code"), &other_wallet).await;
        assert_eq!(
            location(&response),
            format!("{}/auth/link?linked", app.base)
        );
        let (_, body) = binding_of(&app, &admin, &patient).await;
        let actions: Vec<(&str, &str, &str)> = body["history"]
            .as_array()
            .expect("a history")
            .iter()
            .map(|c| {
                (
                    c["action"].as_str().expect("an action"),
                    c["actor"].as_str().expect("an actor"),
                    c["wallet_address"].as_str().expect("a wallet"),
                )
            })
            .collect();
        let (first, second) = (address(&wallet), address(&other_wallet));
        assert_eq!(
            actions,
            vec![
                ("bind", "link-code", first.as_str()),
                ("unbind", admin_id.as_str(), first.as_str()),
                ("bind", "link-code", second.as_str()),
            ]
        );
        assert_eq!(body["binding"]["wallet_address"], second.as_str());
    }
);

both!(
    wrong_used_and_expired_codes_are_refused_and_write_nothing,
    async |app: TestApp| {
        let patient = new_patient(&app).await;
        let (_, admin) = backend_token(&app, true).await;
        let issued = issue(&app, &admin, &patient).await;
        let code = issued["code"].as_str().expect("a code").to_owned();
        let wallet = PrivateKeySigner::random();
        let mut browser = Browser::new();
        let (page, _) = link_page(&mut browser, &app.url("auth/link")).await;
        let message = message_for(&mut browser, &app, &page, &wallet).await;
        let signature = sign(&wallet, &message);

        // no code, a malformed one, a wrong one
        let response = post_link(&mut browser, &app, &page, "", &message, &signature).await;
        assert_link_refused(response, "Enter the link code").await;
        let response = post_link(&mut browser, &app, &page, "12345", &message, &signature).await;
        assert_link_refused(response, "This link code is not right").await;
        let wrong = match code.strip_prefix('A') {
            Some(rest) => format!("B{rest}"),
            None => format!("A{}", code.get(1..).expect("a code")),
        };
        let response = post_link(&mut browser, &app, &page, &wrong, &message, &signature).await;
        assert_link_refused(response, "This link code is not right").await;
        // the code, but nothing signed
        let response = post_link(&mut browser, &app, &page, &code, "", "").await;
        assert_link_refused(response, "Sign the message with your wallet first").await;
        // the code, signed by another key than the message's address
        let forged = sign(&PrivateKeySigner::random(), &message);
        let response = post_link(&mut browser, &app, &page, &code, &message, &forged).await;
        assert_link_refused(response, "signature was not accepted").await;
        assert_eq!(
            rows_of(&app, &patient).await,
            (vec![], vec![]),
            "nothing written"
        );

        // an expired code (its expiry moved into the past)
        let mut db = app.database_connection().await;
        sqlx::query("UPDATE patient_link_code SET expires_at = 1")
            .execute(&mut db)
            .await
            .expect("expired");
        let response = post_link(&mut browser, &app, &page, &code, &message, &signature).await;
        assert_link_refused(response, "This link code has expired").await;
        assert_eq!(
            rows_of(&app, &patient).await,
            (vec![], vec![]),
            "nothing written"
        );
        let mut used: Vec<Option<i64>> =
            sqlx::query_scalar("SELECT used_at FROM patient_link_code")
                .fetch_all(&mut db)
                .await
                .expect("codes");
        assert_eq!(used.pop(), Some(None), "not used up");

        // none of the refusals spent the nonce: a fresh code and the same signature link
        let fresh = issue(&app, &admin, &patient).await;
        let response = post_link(
            &mut browser,
            &app,
            &page,
            fresh["code"].as_str().expect("a code"),
            &message,
            &signature,
        )
        .await;
        assert_eq!(
            location(&response),
            format!("{}/auth/link?linked", app.base)
        );
        assert_eq!(rows_of(&app, &patient).await.0.len(), 1);

        // a code whose Patient was deleted since: refused, nothing written
        let gone = new_patient(&app).await;
        let gone_code = issue(&app, &admin, &gone).await;
        let deleted = app
            .client
            .delete(app.url(&format!("Patient/{gone}")))
            .send()
            .await
            .expect("sent");
        assert!(deleted.status().is_success());
        let (_, response) = redeem(
            &app,
            gone_code["code"].as_str().expect("a code"),
            &PrivateKeySigner::random(),
        )
        .await;
        assert_link_refused(response, "no longer exists").await;
        assert_eq!(
            rows_of(&app, &gone).await,
            (vec![], vec![]),
            "nothing written"
        );

        // guessing stops: after five wrong codes in a browser session, no code is tried
        let mut guesser = Browser::new();
        let (page, _) = link_page(&mut guesser, &app.url("auth/link")).await;
        for _ in 0..4 {
            let response = post_link(&mut guesser, &app, &page, &wrong, "", "").await;
            assert_link_refused(response, "This link code is not right").await;
        }
        let response = post_link(&mut guesser, &app, &page, &wrong, "", "").await;
        assert_link_refused(response, "Too many wrong link codes").await;
        let another = issue(&app, &admin, &new_patient(&app).await).await;
        let response = post_link(
            &mut guesser,
            &app,
            &page,
            another["code"].as_str().expect("a code"),
            "",
            "",
        )
        .await;
        assert_link_refused(response, "Too many wrong link codes").await;

        // no CSRF token: refused before anything is looked at
        let response = guesser
            .post(
                &app.url("auth/link"),
                &[("code", another["code"].as_str().expect("a code"))],
            )
            .await;
        assert_eq!(response.status(), 403);
    }
);

both!(
    one_wallet_one_record_and_a_bound_record_is_unbound_before_it_is_bound_again,
    async |app: TestApp| {
        let setup = setup(&app).await;
        let (first, second) = (new_patient(&app).await, new_patient(&app).await);
        let (_, admin) = backend_token(&app, true).await;
        let wallet = PrivateKeySigner::random();
        let code = issue(&app, &admin, &first).await;
        let (mut linked_browser, response) =
            redeem(&app, code["code"].as_str().expect("a code"), &wallet).await;
        assert_eq!(
            location(&response),
            format!("{}/auth/link?linked", app.base)
        );
        // the patient holds a refresh token too
        let mut browser = Browser::new();
        let (page, _, verifier) = sign_in_page(&mut browser, &app, &setup).await;
        let message = message_for(&mut browser, &app, &page, &wallet).await;
        let response = post_signed(
            &mut browser,
            &app,
            &page,
            &message,
            &sign(&wallet, &message),
        )
        .await;
        let approve = browser.page(&location(&response)).await;
        let back = approve_except(&mut browser, &app, &approve, &[]).await;
        let (status, tokens) = exchange(
            &app,
            &setup,
            &param(&back, "code").expect("a code"),
            &verifier,
        )
        .await;
        assert_eq!(status, 200, "{tokens}");
        assert_eq!(tokens["patient"], first.as_str());

        // the wallet is bound: another record's code does not bind it, and stays unused
        let second_code = issue(&app, &admin, &second).await;
        let second_code = second_code["code"].as_str().expect("a code").to_owned();
        let (_, response) = redeem(&app, &second_code, &wallet).await;
        assert_link_refused(response, "One wallet can be linked to one record only").await;
        assert_eq!(rows_of(&app, &second).await, (vec![], vec![]));
        // the record is bound: a new code for it does not bind another wallet
        let again = issue(&app, &admin, &first).await;
        let again = again["code"].as_str().expect("a code").to_owned();
        let new_wallet = PrivateKeySigner::random();
        let (_, response) = redeem(&app, &again, &new_wallet).await;
        assert_link_refused(response, "must unlink it first").await;
        let (_, response) = redeem(&app, &again, &wallet).await;
        assert_link_refused(response, "already linked to this health record").await;
        let (bindings, _) = rows_of(&app, &first).await;
        assert_eq!(bindings.len(), 1);
        assert_eq!(bindings[0].0, address(&wallet));

        // unbound: the patient user goes, its session ends, its refresh token is revoked,
        // the wallet no longer signs in
        let (status, _) = unbind(&app, &admin, &first).await;
        assert_eq!(status, 200);
        assert_eq!(rows_of(&app, &first).await, (vec![], vec![]));
        let after = linked_browser.page(&app.url("auth/link?linked")).await;
        assert!(
            !after.contains("Your wallet is now linked"),
            "the session ended: {after}"
        );
        let access = tokens["access_token"].as_str().expect("an access token");
        let claims: Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(access.split('.').nth(1).expect("a JWT"))
                .expect("base64url"),
        )
        .expect("claims");
        let mut db = app.database_connection().await;
        let revoked: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM auth_revoked_jti WHERE jti = $1")
                .bind(claims["jti"].as_str().expect("a jti"))
                .fetch_one(&mut db)
                .await
                .expect("revoked");
        assert_eq!(revoked, 1, "the patient's access token is revoked");
        let live: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM auth_session WHERE user_id = $1 AND ended_at IS NULL",
        )
        .bind(bindings[0].1.as_str())
        .fetch_one(&mut db)
        .await
        .expect("sessions");
        assert_eq!(live, 0, "the patient user's sessions ended");
        assert_cannot_sign_in(&app, &setup, &wallet).await;
        let (status, _) = unbind(&app, &admin, &first).await;
        assert_eq!(status, 404, "not bound any more");

        // the refused code still works: the record is bound to the new wallet
        let (_, response) = redeem(&app, &again, &new_wallet).await;
        assert_eq!(
            location(&response),
            format!("{}/auth/link?linked", app.base)
        );
        let token = launch_with_wallet(&app, &setup, &new_wallet).await;
        assert_eq!(token["patient"], first.as_str());
        // and the old wallet is free for the other record
        let (_, response) = redeem(&app, &second_code, &wallet).await;
        assert_eq!(
            location(&response),
            format!("{}/auth/link?linked", app.base)
        );
        let token = launch_with_wallet(&app, &setup, &wallet).await;
        assert_eq!(token["patient"], second.as_str());
    }
);

both!(
    the_command_lines_user_add_and_disable_bind_and_unbind,
    async |app: TestApp| {
        let patient = new_patient(&app).await;
        let (_, admin) = backend_token(&app, true).await;
        let store = Store::connect(&app.database).await.expect("the store");
        let wallet = PrivateKeySigner::random();
        let add = |wallet: String, patient: String| {
            let store = &store;
            async move {
                users::add(
                    store,
                    Kind::Patient,
                    Credential::Wallet(wallet),
                    &format!("Patient/{patient}"),
                )
                .await
            }
        };
        let user = add(
            address(&wallet).to_uppercase().replace("0X", "0x"),
            patient.clone(),
        )
        .await
        .expect("bound");
        assert_eq!(
            user.wallet_address.as_deref(),
            Some(address(&wallet).as_str())
        );
        let (bindings, users_of) = rows_of(&app, &patient).await;
        assert_eq!(bindings, vec![(address(&wallet), user.user_id.clone())]);
        assert_eq!(bindings, users_of);

        // the same refusals as a link code
        let error = add(address(&PrivateKeySigner::random()), patient.clone())
            .await
            .expect_err("the record is bound");
        assert!(error.to_string().contains("unlink it first"), "{error}");
        let other = new_patient(&app).await;
        let error = add(address(&wallet), other.clone())
            .await
            .expect_err("the wallet is bound");
        assert!(error.to_string().contains("one record only"), "{error}");
        let error = add(
            address(&PrivateKeySigner::random()),
            "no-such-patient".to_owned(),
        )
        .await
        .expect_err("no such Patient");
        assert!(error.to_string().contains("no such Patient"), "{error}");

        // disabling the patient user unbinds; the wallet is free again
        assert!(
            users::disable(&store, &user.user_id)
                .await
                .expect("disabled")
        );
        assert_eq!(rows_of(&app, &patient).await, (vec![], vec![]));
        add(address(&wallet), other.clone())
            .await
            .expect("bound again");
        let shown = binding::status(&store, &patient)
            .await
            .expect("the database")
            .expect("a Patient");
        let history: Vec<(String, String)> = shown
            .history
            .iter()
            .map(|c| (c.action.clone(), c.actor.clone()))
            .collect();
        assert_eq!(
            history,
            vec![
                ("bind".to_owned(), "cli".to_owned()),
                ("unbind".to_owned(), "cli".to_owned())
            ]
        );
        assert!(shown.binding.is_none());
        // the CLI's link code and unbind are the admin API's
        let issued = binding::issue_code(&store, &patient, binding::CLI, 60, &app.base)
            .await
            .expect("the database")
            .expect("issued");
        store.close().await;
        let new_wallet = PrivateKeySigner::random();
        let (_, response) = redeem(&app, &issued.code, &new_wallet).await;
        assert_eq!(
            location(&response),
            format!("{}/auth/link?linked", app.base)
        );
        let (_, body) = binding_of(&app, &admin, &patient).await;
        assert_eq!(
            body["binding"]["wallet_address"],
            address(&new_wallet).as_str()
        );
        assert_eq!(body["history"].as_array().map(Vec::len), Some(3));
    }
);

/// The link page's own script in headless Chromium (`tests/browser/link-wallet.mjs`, as
/// tests/api/siwe.rs's wallet sign-in): with the code field empty it asks for the code; with
/// the code typed and a test wallet injected as `window.ethereum` (EIP-1193, signing in node
/// with Foundry's `cast`), the patient links the wallet and is signed in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patient_links_a_browser_wallet_in_chromium() {
    let app = crate::helpers::spawn_app(crate::helpers::Db::Sqlite).await;
    let setup = setup(&app).await;
    let patient = new_patient(&app).await;
    let (_, admin) = backend_token(&app, true).await;
    let issued = issue(&app, &admin, &patient).await;
    let wallet = PrivateKeySigner::random();
    let options = json!({
        "linkUrl": issued["url"],
        "privateKey": format!("0x{}", hex::encode(wallet.to_bytes())),
        "address": wallet.address().to_checksum(None),
    });
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser/link-wallet.mjs");
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
        result["noCode"]
            .as_str()
            .is_some_and(|s| s.contains("Enter the link code")),
        "without the code the page asks for it: {result}"
    );
    assert!(
        result["errors"].as_array().is_some_and(Vec::is_empty),
        "no script errors or CSP violations: {result}"
    );
    assert_eq!(result["heading"], "Your wallet is now linked", "{result}");
    assert!(
        result["text"]
            .as_str()
            .is_some_and(|t| t.contains(&address(&wallet))),
        "{result}"
    );
    let (bindings, _) = rows_of(&app, &patient).await;
    assert_eq!(bindings.len(), 1);
    assert_eq!(bindings[0].0, address(&wallet));
    // the wallet signs in from then on
    let token = launch_with_wallet(&app, &setup, &wallet).await;
    assert_eq!(token["patient"], patient.as_str());
}
