//! On-chain consent enforced on the FHIR API (issue 5), against a real anvil with the
//! ConsentRegistry the gateway deploys: patients' grants are EIP-712 signatures relayed on
//! chain, the gateway's follower indexes them, and every read path answers to that index:
//! a grant opens exactly its types for its grantee and purpose (not through includes,
//! revincludes, chains or `$everything`), a revocation closes access at the next request after
//! the gateway saw its block, an expired grant counts for nothing, a reorg that removes a grant
//! removes access, a chain out of reach makes patient reads fail closed (503), a patient
//! always reads their own record, and break-the-glass is served, recorded and flagged.

use std::time::{Duration, Instant};

use alloy::primitives::{Address, B256, Bytes, U256};
use alloy::signers::SignerSync as _;
use alloy::signers::local::PrivateKeySigner;
use anchor::chain::{ChainConfig as ClientConfig, SignerKey};
use anchor::consent::{
    ConsentReader, ConsentRelayer, GrantRequest, RevokeRequest, grantee_of_client,
    signing_hash_grant, signing_hash_revoke,
};
use gateway::auth::keys::{SigningKey, generate_key_file};
use gateway::config::{ChainMode, ConsentDenied};
use serde_json::{Value, json};

use crate::anchoring::{Anvil, KEY};
use crate::helpers::{Db, FHIR_JSON, TestApp, spawn_app_with};

/// anvil's second dev account (a published test key): the gateway's relayer. The test relays
/// with a key of its own, funded on the spot, so that the two never share nonces.
const GATEWAY_RELAYER_KEY: &str =
    "59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d";

/// A consent-enforcing gateway on its own anvil, with what the test needs to act on chain.
pub(crate) struct World {
    pub(crate) app: TestApp,
    anvil: Anvil,
    key: SigningKey,
    relayer: ConsentRelayer,
    pub(crate) reader: ConsentReader,
    _keys: tempfile::TempDir,
}

pub(crate) fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs() as i64
}

pub(crate) async fn world(db: Db, adjust: impl FnOnce(&mut gateway::config::Config)) -> World {
    let anvil = Anvil::start(0, &[]);
    let keys = tempfile::tempdir().expect("temporary directory");
    let key_file = keys.path().join("signing.pem");
    generate_key_file(&key_file).expect("a key");
    let key = SigningKey::load(&key_file).expect("the key");
    let url = anvil.url.clone();
    let app = spawn_app_with(db, |config| {
        config.chain.mode = ChainMode::Rpc;
        config.chain.rpc_url = Some(url.clone().into());
        config.chain.signer_key = Some(KEY.to_owned().into());
        config.chain.confirmations = 1;
        config.chain.poll_interval_ms = 10;
        config.consent.enforce = true;
        config.consent.relayer_key = Some(GATEWAY_RELAYER_KEY.to_owned().into());
        config.consent.confirmations = 1;
        config.consent.poll_interval_ms = 20;
        config.consent.max_lag_secs = 3;
        config.auth.required = true;
        config.auth.signing_key_file = Some(key_file);
        adjust(config);
    })
    .await;
    let health = until_consent(&app, |c| c["status"] == "pass").await;
    let registry: Address = health["registry"]
        .as_str()
        .expect("the registry")
        .parse()
        .expect("an address");
    let config = ClientConfig {
        confirmations: 1,
        poll_interval: Duration::from_millis(10),
        ..ClientConfig::default()
    };
    let test_key = SignerKey::generate().expect("a key");
    anchor::chain::set_dev_balance(
        &anvil.url,
        test_key.address(),
        U256::from(10u64).pow(U256::from(21u64)),
    )
    .await
    .expect("funded");
    let relayer = ConsentRelayer::connect(&anvil.url, test_key, registry, config)
        .await
        .expect("the test's relayer");
    let reader = relayer.reader();
    World {
        app,
        anvil,
        key,
        relayer,
        reader,
        _keys: keys,
    }
}

