//! SMART enforcement on the FHIR API (issue 4, items 5, 7 and 8): with `[auth] required`,
//! every interaction needs a valid bearer token (401 otherwise, with `WWW-Authenticate`) and
//! honours its scopes (403 otherwise): restrictions and the patient compartment go into the
//! search query (totals, paging, includes, chains), reads and writes are checked on the
//! resource row, writes outside the scope are rolled back, Bundle entries run the same
//! checks. Tokens are signed with the gateway's own key, a fixture made per test.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use gateway::auth::keys::{SigningKey, generate_key_file};
use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{Db, FHIR_JSON, TestApp, diagnostics, match_ids, spawn_app_with};
use crate::on_both;

/// A gateway that requires tokens, with the key that signs them.
pub(crate) struct Secured {
    pub(crate) app: TestApp,
    key: SigningKey,
    _keys: tempfile::TempDir,
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs() as i64
}

/// A new key file in `dir`.
fn new_key(dir: &std::path::Path, name: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    generate_key_file(&path).expect("a new key");
    path
}

async fn secured_with(
    db: Db,
    key: std::path::PathBuf,
    previous: Vec<std::path::PathBuf>,
    keys: tempfile::TempDir,
) -> Secured {
    secured_configured(db, key, previous, keys, |_| {}).await
}

async fn secured_configured(
    db: Db,
    key: std::path::PathBuf,
    previous: Vec<std::path::PathBuf>,
    keys: tempfile::TempDir,
    adjust: impl FnOnce(&mut gateway::config::Config),
) -> Secured {
    let signing = SigningKey::load(&key).expect("the key");
    let app = spawn_app_with(db, |config| {
        config.auth.required = true;
        config.auth.signing_key_file = Some(key);
        config.auth.previous_signing_key_files = previous;
        adjust(config);
    })
    .await;
    Secured {
        app,
        key: signing,
        _keys: keys,
    }
}

async fn secured(db: Db) -> Secured {
    secured_adjusted(db, |_| {}).await
}

/// [`secured`], with more of the configuration adjusted.
pub(crate) async fn secured_adjusted(
    db: Db,
    adjust: impl FnOnce(&mut gateway::config::Config),
) -> Secured {
    let keys = tempfile::tempdir().expect("temporary directory");
    let key = new_key(keys.path(), "signing.pem");
    secured_configured(db, key, Vec::new(), keys, adjust).await
}

/// Valid claims for `app` with `scope`, then `extra` merged in.
fn claims(app: &TestApp, scope: &str, extra: Value) -> Value {
    let mut claims = json!({
        "iss": app.base,
        "aud": app.base,
        "sub": "test-client",
        "client_id": "test-client",
        "scope": scope,
        "iat": now(),
        "nbf": now(),
        "exp": now() + 300,
        "jti": uuid::Uuid::new_v4().to_string(),
    });
    if let (Some(claims), Value::Object(extra)) = (claims.as_object_mut(), extra) {
        claims.extend(extra);
    }
    claims
}

impl Secured {
    pub(crate) fn token(&self, scope: &str, extra: Value) -> String {
        self.key
            .sign(&claims(&self.app, scope, extra))
            .expect("signed")
    }

    /// A token that may do anything (to set up data).
    pub(crate) fn admin(&self) -> String {
        self.token("system/*.cruds", json!({}))
    }

    fn patient_token(&self, scope: &str, patient: &str) -> String {
        self.token(scope, json!({"patient": patient}))
    }

