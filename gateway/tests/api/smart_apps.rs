//! Real SMART clients against the running gateway with `[auth] required` (issue 4, item 9):
//! the SMART JS client (npm `fhirclient`, the browser bundle) in headless Chromium driven by
//! playwright-core (gateway/tests/browser/smart-launch.mjs), for a standalone launch and an EHR
//! launch, and the Python `fhirclient` (gateway/tests/clients/smart_standalone.py) for a
//! standalone launch. Each signs in a practitioner on the gateway's pages, approves, and reads
//! the patient in context with the token it got. scripts/test.sh installs node_modules,
//! Chromium and the Python virtual environment these need.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use gateway::auth::clients::{self, ClientKind, NewClient};
use gateway::auth::keys::SigningKey;
use gateway::auth::users::{self, Credential, Kind};
use gateway::store::Store;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};

use crate::helpers::{Db, FHIR_JSON, TestApp, spawn_app_with};
use crate::on_both;

const USERNAME: &str = "dr.careful";
const PASSWORD: &str = "correct horse battery staple";
/// How long a client may take for a whole launch (Chromium's start included) on a busy machine.
const LAUNCH_TIMEOUT: Duration = Duration::from_secs(180);

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace")
        .to_path_buf()
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs() as i64
}

/// A gateway that requires tokens, with a Patient, a Practitioner and the practitioner's
/// user (a password).
struct Ehr {
    app: TestApp,
    /// A token for setting up data (`system/*.cruds`).
    admin: String,
    patient_id: String,
    practitioner_id: String,
}

async fn ehr(db: Db) -> Ehr {
    let app = spawn_app_with(db, |config| config.auth.required = true).await;
    // the data is set up with a token of the gateway's own key (generated in its data directory)
    let key = SigningKey::load(&app.database.data_dir.join("auth-signing.pem")).expect("the key");
    let admin = key
        .sign(&json!({
            "iss": app.base, "aud": app.base, "sub": "setup", "client_id": "setup",
            "scope": "system/*.cruds", "iat": now(), "nbf": now(), "exp": now() + 300,
            "jti": uuid::Uuid::new_v4().to_string(),
        }))
        .expect("signed");
    let mut ehr = Ehr {
        app,
        admin,
        patient_id: String::new(),
        practitioner_id: String::new(),
    };
    ehr.patient_id = ehr
        .create(
            &json!({"resourceType": "Patient", "birthDate": "1815-12-10",
                        "name": [{"family": "Lovelace", "given": ["Ada"]}]}),
        )
        .await;
    // another patient, whom no launch is about
    ehr.create(&json!({"resourceType": "Patient", "name": [{"family": "Someone"}]}))
        .await;
    ehr.practitioner_id = ehr
        .create(&json!({"resourceType": "Practitioner", "name": [{"family": "Careful"}]}))
        .await;
    let store = Store::connect(&ehr.app.database).await.expect("the store");
    users::add(
        &store,
        Kind::Practitioner,
        Credential::Password {
            username: USERNAME.to_owned(),
            password: PASSWORD.to_owned().into(),
        },
        &format!("Practitioner/{}", ehr.practitioner_id),
    )
    .await
    .expect("practitioner added");
    store.close().await;
    ehr
}

impl Ehr {
    /// Creates `resource`; its id.
    async fn create(&self, resource: &Value) -> String {
        let response = self
            .app
            .client
            .post(
                self.app
                    .url(resource["resourceType"].as_str().expect("a type")),
            )
            .bearer_auth(&self.admin)
            .header("content-type", FHIR_JSON)
            .body(resource.to_string())
            .send()
            .await
            .expect("request sent");
        assert_eq!(response.status(), 201, "creating {resource}");
        let created: Value = response.json().await.expect("JSON");
        created["id"].as_str().expect("an id").to_owned()
    }

    /// Registers a public app with these redirect and launch URIs; its client id.
    async fn register_app(&self, redirect_uri: &str, launch_uri: &str, scopes: &str) -> String {
        self.register(ClientKind::Public, redirect_uri, launch_uri, scopes)
            .await
    }