/// The consent check of `/health/ready`, once `done` holds of it.
async fn until_consent(app: &TestApp, done: impl Fn(&Value) -> bool) -> Value {
    let url = app.base.replace("/fhir", "/health/ready");
    let started = Instant::now();
    loop {
        let ready: Value = app
            .client
            .get(&url)
            .send()
            .await
            .expect("ready answers")
            .json()
            .await
            .expect("health JSON");
        let check = ready["checks"]["consent:index"][0].clone();
        if done(&check) {
            return check;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the consent index never got there: {check}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

impl World {
    /// A token with `scope` for the app `client_id`, with `extra` claims.
    pub(crate) fn token(&self, client_id: &str, scope: &str, extra: Value) -> String {
        let mut claims = json!({
            "iss": self.app.base, "aud": self.app.base, "sub": client_id, "client_id": client_id,
            "scope": scope, "iat": now(), "nbf": now(), "exp": now() + 600,
            "jti": uuid::Uuid::new_v4().to_string(),
        });
        if let (Some(claims), Value::Object(extra)) = (claims.as_object_mut(), extra) {
            claims.extend(extra);
        }
        self.key.sign(&claims).expect("signed")
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        headers: &[(&str, &str)],
        body: Option<&Value>,
    ) -> (u16, Value, reqwest::header::HeaderMap) {
        let mut request = self
            .app
            .client
            .request(method, self.app.url(path))
            .bearer_auth(token);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(body) = body {
            request = request
                .header("content-type", FHIR_JSON)
                .body(body.to_string());
        }
        let response = request.send().await.expect("sent");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        (
            status,
            response.json().await.unwrap_or(Value::Null),
            headers,
        )
    }

    pub(crate) async fn get(&self, path: &str, token: &str) -> (u16, Value) {
        let (status, body, _) = self
            .call(reqwest::Method::GET, path, token, &[], None)
            .await;
        (status, body)
    }

    pub(crate) async fn create(&self, resource: Value) -> String {
        let admin = self.token("loader", "system/*.c", json!({}));
        let t = resource["resourceType"]
            .as_str()
            .expect("a type")
            .to_owned();
        let (status, body, _) = self
            .call(reqwest::Method::POST, &t, &admin, &[], Some(&resource))
            .await;
        assert_eq!(status, 201, "{body}");
        body["id"].as_str().expect("an id").to_owned()
    }

    /// Binds `patient` to `wallet` (what redeeming a link code leaves behind).
    async fn bind(&self, patient: &str, wallet: Address) {
        let mut conn = self.app.database_connection().await;
        let binding = gateway::store::binding::Binding {
            patient_id: patient.to_owned(),
            wallet_address: format!("0x{}", hex::encode(wallet.as_slice())),
            user_id: format!("user-of-{patient}"),
            bound_at: 0,
        };
        gateway::store::binding::insert(&mut conn, &binding)
            .await
            .expect("bound");
    }

    /// `patient` grants `types` for `purpose` to the app `client_id` on chain (signed, relayed
    /// by the test); returns the grant id and its block once the gateway has read that block.
    async fn grant(
        &self,
        patient: &PrivateKeySigner,
        client_id: &str,
        types: &[&str],
        purpose: &str,
        expires_at: u64,
    ) -> (u64, u64) {
        let nonce = self.reader.nonce(patient.address()).await.expect("nonce");
        let request = GrantRequest {
            patient: patient.address(),
            grantee: grantee_of_client(client_id),
            resource_types: types.iter().map(|t| (*t).to_owned()).collect(),
            purpose: purpose.to_owned(),
            expires_at,
            nonce,
            deadline: U256::from(now() + 600),
        };
        let hash = signing_hash_grant(self.reader.chain_id(), self.reader.registry(), &request);
        let relayed = self
            .relayer
            .relay_grant(&request, sign(patient, hash))
            .await
            .expect("the grant is relayed");
        self.seen(relayed.block_number).await;
        (relayed.grant_id, relayed.block_number)
    }

    /// `patient` revokes `grant_id`; returns its block once the gateway has read it.
    async fn revoke(&self, patient: &PrivateKeySigner, grant_id: u64) -> u64 {
        let nonce = self.reader.nonce(patient.address()).await.expect("nonce");
        let request = RevokeRequest {
            patient: patient.address(),
            grant_id,
            nonce,
            deadline: U256::from(now() + 600),
        };
        let hash = signing_hash_revoke(self.reader.chain_id(), self.reader.registry(), &request);
        let relayed = self
            .relayer
            .relay_revoke(&request, sign(patient, hash))
            .await
            .expect("the revocation is relayed");
        self.seen(relayed.block_number).await;
        relayed.block_number
    }

    /// Waits until the gateway's index has read through `block`.
    pub(crate) async fn seen(&self, block: u64) {
        until_consent(&self.app, |c| {
            c["block"].as_u64().is_some_and(|b| b >= block)
        })
        .await;
    }
}

fn sign(key: &PrivateKeySigner, hash: B256) -> Bytes {
    Bytes::from(
        key.sign_hash_sync(&hash)
            .expect("signs")
            .as_bytes()
            .to_vec(),
    )
}

fn ids(bundle: &Value) -> Vec<String> {
    let mut ids: Vec<String> = bundle["entry"]
        .as_array()
        .map(|entries| {
            entries
                .iter()
                .map(|e| {
                    format!(
                        "{}/{}",
                        e["resource"]["resourceType"].as_str().unwrap_or_default(),
                        e["resource"]["id"].as_str().unwrap_or_default()
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    ids.sort();
    ids
}

/// Two patients with wallets, each with an Observation and a Condition, and an Organization.
struct Records {
    ann: String,
    bob: String,
    ann_obs: String,
    ann_cond: String,
    bob_obs: String,
    org: String,
    ann_key: PrivateKeySigner,
    bob_key: PrivateKeySigner,
}

async fn records(world: &World) -> Records {
    let org = world
        .create(json!({"resourceType": "Organization", "name": "Clinic"}))
        .await;
    let ann = world
        .create(json!({"resourceType": "Patient", "name": [{"family": "Ann"}], "managingOrganization": {"reference": format!("Organization/{org}")}}))
        .await;
    let bob = world
        .create(json!({"resourceType": "Patient", "name": [{"family": "Bob"}]}))
        .await;
    let observation = |patient: &str, code: &str| {
        json!({"resourceType": "Observation", "status": "final",
               "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
               "subject": {"reference": format!("Patient/{patient}")}})
    };
    let ann_obs = world.create(observation(&ann, "4548-4")).await;
    let bob_obs = world.create(observation(&bob, "4548-4")).await;
    let ann_cond = world
        .create(
            json!({"resourceType": "Condition", "subject": {"reference": format!("Patient/{ann}")},
                       "code": {"text": "diabetes"},
                       "evidence": [{"detail": [{"reference": format!("Observation/{ann_obs}")}]}]}),
        )
        .await;
    let (ann_key, bob_key) = (PrivateKeySigner::random(), PrivateKeySigner::random());
    world.bind(&ann, ann_key.address()).await;
    world.bind(&bob, bob_key.address()).await;
    Records {
        ann,
        bob,
        ann_obs,
        ann_cond,
        bob_obs,
        org,
        ann_key,
        bob_key,
    }
}

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
    a_grant_opens_exactly_its_types_and_a_revocation_closes_them,
    |db| async move {
        let w = world(db, |_| {}).await;
        let r = records(&w).await;
        let app_token = w.token("app-x", "system/*.rs", json!({}));
        // no grant: the token's scopes are not enough
        let (status, outcome) = w
            .get(&format!("Observation/{}", r.ann_obs), &app_token)
            .await;
        assert_eq!(status, 403, "{outcome}");
        assert!(
            outcome["issue"][0]["diagnostics"]
                .as_str()
                .is_some_and(|d| d.contains("consent")),
            "{outcome}"
        );
        let (status, bundle) = w.get("Observation", &app_token).await;
        assert_eq!(
            (status, bundle["total"].as_u64()),
            (200, Some(0)),
            "{bundle}"
        );
        // data outside every patient compartment is not consent-gated
        let (status, _) = w.get(&format!("Organization/{}", r.org), &app_token).await;
        assert_eq!(status, 200);

        // ann grants Observation for treatment to app-x
        let (grant, _) = w
            .grant(&r.ann_key, "app-x", &["Observation"], "TREAT", 0)
            .await;
        let (status, _) = w
            .get(&format!("Observation/{}", r.ann_obs), &app_token)
            .await;
        assert_eq!(status, 200);
        for path in [
            format!("Condition/{}", r.ann_cond),
            format!("Patient/{}", r.ann),
            format!("Observation/{}", r.bob_obs),
            format!("Patient/{}/$everything", r.ann),
        ] {
            let (status, outcome) = w.get(&path, &app_token).await;
            assert_eq!(status, 403, "{path}: {outcome}");
        }
        // searches leave out what is not consented, with exact totals and pages
        let (_, bundle) = w.get("Observation?_count=1", &app_token).await;
        assert_eq!(bundle["total"], 1, "{bundle}");
        assert_eq!(ids(&bundle), vec![format!("Observation/{}", r.ann_obs)]);
        let (_, bundle) = w.get("Condition", &app_token).await;
        assert_eq!(bundle["total"], 0, "{bundle}");
        // no leak through includes, revincludes or chains
        let (_, bundle) = w
            .get("Observation?_include=Observation:subject", &app_token)
            .await;
        assert_eq!(
            ids(&bundle),
            vec![format!("Observation/{}", r.ann_obs)],
            "the Patient is not granted: {bundle}"
        );
        let (_, bundle) = w
            .get(
                &format!(
                    "Observation?_revinclude=Condition:evidence-detail&_id={}",
                    r.ann_obs
                ),
                &app_token,
            )
            .await;
        assert_eq!(
            ids(&bundle),
            vec![format!("Observation/{}", r.ann_obs)],
            "the Condition pointing at the Observation is not granted: {bundle}"
        );
        let (_, bundle) = w
            .get("Observation?subject:Patient.family=Ann", &app_token)
            .await;
        assert_eq!(
            bundle["total"], 0,
            "a chain through an unconsented Patient: {bundle}"
        );
        let (_, bundle) = w
            .get(
                &format!(
                    "Observation?_has:Condition:subject:code:text=diabetes&subject={}",
                    r.ann
                ),
                &app_token,
            )
            .await;
        assert_eq!(bundle["total"], 0, "{bundle}");
        let (_, bundle) = w
            .get(
                "Patient?_has:Condition:subject:code:text=diabetes",
                &app_token,
            )
            .await;
        assert_eq!(bundle["total"], 0, "{bundle}");
        // another app, or another purpose, is not covered
        let other = w.token("app-y", "system/*.rs", json!({}));
        let (status, _) = w.get(&format!("Observation/{}", r.ann_obs), &other).await;
        assert_eq!(status, 403);
        let research = w.token("app-x", "system/*.rs", json!({"purpose_of_use": "HRESCH"}));
        let (status, _) = w
            .get(&format!("Observation/{}", r.ann_obs), &research)
            .await;
        assert_eq!(status, 403);
        // a grant of every type opens the whole record, $everything included
        let (all, _) = w.grant(&r.ann_key, "app-x", &[], "TREAT", 0).await;
        let (status, bundle) = w
            .get(&format!("Patient/{}/$everything", r.ann), &app_token)
            .await;
        assert_eq!(status, 200, "{bundle}");
        assert_eq!(
            ids(&bundle),
            {
                let mut expected = vec![
                    format!("Condition/{}", r.ann_cond),
                    format!("Observation/{}", r.ann_obs),
                    format!("Patient/{}", r.ann),
                ];
                expected.sort();
                expected
            },
            "{bundle}"
        );
        // ... and the includes that were left out come in
        let (_, bundle) = w
            .get(
                &format!(
                    "Observation?_revinclude=Condition:evidence-detail&_include=Observation:subject&_id={}",
                    r.ann_obs
                ),
                &app_token,
            )
            .await;
        assert_eq!(ids(&bundle).len(), 3, "{bundle}");
        // revoked: closed at the next request after the gateway saw the revoking block
        w.revoke(&r.ann_key, all).await;
        w.revoke(&r.ann_key, grant).await;
        let (status, _) = w
            .get(&format!("Observation/{}", r.ann_obs), &app_token)
            .await;
        assert_eq!(status, 403);
        let (_, bundle) = w
            .get(&format!("Observation/{}/$proof", r.ann_obs), &app_token)
            .await;
        assert_eq!(
            bundle["resourceType"], "OperationOutcome",
            "$proof is gated too"
        );
        // an expired grant counts for nothing
        let expires = (now() + 2) as u64;
        w.grant(&r.bob_key, "app-x", &["Observation"], "TREAT", expires)
            .await;
        let (status, _) = w
            .get(&format!("Observation/{}", r.bob_obs), &app_token)
            .await;
        assert_eq!(status, 200);
        while now() < expires as i64 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let (status, _) = w
            .get(&format!("Observation/{}", r.bob_obs), &app_token)
            .await;
        assert_eq!(status, 403, "expired");
        // a Bundle's GET entries answer the same
        let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": [
            {"request": {"method": "GET", "url": format!("Observation/{}", r.ann_obs)}},
            {"request": {"method": "GET", "url": format!("Organization/{}", r.org)}}]});
        let (status, bundle, _) = w
            .call(reqwest::Method::POST, "", &app_token, &[], Some(&batch))
            .await;
        assert_eq!(status, 200, "{bundle}");
        assert_eq!(
            bundle["entry"][0]["response"]["status"]
                .as_str()
                .map(|s| &s[..3]),
            Some("403"),
            "{bundle}"
        );
        assert_eq!(
            bundle["entry"][1]["response"]["status"]
                .as_str()
                .map(|s| &s[..3]),
            Some("200"),
            "{bundle}"
        );
    }
);

/// `resource.compartment` of `reference` (`Type/id`): `None` when not recorded.
async fn recorded_compartment(w: &World, reference: &str) -> Option<String> {
    let (resource_type, id) = reference.split_once('/').expect("Type/id");
    let mut conn = w.app.database_connection().await;
    sqlx::query_scalar("SELECT compartment FROM resource WHERE resource_type = $1 AND id = $2")
        .bind(resource_type)
        .bind(id)
        .fetch_one(&mut conn)
        .await
        .expect("the resource row")
}

on_both!(
    a_resource_in_two_compartments_needs_both_grants_and_rows_without_a_recorded_compartment_are_checked_alike,
    |db| async move {
        let w = world(db, |_| {}).await;
        let r = records(&w).await;
        let token = w.token("app-x", "system/*.rs", json!({}));
        // ann's Observation, performed by bob: in both compartments
        let shared = w
            .create(json!({"resourceType": "Observation", "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": "4548-4"}]},
                "subject": {"reference": format!("Patient/{}", r.ann)},
                "performer": [{"reference": format!("Patient/{}", r.bob)}]}))
            .await;
        let shared = format!("Observation/{shared}");
        // a reference to a Patient through a parameter outside the compartment counts for nothing
        let focus = w
            .create(json!({"resourceType": "Observation", "status": "final",
                "code": {"text": "note"}, "focus": [{"reference": format!("Patient/{}", r.bob)}]}))
            .await;
        let focus = format!("Observation/{focus}");
        let ann_obs = format!("Observation/{}", r.ann_obs);
        let ann_cond = format!("Condition/{}", r.ann_cond);
        for (reference, expected) in [
            (ann_obs.as_str(), Some(r.ann.clone())),
            (shared.as_str(), None),
            (focus.as_str(), Some(String::new())),
            (&format!("Organization/{}", r.org), Some(String::new())),
            (&format!("Patient/{}", r.ann), Some(String::new())),
        ] {
            assert_eq!(recorded_compartment(&w, reference).await, expected, "{reference}");
        }
        // the migration's backfill of the rows written before the column gives each the
        // value it would have been written with
        let mut conn = w.app.database_connection().await;
        let all = "SELECT resource_type || '/' || id, compartment FROM resource ORDER BY rkey";
        let written: Vec<(String, Option<String>)> = sqlx::query_as(all)
            .fetch_all(&mut conn)
            .await
            .expect("the rows");
        sqlx::query("UPDATE resource SET compartment = NULL")
            .execute(&mut conn)
            .await
            .expect("forgotten");
        let migration = match db {
            Db::Postgres => include_str!("../../migrations/postgres/0034_compartment.sql"),
            Db::Sqlite => include_str!("../../migrations/sqlite/0034_compartment.sql"),
        };
        let backfill = &migration[migration.find("WITH p").expect("the backfill")..];
        sqlx::raw_sql(sqlx::AssertSqlSafe(backfill))
            .execute(&mut conn)
            .await
            .expect("backfilled");
        let backfilled: Vec<(String, Option<String>)> = sqlx::query_as(all)
            .fetch_all(&mut conn)
            .await
            .expect("the rows");
        assert_eq!(backfilled, written);
        assert_eq!(written.len(), 8, "{written:?}");
        // a row whose compartment is not recorded (as with several Patients): its check
        // probes the reference rows
        sqlx::query("UPDATE resource SET compartment = NULL WHERE resource_type = 'Condition' AND id = $1")
            .bind(&r.ann_cond)
            .execute(&mut conn)
            .await
            .expect("forgotten");

        let (ann_grant, _) = w
            .grant(&r.ann_key, "app-x", &["Observation", "Condition"], "TREAT", 0)
            .await;
        for (path, status) in [(&ann_obs, 200), (&ann_cond, 200), (&shared, 403), (&focus, 200)] {
            let (got, body) = w.get(path, &token).await;
            assert_eq!(got, status, "{path}: {body}");
        }
        let (_, bundle) = w.get("Observation", &token).await;
        assert_eq!(bundle["total"], 2, "bob has not consented to the shared one: {bundle}");
        let mut expected = vec![ann_obs.clone(), focus.clone()];
        expected.sort();
        assert_eq!(ids(&bundle), expected);

        w.grant(&r.bob_key, "app-x", &["Observation"], "TREAT", 0).await;
        let (got, body) = w.get(&shared, &token).await;
        assert_eq!(got, 200, "{body}");
        let (_, bundle) = w.get("Observation", &token).await;
        assert_eq!(bundle["total"], 4, "{bundle}");

        w.revoke(&r.ann_key, ann_grant).await;
        for path in [&ann_obs, &ann_cond, &shared] {
            let (got, body) = w.get(path, &token).await;
            assert_eq!(got, 403, "{path}: {body}");
        }
        let (_, bundle) = w.get("Observation", &token).await;
        let mut expected = vec![format!("Observation/{}", r.bob_obs), focus.clone()];
        expected.sort();
        assert_eq!(ids(&bundle), expected, "{bundle}");

        // the column follows each version: moved to bob, deleted
        let admin = w.token("loader", "system/*.cud", json!({}));
        let moved = json!({"resourceType": "Observation", "id": r.ann_obs, "status": "final",
            "code": {"text": "moved"}, "subject": {"reference": format!("Patient/{}", r.bob)}});
        let (status, body, _) = w
            .call(reqwest::Method::PUT, &ann_obs, &admin, &[], Some(&moved))
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(recorded_compartment(&w, &ann_obs).await, Some(r.bob.clone()));
        let (got, body) = w.get(&ann_obs, &token).await;
        assert_eq!(got, 200, "bob's now, and bob granted Observation: {body}");
        let (status, body, _) = w
            .call(reqwest::Method::DELETE, &shared, &admin, &[], None)
            .await;
        assert!(status == 200 || status == 204, "{status} {body}");
        assert_eq!(recorded_compartment(&w, &shared).await, Some(String::new()));
    }
);

/// Every page of `path`'s search (`_count` small), followed through its `next` links: the
/// ids of each page.
async fn pages(w: &World, path: &str, token: &str) -> Vec<Vec<String>> {
    let mut pages = Vec::new();
    let mut next = Some(path.to_owned());
    while let Some(path) = next.take() {
        let (status, bundle) = w.get(&path, token).await;
        assert_eq!(status, 200, "{path}: {bundle}");
        pages.push(ids(&bundle));
        next = bundle["link"]
            .as_array()
            .and_then(|l| l.iter().find(|l| l["relation"] == "next"))
            .and_then(|l| l["url"].as_str())
            .map(|url| {
                url.trim_start_matches(w.app.base.as_str())
                    .trim_start_matches('/')
                    .to_owned()
            });
        assert!(pages.len() < 20, "{path}: too many pages");
    }
    pages
}

on_both!(
    pages_under_partial_consent_are_full_and_hold_exactly_the_consented,
    |db| async move {
        let w = world(db, |_| {}).await;
        let r = records(&w).await;
        // Ann's and Bob's observations interleaved, so that every page's candidates mix
        // consented and unconsented rows
        let mut ann_obs = vec![format!("Observation/{}", r.ann_obs)];
        for i in 0..8 {
            let patient = if i % 2 == 0 { &r.ann } else { &r.bob };
            let id = w
                .create(json!({"resourceType": "Observation", "status": "final",
                               "code": {"coding": [{"system": "http://loinc.org", "code": format!("x-{i}")}]},
                               "subject": {"reference": format!("Patient/{patient}")}}))
                .await;
            if i % 2 == 0 {
                ann_obs.push(format!("Observation/{id}"));
            }
        }
        ann_obs.sort();
        w.grant(&r.ann_key, "app-x", &["Observation"], "TREAT", 0)
            .await;
        let app = w.token("app-x", "system/*.rs", json!({}));
        for path in [
            "Observation?_count=2",
            "Observation?_count=2&_sort=-_lastUpdated",
            "Observation?_count=2&_sort=code",
            "Observation?status=final&_count=3",
            "?_type=Observation,Condition&_count=2",
            "?_count=2",
        ] {
            let (_, first) = w.get(path, &app).await;
            let pages = pages(&w, path, &app).await;
            let mut seen: Vec<String> = pages
                .iter()
                .flatten()
                .filter(|id| !id.starts_with("Organization/"))
                .cloned()
                .collect();
            seen.sort();
            assert_eq!(seen, ann_obs, "{path}: {pages:?}");
            let size: usize = if path.contains("_count=3") { 3 } else { 2 };
            let (last, full) = pages.split_last().expect("a page");
            assert!(
                full.iter().all(|p| p.len() == size) && !last.is_empty() && last.len() <= size,
                "{path}: every page but the last is full: {pages:?}"
            );
            if path.starts_with("Observation") {
                assert_eq!(first["total"], ann_obs.len(), "{path}: {first}");
            }
        }
    }
);

on_both!(
    a_search_restricted_to_a_consented_patient_still_leaves_out_what_others_did_not_consent_to,
    |db| async move {
        let w = world(db, |_| {}).await;
        let r = records(&w).await;
        // Ann's Observation that Bob performed: in both patients' compartments
        let shared = w
            .create(json!({"resourceType": "Observation", "status": "final",
                           "code": {"coding": [{"system": "http://loinc.org", "code": "4548-4"}]},
                           "subject": {"reference": format!("Patient/{}", r.ann)},
                           "performer": [{"reference": format!("Patient/{}", r.bob)}]}))
            .await;
        let (ann_obs, shared) = (
            format!("Observation/{}", r.ann_obs),
            format!("Observation/{shared}"),
        );
        w.grant(&r.ann_key, "app-x", &["Observation", "Patient"], "TREAT", 0)
            .await;
        let app = w.token("app-x", "system/*.rs", json!({}));
        // searches that name Ann decide her consent once: Bob's part still counts per row
        let ann = &r.ann;
        let bob = &r.bob;
        for path in [
            format!("Observation?patient={ann}"),
            format!("Observation?subject=Patient/{ann}"),
            format!("Observation?patient={ann},{bob}"),
            format!("Observation?patient={ann}&code=http://loinc.org|4548-4&_count=1"),
            format!("Patient/{ann}/Observation"),
            format!("Observation?patient={ann}&_include=Observation:performer"),
        ] {
            let (status, bundle) = w.get(&path, &app).await;
            assert_eq!(status, 200, "{path}: {bundle}");
            let matches: Vec<String> = ids(&bundle)
                .into_iter()
                .filter(|id| id.starts_with("Observation/"))
                .collect();
            assert_eq!(matches, vec![ann_obs.clone()], "{path}: {bundle}");
            assert_eq!(bundle["total"], 1, "{path}: {bundle}");
            assert!(
                !ids(&bundle).contains(&format!("Patient/{bob}")),
                "{path}: {bundle}"
            );
        }
        // a search that names Bob, who has not consented: nothing of his
        for path in [
            format!("Observation?performer=Patient/{bob}"),
            format!("Observation?patient={bob}"),
            format!("Patient?_id={bob}"),
        ] {
            let (status, bundle) = w.get(&path, &app).await;
            assert_eq!(
                (status, bundle["total"].as_u64()),
                (200, Some(0)),
                "{path}: {bundle}"
            );
        }
        // once Bob consents too, the shared Observation is served to either search
        w.grant(&r.bob_key, "app-x", &["Observation"], "TREAT", 0)
            .await;
        let (_, bundle) = w.get(&format!("Observation?patient={ann}"), &app).await;
        let mut both = vec![ann_obs.clone(), shared.clone()];
        both.sort();
        assert_eq!(ids(&bundle), both, "{bundle}");
        let (_, bundle) = w
            .get(&format!("Observation?performer=Patient/{bob}"), &app)
            .await;
        assert_eq!(ids(&bundle), vec![shared], "{bundle}");
    }
);

on_both!(
    a_patient_reads_their_own_record_and_break_the_glass_is_recorded,
    |db| async move {
        let w = world(db, |_| {}).await;
        let r = records(&w).await;
        // the patient, without any grant
        let own = w.token(
            "portal",
            "patient/*.rs",
            json!({"sub": "ann-user", "user_kind": "patient", "fhirUser": format!("Patient/{}", r.ann), "patient": r.ann}),
        );
        let (status, bundle) = w.get(&format!("Patient/{}/$everything", r.ann), &own).await;
        assert_eq!(status, 200, "{bundle}");
        assert_eq!(bundle["total"], 3, "{bundle}");
        // a practitioner without a grant: refused; with break-the-glass: served and flagged
        let practitioner = |btg: bool| {
            w.token(
                "ehr",
                "user/*.rs",
                json!({"sub": "dr-who", "user_kind": "practitioner", "fhirUser": "Practitioner/1", "btg": btg}),
            )
        };
        let path = format!("Observation/{}", r.ann_obs);
        let (status, _) = w.get(&path, &practitioner(true)).await;
        assert_eq!(status, 403, "break-the-glass only when asked for");
        let etreat = [("X-Purpose-Of-Use", "ETREAT")];
        let (status, outcome, _) = w
            .call(
                reqwest::Method::GET,
                &path,
                &practitioner(false),
                &etreat,
                None,
            )
            .await;
        assert_eq!(status, 403, "without the permission: {outcome}");
        let (status, _, headers) = w
            .call(
                reqwest::Method::GET,
                &path,
                &practitioner(true),
                &etreat,
                None,
            )
            .await;
        assert_eq!(status, 200);
        assert_eq!(headers["x-break-the-glass"], "recorded");
        let mut conn = w.app.database_connection().await;
        let recorded: Vec<(String, Option<String>, i64)> =
            sqlx::query_as("SELECT user_id, patient_id, status FROM break_glass_access")
                .fetch_all(&mut conn)
                .await
                .expect("recorded");
        assert_eq!(
            recorded,
            vec![("dr-who".to_owned(), Some(r.ann.clone()), 200)]
        );
    }
);

on_both!(
    no_stale_serve_over_a_thousand_interleaved_reads_and_revocations,
    |db| async move {
        let w = world(db, |_| {}).await;
        let r = records(&w).await;
        let token = w.token("app-x", "system/*.rs", json!({}));
        let path = format!("Observation/{}", r.ann_obs);
        let (mut stale, mut reads, mut changes) = (0, 0, 0);
        while reads + changes < 1000 {
            let (grant, _) = w
                .grant(&r.ann_key, "app-x", &["Observation"], "TREAT", 0)
                .await;
            changes += 1;
            for _ in 0..3 {
                let (status, _) = w.get(&path, &token).await;
                assert_eq!(status, 200, "granted and seen: served");
                reads += 1;
            }
            w.revoke(&r.ann_key, grant).await;
            changes += 1;
            for _ in 0..3 {
                let (status, _) = w.get(&path, &token).await;
                if status != 403 {
                    stale += 1;
                }
                reads += 1;
            }
        }
        assert_eq!(stale, 0, "reads served after the revoking block was seen");
    }
);

on_both!(
    a_chain_out_of_reach_fails_closed_and_a_reorg_removes_a_grant,
    |db| async move {
        let mut w = world(db, |_| {}).await;
        let r = records(&w).await;
        let token = w.token("app-x", "system/*.rs", json!({}));
        let path = format!("Observation/{}", r.ann_obs);
        // a grant that a reorg takes away
        let snapshot = crate::anchoring::rpc(&w.anvil.url, "evm_snapshot", json!([])).await;
        w.grant(&r.ann_key, "app-x", &["Observation"], "TREAT", 0)
            .await;
        let (status, _) = w.get(&path, &token).await;
        assert_eq!(status, 200);
        crate::anchoring::rpc(&w.anvil.url, "evm_revert", json!([snapshot])).await;
        crate::anchoring::rpc(&w.anvil.url, "anvil_mine", json!([5])).await;
        until_consent(&w.app, |c| c["reorgs"].as_u64().unwrap_or(0) >= 1).await;
        let head = w.reader.head().await.expect("head");
        w.seen(head).await;
        let (status, outcome) = w.get(&path, &token).await;
        assert_eq!(status, 403, "the reorg removed the grant: {outcome}");
        // the chain goes away: after the bound, patient data is refused with 503
        w.anvil.stop();
        let started = Instant::now();
        loop {
            let (status, outcome) = w.get(&path, &token).await;
            if status == 503 {
                assert_eq!(outcome["issue"][0]["code"], "transient", "{outcome}");
                break;
            }
            assert_eq!(status, 403, "{outcome}");
            assert!(started.elapsed() < Duration::from_secs(20), "never refused");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // what holds no patient data is still served
        let (status, _) = w.get(&format!("Organization/{}", r.org), &token).await;
        assert_eq!(status, 200);
        let (status, _) = w.get("Observation", &token).await;
        assert_eq!(status, 503);
        let _ = &r.bob;
    }
);

on_both!(
    grants_follow_the_binding_and_a_reorg_that_drops_a_revocation_reopens,
    |db| async move {
        let w = world(db, |_| {}).await;
        let r = records(&w).await;
        let token = w.token("app-x", "system/*.rs", json!({}));
        let carol = w
            .create(json!({"resourceType": "Patient", "name": [{"family": "Carol"}]}))
            .await;
        let observation = w
            .create(json!({"resourceType": "Observation", "status": "final",
                           "code": {"text": "weight"},
                           "subject": {"reference": format!("Patient/{carol}")}}))
            .await;
        let path = format!("Observation/{observation}");
        // a grant by a wallet bound to no record opens nothing
        let key = PrivateKeySigner::random();
        let (grant, _) = w.grant(&key, "app-x", &[], "TREAT", 0).await;
        let (status, _) = w.get(&path, &token).await;
        assert_eq!(status, 403);
        // binding the wallet brings its grants to the record; unbinding takes them away
        w.bind(&carol, key.address()).await;
        let (status, _) = w.get(&path, &token).await;
        assert_eq!(status, 200, "bound after granting");
        let mut conn = w.app.database_connection().await;
        gateway::store::binding::remove(&mut conn, &carol)
            .await
            .expect("unbound");
        let (status, _) = w.get(&path, &token).await;
        assert_eq!(status, 403, "unbound");
        w.bind(&carol, key.address()).await;
        let (status, _) = w.get(&path, &token).await;
        assert_eq!(status, 200, "bound again");
        // a revocation that a reorg takes away: the grant holds again
        let snapshot = crate::anchoring::rpc(&w.anvil.url, "evm_snapshot", json!([])).await;
        w.revoke(&key, grant).await;
        let (status, _) = w.get(&path, &token).await;
        assert_eq!(status, 403, "revoked");
        crate::anchoring::rpc(&w.anvil.url, "evm_revert", json!([snapshot])).await;
        crate::anchoring::rpc(&w.anvil.url, "anvil_mine", json!([5])).await;
        until_consent(&w.app, |c| c["reorgs"].as_u64().unwrap_or(0) >= 1).await;
        let head = w.reader.head().await.expect("head");
        w.seen(head).await;
        let (status, outcome) = w.get(&path, &token).await;
        assert_eq!(status, 200, "the reorg dropped the revocation: {outcome}");
        // the others' records are untouched by all this
        let (status, _) = w.get(&format!("Observation/{}", r.bob_obs), &token).await;
        assert_eq!(status, 403);
    }
);

on_both!(
    a_denied_read_can_hide_that_the_resource_exists,
    |db| async move {
        let w = world(db, |config| config.consent.denied = ConsentDenied::NotFound).await;
        let r = records(&w).await;
        let token = w.token("app-x", "system/*.rs", json!({}));
        let (status, outcome) = w.get(&format!("Observation/{}", r.ann_obs), &token).await;
        assert_eq!(status, 404, "{outcome}");
    }
);

/// The typed-data request the gateway wrote, as the Rust types the hash is made of.
fn grant_of(request: &Value) -> GrantRequest {
    let number = |v: &Value| -> U256 {
        v.as_str()
            .map(|s| s.parse().expect("a decimal"))
            .or_else(|| v.as_u64().map(U256::from))
            .expect("a number")
    };
    GrantRequest {
        patient: request["patient"]
            .as_str()
            .expect("patient")
            .parse()
            .expect("an address"),
        grantee: request["grantee"]
            .as_str()
            .expect("grantee")
            .parse()
            .expect("32 bytes"),
        resource_types: request["resourceTypes"]
            .as_array()
            .expect("types")
            .iter()
            .map(|t| t.as_str().expect("a type").to_owned())
            .collect(),
        purpose: request["purpose"].as_str().expect("purpose").to_owned(),
        expires_at: u64::try_from(number(&request["expiresAt"])).expect("u64"),
        nonce: number(&request["nonce"]),
        deadline: number(&request["deadline"]),
    }
}

on_both!(
    a_patient_grants_and_revokes_through_the_gateways_relay,
    |db| async move {
        let w = world(db, |_| {}).await;
        let r = records(&w).await;
        let patient = w.token(
            "portal",
            "patient/*.rs",
            json!({"sub": "ann-user", "user_kind": "patient", "fhirUser": format!("Patient/{}", r.ann), "patient": r.ann}),
        );
        let app = w.token("app-x", "system/*.rs", json!({}));
        let post = |path: &'static str, token: String, body: Value| {
            let w = &w;
            async move {
                let (status, body, _) = w
                    .call(reqwest::Method::POST, path, &token, &[], Some(&body))
                    .await;
                (status, body)
            }
        };
        // only a patient, for their own wallet
        let (status, outcome) = post(
            "consent/grant-request",
            app.clone(),
            json!({"grantee": {"client": "app-x"}}),
        )
        .await;
        assert_eq!(status, 403, "{outcome}");
        let (status, outcome) = post(
            "consent/grant-request",
            patient.clone(),
            json!({"grantee": {"client": "app-x", "user": "u"}}),
        )
        .await;
        assert_eq!(status, 400, "{outcome}");
        assert_eq!(outcome["resourceType"], "OperationOutcome");
        let (status, asked) = post(
            "consent/grant-request",
            patient.clone(),
            json!({"grantee": {"client": "app-x"}, "resourceTypes": ["Observation"], "purpose": "TREAT"}),
        )
        .await;
        assert_eq!(status, 200, "{asked}");
        assert_eq!(asked["typedData"]["primaryType"], "Grant");
        let request = grant_of(&asked["request"]);
        assert_eq!(request.patient, r.ann_key.address());
        assert_eq!(request.grantee, grantee_of_client("app-x"));
        let signature = sign(
            &r.ann_key,
            signing_hash_grant(w.reader.chain_id(), w.reader.registry(), &request),
        );
        let signed = json!({"request": asked["request"], "signature": format!("0x{}", hex::encode(&signature))});
        let (status, relayed) = post("consent/grants", patient.clone(), signed.clone()).await;
        assert_eq!(status, 201, "{relayed}");
        let grant_id = relayed["grantId"].as_u64().expect("a grant id");
        w.seen(relayed["blockNumber"].as_u64().expect("a block"))
            .await;
        let (status, _) = w.get(&format!("Observation/{}", r.ann_obs), &app).await;
        assert_eq!(status, 200, "granted through the relay");
        // the same signature again: a replay, refused before anything is sent
        let (status, outcome) = post("consent/grants", patient.clone(), signed).await;
        assert_eq!(status, 409, "{outcome}");
        // a signature by another wallet
        let forged = sign(
            &r.bob_key,
            signing_hash_grant(
                w.reader.chain_id(),
                w.reader.registry(),
                &GrantRequest {
                    nonce: request.nonce + U256::from(1u64),
                    ..request.clone()
                },
            ),
        );
        let mut other = asked["request"].clone();
        other["nonce"] = json!((request.nonce + U256::from(1u64)).to_string());
        let (status, outcome) = post(
            "consent/grants",
            patient.clone(),
            json!({"request": other, "signature": format!("0x{}", hex::encode(&forged))}),
        )
        .await;
        assert_eq!(status, 400, "{outcome}");
        // bob's wallet is not ann's
        let mut bobs = asked["request"].clone();
        bobs["patient"] = json!(format!("{:#x}", r.bob_key.address()));
        let (status, _) = post(
            "consent/grants",
            patient.clone(),
            json!({"request": bobs, "signature": "0x00"}),
        )
        .await;
        assert_eq!(status, 403);
        // the patient's list
        let (status, listed) = w.get("consent/grants", &patient).await;
        assert_eq!(status, 200, "{listed}");
        assert_eq!(listed["grants"][0]["grantId"], grant_id);
        assert_eq!(listed["grants"][0]["status"], "active");
        assert_eq!(listed["grants"][0]["resourceTypes"], json!(["Observation"]));
        // revoked through the relay: closed at the next request
        let (status, asked) = post(
            "consent/revoke-request",
            patient.clone(),
            json!({"grantId": grant_id}),
        )
        .await;
        assert_eq!(status, 200, "{asked}");
        let nonce: U256 = asked["request"]["nonce"]
            .as_str()
            .expect("a nonce")
            .parse()
            .expect("decimal");
        let deadline: U256 = asked["request"]["deadline"]
            .as_str()
            .expect("a deadline")
            .parse()
            .expect("decimal");
        let revoke = RevokeRequest {
            patient: r.ann_key.address(),
            grant_id,
            nonce,
            deadline,
        };
        let signature = sign(
            &r.ann_key,
            signing_hash_revoke(w.reader.chain_id(), w.reader.registry(), &revoke),
        );
        let (status, relayed) = post(
            "consent/revocations",
            patient.clone(),
            json!({"request": asked["request"], "signature": format!("0x{}", hex::encode(&signature))}),
        )
        .await;
        assert_eq!(status, 200, "{relayed}");
        w.seen(relayed["blockNumber"].as_u64().expect("a block"))
            .await;
        let (status, _) = w.get(&format!("Observation/{}", r.ann_obs), &app).await;
        assert_eq!(status, 403);
        let (_, listed) = w.get("consent/grants", &patient).await;
        assert_eq!(listed["grants"][0]["status"], "revoked");
    }
);

on_both!(each_grant_is_a_read_only_fhir_consent, |db| async move {
    let w = world(db, |_| {}).await;
    let r = records(&w).await;
    let (observations, _) = w
        .grant(&r.ann_key, "app-x", &["Observation"], "TREAT", 0)
        .await;
    let (everything, _) = w.grant(&r.ann_key, "app-y", &[], "HRESCH", 0).await;
    w.revoke(&r.ann_key, everything).await;
    let own = w.token(
            "portal",
            "patient/*.rs",
            json!({"sub": "ann-user", "user_kind": "patient", "fhirUser": format!("Patient/{}", r.ann), "patient": r.ann}),
        );
    let (status, bundle) = w.get(&format!("Consent?patient={}", r.ann), &own).await;
    assert_eq!(status, 200, "{bundle}");
    assert_eq!(bundle["total"], 2, "{bundle}");
    let (status, consent) = w.get(&format!("Consent/{observations}"), &own).await;
    assert_eq!(status, 200, "{consent}");
    assert_eq!(consent["status"], "active");
    assert_eq!(
        consent["patient"]["reference"],
        format!("Patient/{}", r.ann)
    );
    assert_eq!(consent["provision"]["class"][0]["code"], "Observation");
    assert_eq!(consent["provision"]["purpose"][0]["code"], "TREAT");
    assert_eq!(
        consent["provision"]["actor"][0]["reference"]["identifier"]["value"],
        format!("{:#x}", grantee_of_client("app-x"))
    );
    let (_, revoked) = w.get(&format!("Consent/{everything}"), &own).await;
    assert_eq!(revoked["status"], "inactive");
    assert!(
        revoked["provision"].get("class").is_none(),
        "every type: {revoked}"
    );
    let (_, active) = w
        .get(&format!("Consent?patient={}&status=active", r.ann), &own)
        .await;
    assert_eq!(active["total"], 1);
    // the projection is a valid R4 Consent
    let (status, outcome, _) = w
        .call(
            reqwest::Method::POST,
            "Consent/$validate",
            &w.token("v", "system/*.rs", json!({})),
            &[],
            Some(&consent),
        )
        .await;
    assert_eq!(status, 200, "{outcome}");
    // nobody writes a Consent here
    let admin = w.token("loader", "system/*.cruds", json!({}));
    let (status, outcome, _) = w
        .call(
            reqwest::Method::POST,
            "Consent",
            &admin,
            &[],
            Some(&consent),
        )
        .await;
    assert_eq!(
        (status, outcome["resourceType"].as_str()),
        (405, Some("OperationOutcome")),
        "{outcome}"
    );
    let (status, _, _) = w
        .call(
            reqwest::Method::PUT,
            &format!("Consent/{observations}"),
            &admin,
            &[],
            Some(&consent),
        )
        .await;
    assert_eq!(status, 405);
    let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": [
            {"request": {"method": "POST", "url": "Consent"}, "resource": consent}]});
    let (_, response, _) = w
        .call(reqwest::Method::POST, "", &admin, &[], Some(&batch))
        .await;
    assert_eq!(
        response["entry"][0]["response"]["status"]
            .as_str()
            .map(|s| &s[..3]),
        Some("405"),
        "{response}"
    );
    // bob's patient token does not see ann's; an app needs the patient's consent to read it
    let bob = w.token(
            "portal",
            "patient/*.rs",
            json!({"sub": "bob-user", "user_kind": "patient", "fhirUser": format!("Patient/{}", r.bob), "patient": r.bob}),
        );
    let (status, _) = w.get(&format!("Consent?patient={}", r.ann), &bob).await;
    assert_eq!(status, 403);
    let app = w.token("app-x", "system/*.rs", json!({}));
    let (status, _) = w.get(&format!("Consent/{observations}"), &app).await;
    assert_eq!(status, 403, "app-x may read Observations only");
});