    async fn request(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> reqwest::Response {
        let mut request = self.app.client.request(method, self.app.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request
                .header("content-type", FHIR_JSON)
                .body(body.to_string());
        }
        request.send().await.expect("request sent")
    }

    pub(crate) async fn call(
        &self,
        method: Method,
        path: &str,
        token: &str,
        body: Option<&Value>,
    ) -> (u16, Value) {
        let response = self.request(method, path, Some(token), body).await;
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub(crate) async fn get(&self, path: &str, token: &str) -> (u16, Value) {
        self.call(Method::GET, path, token, None).await
    }

    pub(crate) async fn create(&self, resource: Value) -> String {
        let t = resource["resourceType"]
            .as_str()
            .expect("a type")
            .to_owned();
        let (status, body) = self
            .call(Method::POST, &t, &self.admin(), Some(&resource))
            .await;
        assert_eq!(status, 201, "{body}");
        body["id"].as_str().expect("an id").to_owned()
    }
}

fn patient(name: &str) -> Value {
    json!({"resourceType": "Patient", "name": [{"family": name}]})
}

fn observation(subject: &str, category: &str, code: &str) -> Value {
    json!({
        "resourceType": "Observation",
        "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": category}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
        "subject": {"reference": subject},
    })
}

/// The first issue's code and diagnostics of an OperationOutcome.
fn issue(outcome: &Value) -> (String, String) {
    (
        outcome["issue"][0]["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        outcome["issue"][0]["diagnostics"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    )
}

fn assert_forbidden(result: &(u16, Value), what: &str) {
    assert_eq!(result.0, 403, "{what}: {}", result.1);
    assert_eq!(issue(&result.1).0, "forbidden", "{what}: {}", result.1);
}

fn ids_of_type(bundle: &Value, resource_type: &str) -> Vec<String> {
    let mut ids: Vec<String> = bundle["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["resource"]["resourceType"] == resource_type)
        .map(|e| e["resource"]["id"].as_str().unwrap_or_default().to_owned())
        .collect();
    ids.sort();
    ids
}

on_both!(requests_without_a_valid_token_get_401, |db| async move {
    let s = secured(db).await;
    // no token
    let response = s.request(Method::GET, "Patient", None, None).await;
    assert_eq!(response.status().as_u16(), 401);
    let challenge = response
        .headers()
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert_eq!(challenge, format!("Bearer realm=\"{}\"", s.app.base));
    let outcome: Value = response.json().await.expect("an OperationOutcome");
    assert_eq!(outcome["resourceType"], "OperationOutcome");
    assert_eq!(issue(&outcome).0, "login");
    // what needs no token
    for open in [
        "metadata",
        ".well-known/smart-configuration",
        ".well-known/jwks.json",
    ] {
        let response = s.request(Method::GET, open, None, None).await;
        assert_eq!(response.status().as_u16(), 200, "{open}");
    }
    let health = s
        .app
        .client
        .get(s.app.base.replace("/fhir", "/health/live"))
        .send()
        .await
        .expect("sent");
    assert_eq!(health.status().as_u16(), 200);

    // bad tokens
    let other_keys = tempfile::tempdir().expect("temporary directory");
    let other = SigningKey::load(&new_key(other_keys.path(), "other.pem")).expect("a key");
    let base = s.app.base.clone();
    let forged = |extra: Value| s.token("system/*.rs", extra);
    let header = |alg: &str| {
        URL_SAFE_NO_PAD.encode(json!({"alg": alg, "typ": "JWT", "kid": s.key.kid()}).to_string())
    };
    let payload = URL_SAFE_NO_PAD.encode(claims(&s.app, "system/*.rs", json!({})).to_string());
    let hs256 = {
        let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        h.kid = Some(s.key.kid().to_owned());
        let public = serde_json::to_vec(s.key.public_jwk()).expect("JSON");
        jsonwebtoken::encode(
            &h,
            &claims(&s.app, "system/*.rs", json!({})),
            &jsonwebtoken::EncodingKey::from_secret(&public),
        )
        .expect("signed")
    };
    let cases: Vec<(&str, String, &str)> = vec![
        ("expired", forged(json!({"exp": now() - 120})), "expired"),
        (
            "not yet valid",
            forged(json!({"nbf": now() + 600})),
            "not valid yet",
        ),
        (
            "another audience",
            forged(json!({"aud": "https://elsewhere.example/fhir"})),
            "aud",
        ),
        (
            "another issuer",
            forged(json!({"iss": format!("{base}/other")})),
            "issuer",
        ),
        (
            "another key",
            other
                .sign(&claims(&s.app, "system/*.rs", json!({})))
                .expect("signed"),
            "not signed by a key of this server",
        ),
        (
            "alg none",
            format!("{}.{payload}.", header("none")),
            "not a JWT",
        ),
        ("HS256 with the public key", hs256, "algorithm"),
        ("garbage", "not-a-token".to_owned(), "not a JWT"),
    ];
    for (what, token, says) in cases {
        let response = s.request(Method::GET, "Patient", Some(&token), None).await;
        assert_eq!(response.status().as_u16(), 401, "{what}");
        let challenge = response
            .headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        assert!(
            challenge.starts_with(&format!("Bearer realm=\"{base}\", error=\"invalid_token\"")),
            "{what}: {challenge}"
        );
        let outcome: Value = response.json().await.expect("an OperationOutcome");
        let (code, diagnostics) = issue(&outcome);
        assert_eq!(code, "login", "{what}");
        assert!(diagnostics.contains(says), "{what}: {diagnostics}");
    }
    // a good one
    let (status, bundle) = s.get("Patient", &s.token("system/*.rs", json!({}))).await;
    assert_eq!(status, 200, "{bundle}");
});

on_both!(
    a_rotated_key_still_verifies_and_a_removed_one_does_not,
    |db| async move {
        let keys = tempfile::tempdir().expect("temporary directory");
        let old = new_key(keys.path(), "old.pem");
        let new = new_key(keys.path(), "new.pem");
        let old_key = SigningKey::load(&old).expect("the old key");
        let new_key_ = SigningKey::load(&new).expect("the new key");
        let s = secured_with(db, new.clone(), vec![old.clone()], keys).await;
        let old_token = old_key
            .sign(&claims(&s.app, "system/*.rs", json!({})))
            .expect("signed");
        let (status, body) = s.get("Patient", &old_token).await;
        assert_eq!(status, 200, "a token of the previous key verifies: {body}");
        let (status, _) = s.get("Patient", &s.token("system/*.rs", json!({}))).await;
        assert_eq!(status, 200, "and so does one of the new key");
        let (_, jwks) = s.get(".well-known/jwks.json", "").await;
        // the access-token keys (EC) in order; the RS256 ID-token key after them
        let kids: Vec<&str> = jwks["keys"]
            .as_array()
            .expect("keys")
            .iter()
            .filter(|k| k["kty"] == "EC")
            .filter_map(|k| k["kid"].as_str())
            .collect();
        assert_eq!(
            kids,
            [new_key_.kid(), old_key.kid()],
            "both published, the new first"
        );

        // the old key removed from the configuration: its tokens no longer verify
        let keys = tempfile::tempdir().expect("temporary directory");
        let newer = keys.path().join("new.pem");
        std::fs::copy(&new, &newer).expect("copied");
        let s = secured_with(db, newer, Vec::new(), keys).await;
        let old_token = old_key
            .sign(&claims(&s.app, "system/*.rs", json!({})))
            .expect("signed");
        let (status, outcome) = s.get("Patient", &old_token).await;
        assert_eq!(status, 401, "{outcome}");
    }
);

on_both!(each_interaction_needs_its_permission, |db| async move {
    let s = secured(db).await;
    let p = s.create(patient("Able")).await;
    let o = s
        .create(observation(&format!("Patient/{p}"), "laboratory", "1"))
        .await;
    let read_only = s.token("system/Patient.r", json!({}));
    let (status, _) = s.get(&format!("Patient/{p}"), &read_only).await;
    assert_eq!(status, 200);
    let (status, _) = s.get(&format!("Patient/{p}/_history/1"), &read_only).await;
    assert_eq!(status, 200, "vread");
    let (status, _) = s.get(&format!("Patient/{p}/_history"), &read_only).await;
    assert_eq!(status, 200, "instance history");
    let search = s.get("Patient", &read_only).await;
    assert_forbidden(&search, "search without s");
    assert!(
        issue(&search.1).1.contains("system/Patient.s"),
        "names the scope needed: {}",
        search.1
    );
    assert_forbidden(
        &s.get(&format!("Observation/{o}"), &read_only).await,
        "another type",
    );
    assert_forbidden(
        &s.get(&format!("Observation/{o}/$proof"), &read_only).await,
        "$proof of another type",
    );
    assert_forbidden(
        &s.call(Method::POST, "Patient", &read_only, Some(&patient("New")))
            .await,
        "create without c",
    );
    let mut changed = patient("Changed");
    changed["id"] = json!(p);
    assert_forbidden(
        &s.call(
            Method::PUT,
            &format!("Patient/{p}"),
            &read_only,
            Some(&changed),
        )
        .await,
        "update without u",
    );
    assert_forbidden(
        &s.call(Method::DELETE, &format!("Patient/{p}"), &read_only, None)
            .await,
        "delete without d",
    );
    let response = s
        .request(
            Method::DELETE,
            &format!("Patient/{p}"),
            Some(&read_only),
            None,
        )
        .await;
    let challenge = response
        .headers()
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        challenge.contains("error=\"insufficient_scope\""),
        "{challenge}"
    );
    // nothing changed
    let (_, stored) = s.get(&format!("Patient/{p}"), &s.admin()).await;
    assert_eq!(stored["name"][0]["family"], "Able");
    // $validate needs any valid token
    let validate = s
        .call(
            Method::POST,
            "Observation/$validate",
            &read_only,
            Some(&observation("Patient/x", "laboratory", "1")),
        )
        .await;
    assert_eq!(validate.0, 200, "{}", validate.1);
    // a write-only token cannot read
    let write_only = s.token("system/Patient.cud", json!({}));
    assert_forbidden(
        &s.get(&format!("Patient/{p}"), &write_only).await,
        "read without r",
    );
    let (status, _) = s
        .call(
            Method::POST,
            "Patient",
            &write_only,
            Some(&patient("Written")),
        )
        .await;
    assert_eq!(status, 201);
});

on_both!(
    a_restriction_is_part_of_the_search_and_the_read,
    |db| async move {
        let s = secured(db).await;
        let p = s.create(patient("Able")).await;
        let subject = format!("Patient/{p}");
        let mut labs = Vec::new();
        for code in ["1", "2", "3"] {
            labs.push(s.create(observation(&subject, "laboratory", code)).await);
        }
        let vital = s.create(observation(&subject, "vital-signs", "4")).await;
        let _vital2 = s.create(observation(&subject, "vital-signs", "5")).await;
        let token = s.patient_token("patient/Observation.rs?category=laboratory", &p);
        let (status, page1) = s.get("Observation?_count=2", &token).await;
        assert_eq!(status, 200, "{page1}");
        assert_eq!(
            page1["total"], 3,
            "the total counts only what the token may see"
        );
        assert_eq!(match_ids(&page1).len(), 2);
        let next = page1["link"]
            .as_array()
            .and_then(|l| l.iter().find(|l| l["relation"] == "next"))
            .and_then(|l| l["url"].as_str())
            .expect("a next link")
            .to_owned();
        let next = next
            .trim_start_matches(&format!("{}/", s.app.base))
            .to_owned();
        let (status, page2) = s.get(&next, &token).await;
        assert_eq!(status, 200, "{page2}");
        let mut seen: Vec<String> = match_ids(&page1)
            .into_iter()
            .chain(match_ids(&page2))
            .collect();
        seen.sort();
        labs.sort();
        assert_eq!(
            seen, labs,
            "the pages hold exactly the laboratory observations"
        );
        assert!(
            page2["link"]
                .as_array()
                .is_none_or(|l| l.iter().all(|l| l["relation"] != "next"))
        );
        let (_, count) = s.get("Observation?_summary=count", &token).await;
        assert_eq!(count["total"], 3);
        let (status, _) = s.get(&format!("Observation/{}", labs[0]), &token).await;
        assert_eq!(status, 200);
        assert_forbidden(
            &s.get(&format!("Observation/{vital}"), &token).await,
            "a read outside the restriction",
        );
        assert_forbidden(
            &s.get(&format!("Observation/{vital}/_history/1"), &token)
                .await,
            "a vread outside the restriction",
        );
        assert_forbidden(
            &s.get("Observation/_history", &token).await,
            "type history under a restricted scope",
        );
    }
);

on_both!(a_patient_token_sees_only_its_compartment, |db| async move {
    let s = secured(db).await;
    let a = s.create(patient("Able")).await;
    let b = s.create(patient("Baker")).await;
    let org = s
        .create(json!({"resourceType": "Organization", "name": "Clinic"}))
        .await;
    let a_obs = s
        .create(observation(&format!("Patient/{a}"), "laboratory", "1"))
        .await;
    let mut b_obs = observation(&format!("Patient/{b}"), "laboratory", "1");
    b_obs["performer"] = json!([{"reference": format!("Organization/{org}")}]);
    let b_obs = s.create(b_obs).await;
    // A's observation names B among its performers: following it must not reveal B
    let mut shared = observation(&format!("Patient/{a}"), "laboratory", "2");
    shared["performer"] = json!([
        {"reference": format!("Organization/{org}")},
        {"reference": format!("Patient/{b}")}
    ]);
    let shared = s.create(shared).await;
    let token = s.patient_token("patient/*.rs", &a);

    let (status, _) = s.get(&format!("Patient/{a}"), &token).await;
    assert_eq!(status, 200);
    assert_forbidden(
        &s.get(&format!("Patient/{b}"), &token).await,
        "another patient",
    );
    assert_forbidden(
        &s.get(&format!("Observation/{b_obs}"), &token).await,
        "another patient's observation",
    );
    let (status, _) = s.get(&format!("Organization/{org}"), &token).await;
    assert_eq!(
        status, 200,
        "types outside the compartment hold no patient data"
    );

    let (_, bundle) = s.get("Observation", &token).await;
    let mut expected = vec![a_obs.clone(), shared.clone()];
    expected.sort();
    assert_eq!(ids_of_type(&bundle, "Observation"), expected);
    assert_eq!(bundle["total"], 2);
    let (_, patients) = s.get("Patient", &token).await;
    assert_eq!(ids_of_type(&patients, "Patient"), [a.as_str()]);
    let (_, compartment) = s.get(&format!("Patient/{b}/Observation"), &token).await;
    assert_eq!(
        ids_of_type(&compartment, "Observation"),
        [shared.as_str()],
        "another patient's compartment: only what is in the token's compartment as well"
    );

    // includes and revincludes go through the same condition
    let (_, included) = s
        .get(
            "Observation?_include=Observation:subject&_include=Observation:performer",
            &token,
        )
        .await;
    assert_eq!(ids_of_type(&included, "Patient"), [a.as_str()]);
    assert_eq!(ids_of_type(&included, "Organization"), [org.as_str()]);
    let (_, revincluded) = s
        .get(
            &format!("Patient?_id={a},{b}&_revinclude=Observation:subject"),
            &token,
        )
        .await;
    assert_eq!(ids_of_type(&revincluded, "Patient"), [a.as_str()]);
    assert_eq!(ids_of_type(&revincluded, "Observation"), expected);
    // an admin sees B's too (the data is there)
    let (_, all) = s
        .get(
            &format!("Patient?_id={a},{b}&_revinclude=Observation:subject"),
            &s.admin(),
        )
        .await;
    assert_eq!(ids_of_type(&all, "Observation").len(), 3);

    // a chain or _has cannot reveal what is out of the compartment
    let (_, chained) = s
        .get("Observation?performer:Patient.name=Baker", &token)
        .await;
    assert_eq!(ids_of_type(&chained, "Observation"), Vec::<String>::new());
    let (_, chained) = s
        .get("Observation?performer:Patient.name=Baker", &s.admin())
        .await;
    assert_eq!(
        ids_of_type(&chained, "Observation"),
        [shared.as_str()],
        "the data is there"
    );
    let (_, has) = s
        .get(
            &format!("Organization?_has:Observation:performer:subject=Patient/{b}"),
            &s.admin(),
        )
        .await;
    assert_eq!(
        ids_of_type(&has, "Organization"),
        [org.as_str()],
        "the data is there"
    );
    let (_, has) = s
        .get(
            &format!("Organization?_has:Observation:performer:subject=Patient/{b}"),
            &token,
        )
        .await;
    assert_eq!(ids_of_type(&has, "Organization"), Vec::<String>::new());
    let (_, has_own) = s
        .get(
            &format!("Organization?_has:Observation:performer:subject=Patient/{a}"),
            &token,
        )
        .await;
    assert_eq!(ids_of_type(&has_own, "Organization"), [org.as_str()]);

    // a search across every type (no _type) is confined per type
    let (status, everything) = s.get("", &token).await;
    assert_eq!(status, 200, "{everything}");
    assert_eq!(ids_of_type(&everything, "Patient"), [a.as_str()]);
    assert_eq!(ids_of_type(&everything, "Observation"), expected);
    assert_eq!(ids_of_type(&everything, "Organization"), [org.as_str()]);
    assert_eq!(everything["total"], 4);
    let (_, typed) = s.get("?_type=Patient,Observation", &token).await;
    assert_eq!(typed["total"], 3, "{typed}");

    // history across a type is refused under a patient scope
    assert_forbidden(&s.get("Observation/_history", &token).await, "type history");
    assert_forbidden(&s.get("_history", &token).await, "system history");

    // no launch patient: refused with a clear message
    let lost = s.token("patient/*.rs", json!({}));
    let refused = s.get("Observation", &lost).await;
    assert_forbidden(&refused, "a patient/ token without a patient");
    assert!(
        issue(&refused.1).1.contains("launch patient"),
        "{}",
        refused.1
    );

    // a patient user's user/ scopes reach their own compartment only
    let user = s.token(
        "user/*.rs",
        json!({"user_kind": "patient", "fhirUser": format!("Patient/{b}"), "sub": "wallet-b"}),
    );
    let (_, own) = s.get("Observation", &user).await;
    let mut b_sees = vec![b_obs.clone(), shared.clone()];
    b_sees.sort();
    assert_eq!(ids_of_type(&own, "Observation"), b_sees);
    assert_forbidden(
        &s.get(&format!("Patient/{a}"), &user).await,
        "a patient user reading another",
    );
    // a practitioner's reach all patients
    let practitioner = s.token(
        "user/*.rs",
        json!({"user_kind": "practitioner", "fhirUser": "Practitioner/7", "sub": "dr"}),
    );
    let (_, every) = s.get("Observation", &practitioner).await;
    assert_eq!(ids_of_type(&every, "Observation").len(), 3);
});

on_both!(
    writes_outside_the_compartment_are_refused_and_nothing_is_written,
    |db| async move {
        let s = secured(db).await;
        let a = s.create(patient("Able")).await;
        let b = s.create(patient("Baker")).await;
        let b_obs = s
            .create(observation(&format!("Patient/{b}"), "laboratory", "1"))
            .await;
        let token = s.patient_token("patient/Observation.cruds", &a);

        assert_forbidden(
            &s.call(
                Method::POST,
                "Observation",
                &token,
                Some(&observation(&format!("Patient/{b}"), "laboratory", "9")),
            )
            .await,
            "creating for another patient",
        );
        let (_, nine) = s.get("Observation?code=9", &s.admin()).await;
        assert_eq!(nine["total"], 0, "nothing was written: {nine}");
        let (status, created) = s
            .call(
                Method::POST,
                "Observation",
                &token,
                Some(&observation(&format!("Patient/{a}"), "laboratory", "8")),
            )
            .await;
        assert_eq!(status, 201, "{created}");
        let own = created["id"].as_str().expect("an id").to_owned();

        // moving one's own observation to another patient is refused and rolled back
        let mut moved = observation(&format!("Patient/{b}"), "laboratory", "8");
        moved["id"] = json!(own);
        assert_forbidden(
            &s.call(
                Method::PUT,
                &format!("Observation/{own}"),
                &token,
                Some(&moved),
            )
            .await,
            "moving out of the compartment",
        );
        let (_, stored) = s.get(&format!("Observation/{own}"), &s.admin()).await;
        assert_eq!(stored["subject"]["reference"], format!("Patient/{a}"));
        assert_eq!(stored["meta"]["versionId"], "1");
        // the same through a patch
        let patch = s
        .app
        .client
        .patch(s.app.url(&format!("Observation/{own}")))
        .bearer_auth(&token)
        .header("content-type", "application/json-patch+json")
        .body(json!([{"op": "replace", "path": "/subject/reference", "value": format!("Patient/{b}")}]).to_string())
        .send()
        .await
        .expect("sent");
        assert_eq!(patch.status().as_u16(), 403);
        let (_, stored) = s.get(&format!("Observation/{own}"), &s.admin()).await;
        assert_eq!(stored["meta"]["versionId"], "1");

        // another patient's resources cannot be changed or deleted
        let mut b_changed = observation(&format!("Patient/{a}"), "laboratory", "1");
        b_changed["id"] = json!(b_obs);
        assert_forbidden(
            &s.call(
                Method::PUT,
                &format!("Observation/{b_obs}"),
                &token,
                Some(&b_changed),
            )
            .await,
            "updating another patient's",
        );
        assert_forbidden(
            &s.call(
                Method::DELETE,
                &format!("Observation/{b_obs}"),
                &token,
                None,
            )
            .await,
            "deleting another patient's",
        );
        let (status, stored) = s.get(&format!("Observation/{b_obs}"), &s.admin()).await;
        assert_eq!(status, 200);
        assert_eq!(stored["meta"]["versionId"], "1");
        // conditional delete only sees what the token may search
        let (status, outcome) = s
            .call(
                Method::DELETE,
                &format!("Observation?subject=Patient/{b}"),
                &token,
                None,
            )
            .await;
        assert_eq!(status, 200, "{outcome}");
        let (status, _) = s.get(&format!("Observation/{b_obs}"), &s.admin()).await;
        assert_eq!(status, 200, "not deleted");
        // one's own can be deleted
        let (status, _) = s
            .call(Method::DELETE, &format!("Observation/{own}"), &token, None)
            .await;
        assert_eq!(status, 200);
    }
);

on_both!(bundle_entries_are_enforced, |db| async move {
    let s = secured(db).await;
    let a = s.create(patient("Able")).await;
    let b = s.create(patient("Baker")).await;
    let a_obs = s
        .create(observation(&format!("Patient/{a}"), "laboratory", "1"))
        .await;
    let b_obs = s
        .create(observation(&format!("Patient/{b}"), "laboratory", "1"))
        .await;
    let token = s.patient_token("patient/Observation.cruds", &a);

    let batch = json!({
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {"request": {"method": "GET", "url": format!("Observation/{a_obs}")}},
            {"request": {"method": "GET", "url": format!("Observation/{b_obs}")}},
            {"resource": observation(&format!("Patient/{b}"), "laboratory", "7"),
             "request": {"method": "POST", "url": "Observation"}},
            {"resource": observation(&format!("Patient/{a}"), "laboratory", "6"),
             "request": {"method": "POST", "url": "Observation"}},
            {"request": {"method": "GET", "url": "Observation"}},
        ]
    });
    let (status, response) = s.call(Method::POST, "", &token, Some(&batch)).await;
    assert_eq!(status, 200, "{response}");
    let statuses: Vec<&str> = response["entry"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| e["response"]["status"].as_str().unwrap_or_default())
        .collect();
    assert!(statuses[0].starts_with("200"), "{statuses:?}");
    assert!(statuses[1].starts_with("403"), "{statuses:?}");
    assert!(statuses[2].starts_with("403"), "{statuses:?}");
    assert!(statuses[3].starts_with("201"), "{statuses:?}");
    assert!(statuses[4].starts_with("200"), "{statuses:?}");
    let searched = &response["entry"][4]["resource"];
    assert!(
        !ids_of_type(searched, "Observation").contains(&b_obs),
        "a search entry is confined too"
    );
    let (_, seven) = s.get("Observation?code=7", &s.admin()).await;
    assert_eq!(seven["total"], 0);

    let transaction = json!({
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"resource": observation(&format!("Patient/{a}"), "laboratory", "5"),
             "request": {"method": "POST", "url": "Observation"}},
            {"resource": observation(&format!("Patient/{b}"), "laboratory", "5"),
             "request": {"method": "POST", "url": "Observation"}},
        ]
    });
    let refused = s.call(Method::POST, "", &token, Some(&transaction)).await;
    assert_forbidden(&refused, "a transaction with one entry out of scope");
    let (_, five) = s.get("Observation?code=5", &s.admin()).await;
    assert_eq!(five["total"], 0, "nothing of the transaction was written");

    let read_only = s.patient_token("patient/Observation.rs", &a);
    let refused = s
        .call(Method::POST, "", &read_only, Some(&transaction))
        .await;
    assert_forbidden(&refused, "a transaction creating without c");
});