    /// Registers an app of `kind` (a confidential asymmetric one with the ES384 fixture key's
    /// JWKS, kid [`APP_KEY_ID`]); its client id.
    async fn register(
        &self,
        kind: ClientKind,
        redirect_uri: &str,
        launch_uri: &str,
        scopes: &str,
    ) -> String {
        let store = Store::connect(&self.app.database).await.expect("the store");
        let jwks = (kind == ClientKind::ConfidentialAsymmetric)
            .then(|| crate::auth::public_jwks(jsonwebtoken::Algorithm::ES384, APP_KEY_ID));
        let client = clients::register(
            &store,
            NewClient {
                launch_uri: Some(launch_uri.to_owned()),
                jwks,
                ..NewClient::app("Test SMART app", kind, redirect_uri, scopes)
            },
        )
        .await
        .expect("registered")
        .client;
        store.close().await;
        client.client_id
    }

    /// An EHR launch value for the patient, for `client_id` only (what `fhir-gateway launch`
    /// prints).
    async fn launch_value(&self, client_id: &str) -> String {
        let store = Store::connect(&self.app.database).await.expect("the store");
        let value =
            gateway::auth::authorize::issue_launch(&store, &self.patient_id, None, Some(client_id))
                .await
                .expect("a launch value");
        store.close().await;
        value
    }
}

/// The kid of the confidential app's key (the ES384 fixture, tests/fixtures/auth/).
const APP_KEY_ID: &str = "test-app-es384";

/// How the app is launched.
enum Launch {
    /// By the user, from the app (the practitioner picks the patient on the gateway's page).
    Standalone,
    /// By the EHR, with a launch value the EHR side issued (`fhir-gateway launch`).
    IssuedValue,
    /// By the practitioner on the gateway's EHR launch page, for the patient and this
    /// encounter.
    Page { encounter: String },
}

/// Runs the SMART JS client in Chromium (smart-launch.mjs): it serves the app on a port of
/// its own, the app is registered for that port, then the launch runs. The app's result, and
/// the script's whole output for failure messages.
async fn browser_launch(ehr: &Ehr, scope: &str, launch: Launch) -> (Value, String) {
    browser_launch_of(ehr, ClientKind::Public, scope, launch).await
}

/// [`browser_launch`] of an app of `kind` (public, or confidential asymmetric: the client then
/// signs its `private_key_jwt` assertions with the ES384 fixture key).
async fn browser_launch_of(
    ehr: &Ehr,
    kind: ClientKind,
    scope: &str,
    launch: Launch,
) -> (Value, String) {
    let script = workspace().join("gateway/tests/browser/smart-launch.mjs");
    assert!(
        workspace().join("node_modules/playwright-core").exists()
            && workspace().join("node_modules/fhirclient").exists(),
        "node_modules is missing: scripts/test.sh runs npm ci (fhirclient, playwright-core)"
    );
    let mut child = tokio::process::Command::new("node")
        .arg(&script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node runs");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let first = tokio::time::timeout(LAUNCH_TIMEOUT, stdout.next_line())
        .await
        .expect("the script starts in time")
        .expect("stdout")
        .expect("the script prints its port");
    let port = serde_json::from_str::<Value>(&first).expect("JSON")["port"]
        .as_u64()
        .expect("a port");
    let app_origin = format!("http://127.0.0.1:{port}");
    let client_id = ehr
        .register(
            kind,
            &format!("{app_origin}/index.html"),
            &format!("{app_origin}/launch.html"),
            "launch launch/patient launch/encounter openid fhirUser patient/*.rs offline_access",
        )
        .await;
    let mut options = json!({
        "iss": ehr.app.base,
        "clientId": client_id,
        "scope": scope,
        "username": USERNAME,
        "password": PASSWORD,
        "patient": ehr.patient_id,
    });
    if kind == ClientKind::ConfidentialAsymmetric {
        options["clientKey"] = json!({
            "pem": workspace().join("gateway/tests/fixtures/auth/test-client-es384.pem"),
            "alg": "ES384",
            "kid": APP_KEY_ID,
        });
    }
    match launch {
        Launch::Standalone => {}
        Launch::IssuedValue => options["launch"] = json!(ehr.launch_value(&client_id).await),
        Launch::Page { encounter } => {
            options["ehrLaunchPage"] = json!(format!("{}/auth/ehr-launch", ehr.app.base));
            options["encounter"] = json!(encounter);
        }
    }
    let mut stdin = child.stdin.take().expect("stdin");
    stdin
        .write_all(format!("{options}\n").as_bytes())
        .await
        .expect("options written");
    drop(stdin);
    let mut output = first;
    let mut last = String::new();
    let status = tokio::time::timeout(LAUNCH_TIMEOUT, async {
        while let Some(line) = stdout.next_line().await.expect("stdout") {
            output.push('\n');
            output.push_str(&line);
            last = line;
        }
        child.wait().await.expect("node exits")
    })
    .await
    .unwrap_or_else(|_| panic!("the launch did not finish in time:\n{output}"));
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        use tokio::io::AsyncReadExt as _;
        let _ = pipe.read_to_string(&mut stderr).await;
    }
    let output = format!("{output}\n{stderr}");
    assert!(status.success(), "the SMART JS client failed:\n{output}");
    let result: Value = serde_json::from_str(&last)
        .unwrap_or_else(|e| panic!("the script's result ({e}):\n{output}"));
    (result, output)
}