on_both!(
    an_export_holds_exactly_the_consented_resources,
    |db| async move {
        use crate::export::{contents, export};
        let w = world(db, |_| {}).await;
        let r = records(&w).await;
        let token = w.token("exporter", "system/*.rs", json!({}));
        let path = "Patient/$export?_type=Patient,Observation,Condition";
        // no grant: the scopes alone export no patient data
        let (_, manifest) = export(&w.app, path, &token).await;
        assert_eq!(contents(&w.app, &manifest, &token).await, Vec::new());
        // ann grants Observation to the exporter: exactly her Observation, at every level
        let (grant, _) = w
            .grant(&r.ann_key, "exporter", &["Observation"], "TREAT", 0)
            .await;
        let (_, manifest) = export(&w.app, path, &token).await;
        assert_eq!(
            contents(&w.app, &manifest, &token).await,
            vec![("Observation".to_owned(), r.ann_obs.clone())]
        );
        let (_, manifest) = export(
            &w.app,
            "$export?_type=Patient,Observation,Condition,Organization",
            &token,
        )
        .await;
        assert_eq!(
            contents(&w.app, &manifest, &token).await,
            vec![
                ("Observation".to_owned(), r.ann_obs.clone()),
                ("Organization".to_owned(), r.org.clone()),
            ]
        );
        // the grant is the exporter's only: another backend client gets nothing
        let other = w.token("other-exporter", "system/*.rs", json!({}));
        let (_, manifest) = export(&w.app, path, &other).await;
        assert_eq!(contents(&w.app, &manifest, &other).await, Vec::new());
        // revoked: the next export holds nothing of hers
        w.revoke(&r.ann_key, grant).await;
        let (_, manifest) = export(&w.app, path, &token).await;
        assert_eq!(contents(&w.app, &manifest, &token).await, Vec::new());
        let _ = (&r.bob, &r.bob_obs, &r.ann_cond, &r.bob_key);
    }
);