on_both!(
    a_request_cannot_widen_its_tokens_purpose_of_use,
    |db| async move {
        let s = secured(db).await;
        let treatment = s.token("system/*.rs", json!({}));
        let research = s.token("system/*.rs", json!({"purpose_of_use": "HRESCH"}));
        let with_purpose = |token: &str, purpose: &str| {
            s.app
                .client
                .get(s.app.url("Patient"))
                .bearer_auth(token)
                .header("X-Purpose-Of-Use", purpose)
                .send()
        };
        let status = |r: reqwest::Response| r.status().as_u16();
        assert_eq!(
            status(with_purpose(&treatment, "TREAT").await.expect("sent")),
            200
        );
        assert_eq!(
            status(with_purpose(&treatment, "HRESCH").await.expect("sent")),
            403,
            "a treatment token cannot be used for research"
        );
        assert_eq!(
            status(with_purpose(&research, "HRESCH").await.expect("sent")),
            200
        );
        assert_eq!(
            status(with_purpose(&research, "TREAT").await.expect("sent")),
            403,
            "nor a research token for treatment"
        );
    }
);

// A Backend Services client (ES384 fixture key) gets a token at the token endpoint and
// pushes a transaction with it; its scopes hold on the API.
on_both!(
    a_backend_service_token_from_the_token_endpoint_works_on_the_api,
    |db| async move {
        use gateway::auth::clients::{self, NewClient};
        let s = secured(db).await;
        let key = jsonwebtoken::EncodingKey::from_ec_pem(include_bytes!(
            "../fixtures/auth/test-client-es384.pem"
        ))
        .expect("the P-384 fixture");
        let mut jwk =
            jsonwebtoken::jwk::Jwk::from_encoding_key(&key, jsonwebtoken::Algorithm::ES384)
                .expect("a public JWK");
        jwk.common.key_id = Some("lab-1".to_owned());
        let store = gateway::store::Store::connect(&s.app.database)
            .await
            .expect("the store");
        let client = clients::register(
            &store,
            NewClient::backend(
                "Lab system",
                json!({"keys": [jwk]}).to_string(),
                "system/Observation.cruds system/Patient.rs",
            ),
        )
        .await
        .expect("registered")
        .client;
        store.close().await;
        let token_url = format!("{}/auth/token", s.app.base);
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES384);
        header.kid = Some("lab-1".to_owned());
        let assertion = jsonwebtoken::encode(
            &header,
            &json!({
                "iss": client.client_id, "sub": client.client_id, "aud": token_url,
                "exp": now() + 240, "jti": uuid::Uuid::new_v4().to_string(),
            }),
            &key,
        )
        .expect("signed");
        let response = s
            .app
            .client
            .post(&token_url)
            .form(&[
                ("grant_type", "client_credentials"),
                (
                    "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                ),
                ("client_assertion", assertion.as_str()),
                ("scope", "system/Observation.cruds system/Patient.rs"),
            ])
            .send()
            .await
            .expect("sent");
        assert_eq!(response.status().as_u16(), 200);
        let granted: Value = response.json().await.expect("JSON");
        let token = granted["access_token"]
            .as_str()
            .expect("a token")
            .to_owned();

        let p = s.create(patient("Able")).await;
        let transaction = json!({
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [
                {"resource": observation(&format!("Patient/{p}"), "laboratory", "1"),
                 "request": {"method": "POST", "url": "Observation"}},
                {"resource": observation(&format!("Patient/{p}"), "laboratory", "2"),
                 "request": {"method": "POST", "url": "Observation"}},
            ]
        });
        let (status, response) = s.call(Method::POST, "", &token, Some(&transaction)).await;
        assert_eq!(status, 200, "{response}");
        let (_, found) = s
            .get(&format!("Observation?subject=Patient/{p}"), &token)
            .await;
        assert_eq!(found["total"], 2);
        // but not a Patient write, which it was not granted
        assert_forbidden(
            &s.call(Method::POST, "Patient", &token, Some(&patient("New")))
                .await,
            "a create the client may not do",
        );
    }
);

on_both!(
    a_revoked_token_is_refused_within_a_second,
    async |db: Db| {
        let s = secured(db).await;
        let jti = uuid::Uuid::new_v4().to_string();
        let token = s.token("system/*.rs", json!({"jti": jti}));
        // verified once, then remembered: the revocation must still reach it
        assert_eq!(s.get("Patient", &token).await.0, 200);
        let mut conn = s.app.database_connection().await;
        sqlx::query("INSERT INTO auth_revoked_jti (jti, expires_at) VALUES ($1, $2)")
            .bind(&jti)
            .bind(now() + 300)
            .execute(&mut conn)
            .await
            .expect("revoked");
        // the revocation list is at most a second old: wait for it, up to a deadline
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let (status, outcome) = s.get("Patient", &token).await;
            if status == 401 {
                assert!(diagnostics(&outcome).contains("revoked"), "{outcome}");
                break;
            }
            assert_eq!(status, 200);
            assert!(
                std::time::Instant::now() < deadline,
                "the revoked token is still served"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        // another token of the same client is not affected
        assert_eq!(s.get("Patient", &s.admin()).await.0, 200);
    }
);