/// The scopes of a space-separated scope value, sorted.
fn scopes(value: &Value) -> Vec<&str> {
    let mut scopes: Vec<&str> = value.as_str().unwrap_or_default().split(' ').collect();
    scopes.sort_unstable();
    scopes
}

on_both!(
    the_smart_js_client_completes_a_standalone_launch_in_chromium,
    |db: Db| async move {
        let ehr = ehr(db).await;
        let scope = "launch/patient openid fhirUser patient/*.rs";
        let (result, output) = browser_launch(&ehr, scope, Launch::Standalone).await;
        // the practitioner picked the patient on the gateway's page
        assert!(output.contains("Choose a patient"), "{output}");
        // the app read the patient it was given, with the token of the granted scopes
        assert_eq!(result["patient"]["id"], ehr.patient_id.as_str(), "{output}");
        assert_eq!(
            result["patient"]["name"][0]["family"], "Lovelace",
            "{output}"
        );
        assert_eq!(
            result["context"]["patient"],
            ehr.patient_id.as_str(),
            "{output}"
        );
        assert_eq!(
            scopes(&result["context"]["scope"]),
            scopes(&json!(scope)),
            "{output}"
        );
        assert_eq!(
            result["context"]["fhirUser"],
            format!("Practitioner/{}", ehr.practitioner_id),
            "{output}"
        );
        assert_eq!(result["context"]["hasRefreshToken"], false, "{output}");
        assert_eq!(result["context"]["tokenType"], "Bearer", "{output}");
        assert!(
            result["context"]["expiresIn"].as_u64() > Some(0),
            "{output}"
        );
    }
);

on_both!(
    the_smart_js_client_completes_an_ehr_launch_in_chromium,
    |db: Db| async move {
        let ehr = ehr(db).await;
        let scope = "launch openid fhirUser patient/*.rs offline_access";
        let (result, output) = browser_launch(&ehr, scope, Launch::IssuedValue).await;
        // the patient came with the launch: nobody picked it
        assert!(!output.contains("Choose a patient"), "{output}");
        assert_eq!(result["patient"]["id"], ehr.patient_id.as_str(), "{output}");
        assert_eq!(
            result["context"]["patient"],
            ehr.patient_id.as_str(),
            "{output}"
        );
        assert_eq!(
            scopes(&result["context"]["scope"]),
            scopes(&json!(scope)),
            "{output}"
        );
        assert_eq!(
            result["context"]["fhirUser"],
            format!("Practitioner/{}", ehr.practitioner_id),
            "{output}"
        );
        // the client's own refresh: a new access token (and a rotated refresh token) that
        // reads the patient
        assert_eq!(result["context"]["hasRefreshToken"], true, "{output}");
        assert_eq!(result["refreshed"]["newAccessToken"], true, "{output}");
        assert_eq!(result["refreshed"]["newRefreshToken"], true, "{output}");
        assert_eq!(
            result["refreshed"]["patient"],
            ehr.patient_id.as_str(),
            "{output}"
        );
        assert_eq!(
            scopes(&result["refreshed"]["scope"]),
            scopes(&json!(scope)),
            "{output}"
        );
    }
);