/// The newest AuditEvent of a `read` of `reference`, as the patient `r.ann` reads it (a
/// patient sees every access to their record).
async fn last_read_of(w: &World, r: &Records, reference: &str) -> Value {
    let own = w.token(
        "portal",
        "patient/*.rs",
        json!({"sub": "ann-user", "user_kind": "patient", "fhirUser": format!("Patient/{}", r.ann), "patient": r.ann}),
    );
    let (status, bundle) = w
        .get(
            &format!("AuditEvent?entity={reference}&subtype=read&_sort=-_lastUpdated"),
            &own,
        )
        .await;
    assert_eq!(status, 200, "{bundle}");
    bundle["entry"][0]["resource"].clone()
}

/// What `fhir-anchor consent-basis` says of `event`: the chain alone, no gateway.
async fn audit_on_chain(w: &World, event: &Value) -> anchor::audit::ConsentAudit {
    let basis = anchor::audit::ConsentBasis::from_json(event).expect("the consent basis");
    anchor::audit::check_consent_basis(&w.anvil.url, w.reader.registry(), &basis)
        .await
        .expect("the chain is read")
}

on_both!(
    the_audit_event_of_a_consented_read_checks_out_on_chain_alone,
    |db| async move {
        let w = world(db, |config| config.audit.enabled = true).await;
        let r = records(&w).await;
        let (grant, _) = w
            .grant(&r.ann_key, "app-x", &["Observation"], "TREAT", 0)
            .await;
        let app_token = w.token("app-x", "system/*.rs", json!({}));
        let observation = format!("Observation/{}", r.ann_obs);
        let (status, _) = w.get(&observation, &app_token).await;
        assert_eq!(status, 200);

        // what the gateway recorded: the grant, the wallet and the type it was checked for
        let event = last_read_of(&w, &r, &observation).await;
        assert_eq!(event["outcome"], "0", "{event}");
        let patient = event["entity"]
            .as_array()
            .expect("entities")
            .iter()
            .find(|e| e["what"]["reference"] == format!("Patient/{}", r.ann))
            .expect("the patient entity")
            .clone();
        let detail = |kind: &str| -> Vec<String> {
            patient["detail"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|d| d["type"] == kind)
                .filter_map(|d| d["valueString"].as_str().map(str::to_owned))
                .collect()
        };
        assert_eq!(detail("consentGrant"), vec![grant.to_string()], "{event}");
        assert_eq!(
            detail("consentWallet"),
            vec![format!("{:#x}", r.ann_key.address())]
        );
        assert_eq!(detail("consentType"), vec!["Observation".to_owned()]);

        // and the auditor, from the AuditEvent and the chain: covered by that grant, on the
        // chain, registry and block the AuditEvent names
        let audit = audit_on_chain(&w, &event).await;
        assert!(audit.is_ok(), "{audit}");
        assert_eq!(audit.basis.registry, Some(w.reader.registry()), "{event}");
        assert_eq!(audit.basis.chain_id, Some(w.reader.chain_id()), "{event}");
        let block = audit.basis.block.expect("the decision's block");
        assert_eq!(
            audit.basis.block_hash,
            w.reader.block_hash(block).await.expect("read"),
            "{event}"
        );
        assert_eq!(
            audit.patients[0].verdict,
            anchor::audit::Verdict::Covered,
            "{audit}"
        );
        assert_eq!(audit.patients[0].grants[0].grant_id, grant, "{audit}");

        // revoked: the next read is refused; the access before still checks out at its block
        w.revoke(&r.ann_key, grant).await;
        let (status, outcome) = w.get(&observation, &app_token).await;
        assert_eq!(status, 403, "{outcome}");
        let refused = last_read_of(&w, &r, &observation).await;
        assert_eq!(refused["outcome"], "4", "{refused}");
        let audit = audit_on_chain(&w, &refused).await;
        assert_eq!(
            audit.patients[0].verdict,
            anchor::audit::Verdict::NotServed,
            "{audit}"
        );
        assert!(audit.patients[0].grants.is_empty(), "{audit}");
        let audit = audit_on_chain(&w, &event).await;
        assert!(audit.is_ok(), "{audit}");
    }
);