on_both!(
    the_smart_js_client_is_launched_from_the_ehr_launch_page_with_an_encounter,
    |db: Db| async move {
        let ehr = ehr(db).await;
        let encounter = ehr
            .create(
                &json!({"resourceType": "Encounter", "status": "in-progress",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
            "subject": {"reference": format!("Patient/{}", ehr.patient_id)}}),
            )
            .await;
        let scope = "launch openid fhirUser patient/*.rs";
        let (result, output) = browser_launch(
            &ehr,
            scope,
            Launch::Page {
                encounter: encounter.clone(),
            },
        )
        .await;
        assert!(output.contains("Launch an app"), "{output}");
        assert!(!output.contains("Choose a patient"), "{output}");
        assert_eq!(result["patient"]["id"], ehr.patient_id.as_str(), "{output}");
        assert_eq!(
            result["context"]["patient"],
            ehr.patient_id.as_str(),
            "{output}"
        );
        assert_eq!(
            result["context"]["encounter"],
            encounter.as_str(),
            "{output}"
        );
        assert_eq!(
            scopes(&result["context"]["scope"]),
            scopes(&json!(scope)),
            "{output}"
        );
        assert_eq!(
            result["context"]["fhirUser"],
            format!("Practitioner/{}", ehr.practitioner_id),
            "{output}"
        );
    }
);

/// Runs the Python SMART client's standalone launch (smart_standalone.py) for `client_id`;
/// its result.
async fn python_launch(ehr: &Ehr, client_id: &str, redirect_uri: &str, scope: &str) -> Value {
    let python = workspace().join(".cache/venv/bin/python3");
    assert!(
        python.exists(),
        "{} is missing: scripts/test.sh installs the Python clients",
        python.display()
    );
    let options = json!({
        "base": ehr.app.base,
        "client_id": client_id,
        "redirect_uri": redirect_uri,
        "scope": scope,
        "username": USERNAME,
        "password": PASSWORD,
        "patient": ehr.patient_id,
    });
    let run = tokio::process::Command::new(python)
        .arg(workspace().join("gateway/tests/clients/smart_standalone.py"))
        .arg(options.to_string())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(LAUNCH_TIMEOUT, run)
        .await
        .expect("the Python client finishes in time")
        .expect("python runs");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "the Python SMART client failed:\n{text}"
    );
    let last = String::from_utf8_lossy(&output.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .to_owned();
    serde_json::from_str(&last).unwrap_or_else(|e| panic!("the client's result ({e}):\n{text}"))
}

on_both!(
    the_python_smart_client_completes_a_standalone_launch,
    |db: Db| async move {
        let ehr = ehr(db).await;
        let redirect_uri = "http://127.0.0.1/python-app/callback";
        let client_id = ehr
            .register_app(
                redirect_uri,
                "http://127.0.0.1/python-app/launch",
                "launch/patient openid fhirUser patient/*.rs offline_access",
            )
            .await;
        let scope = "launch/patient openid fhirUser patient/*.rs offline_access";
        let result = python_launch(&ehr, &client_id, redirect_uri, scope).await;
        assert_eq!(result["patient_id"], ehr.patient_id.as_str(), "{result}");
        assert_eq!(result["patient"]["id"], ehr.patient_id.as_str(), "{result}");
        assert_eq!(
            result["patient"]["name"][0]["family"], "Lovelace",
            "{result}"
        );
        assert_eq!(scopes(&result["scope"]), scopes(&json!(scope)), "{result}");
        // the client's own refresh
        assert_eq!(result["refreshed"]["new_access_token"], true, "{result}");
        assert_eq!(
            result["refreshed"]["patient_id"],
            ehr.patient_id.as_str(),
            "{result}"
        );
        assert_eq!(
            scopes(&result["refreshed"]["scope"]),
            scopes(&json!(scope)),
            "{result}"
        );
    }
);

on_both!(
    the_smart_js_client_of_a_confidential_app_authenticates_with_its_private_key,
    |db: Db| async move {
        let ehr = ehr(db).await;
        // no offline_access: the SMART JS client (2.6) authenticates its refresh requests with
        // a client secret only, never with its private key, and the gateway rightly refuses
        // a confidential client's unauthenticated refresh (RFC 6749 §6)
        let scope = "launch/patient openid fhirUser patient/*.rs";
        let (result, output) = browser_launch_of(
            &ehr,
            ClientKind::ConfidentialAsymmetric,
            scope,
            Launch::Standalone,
        )
        .await;
        // the code exchanged with a private_key_jwt assertion the client signed (ES384) in
        // the browser
        assert_eq!(result["patient"]["id"], ehr.patient_id.as_str(), "{output}");
        assert_eq!(
            scopes(&result["context"]["scope"]),
            scopes(&json!(scope)),
            "{output}"
        );
        assert_eq!(
            result["context"]["fhirUser"],
            format!("Practitioner/{}", ehr.practitioner_id),
            "{output}"
        );
    }
);