on_both!(
    consent_changes_read_from_the_chain_are_on_the_patients_record,
    |db| async move {
        let w = world(db, |config| config.audit.enabled = true).await;
        let r = records(&w).await;
        // sent to the chain without the gateway's consent API (as a patient's own wallet
        // would), seen by the gateway's follower only
        let (grant, _) = w
            .grant(&r.ann_key, "app-x", &["Observation"], "TREAT", 0)
            .await;
        let revoked_in = w.revoke(&r.ann_key, grant).await;
        let own = w.token(
            "portal",
            "patient/*.rs",
            json!({"sub": "ann-user", "user_kind": "patient", "fhirUser": format!("Patient/{}", r.ann), "patient": r.ann}),
        );
        let wallet = format!("{:#x}", r.ann_key.address());
        for (subtype, action) in [("chain-grant", "C"), ("chain-revoke", "D")] {
            let (status, bundle) = w
                .get(
                    &format!("AuditEvent?patient={}&subtype={subtype}", r.ann),
                    &own,
                )
                .await;
            assert_eq!(status, 200, "{bundle}");
            assert_eq!(bundle["total"], 1, "{subtype}: {bundle}");
            let event = &bundle["entry"][0]["resource"];
            assert_eq!(event["action"], action, "{event}");
            let agent = &event["agent"][0];
            assert_eq!(agent["who"]["identifier"]["value"], wallet, "{event}");
            assert_eq!(agent["requestor"], true);
            let entities: Vec<&str> = event["entity"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|e| e["what"]["reference"].as_str())
                .collect();
            assert!(
                entities.contains(&format!("Consent/{grant}").as_str())
                    && entities.contains(&format!("Patient/{}", r.ann).as_str()),
                "{event}"
            );
            if subtype == "chain-revoke" {
                assert!(
                    agent["policy"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|p| p == &json!(format!("urn:fhir-gateway:chain-block:{revoked_in}"))),
                    "{event}"
                );
            }
        }
        // Bob's record holds none of it
        let bob = w.token(
            "portal",
            "patient/*.rs",
            json!({"sub": "bob-user", "user_kind": "patient", "fhirUser": format!("Patient/{}", r.bob), "patient": r.bob}),
        );
        let (status, bundle) = w
            .get(
                &format!(
                    "AuditEvent?patient={}&subtype=chain-grant,chain-revoke",
                    r.bob
                ),
                &bob,
            )
            .await;
        assert_eq!(
            (status, bundle["total"].as_u64()),
            (200, Some(0)),
            "{bundle}"
        );
    }
);
