use gateway::config::Config;
use gateway::startup::Application;
use serde_json::Value;
use sqlx::Connection;

/// Which database a test app runs on.
#[derive(Debug, Clone, Copy)]
pub enum Db {
    Postgres,
    Sqlite,
}

/// A gateway running on a free port with a database of its own.
pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    /// The database settings the gateway runs with (for tests that look into it).
    pub database: gateway::config::DatabaseConfig,
    /// The port of the HL7 v2 MLLP listener, when the test enabled it (`mllp.enabled`).
    pub mllp_port: Option<u16>,
    _dir: tempfile::TempDir,
}

/// The PostgreSQL server tests use (a fresh database per test is created in it).
fn postgres_server() -> String {
    std::env::var("TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned())
}

impl TestApp {
    /// A client of a gateway already listening at `base` (one a test started as a process
    /// on `database`).
    pub fn at(base: String, database: gateway::config::DatabaseConfig) -> TestApp {
        TestApp {
            base,
            client: reqwest::Client::new(),
            database,
            mllp_port: None,
            _dir: tempfile::tempdir().expect("temporary directory"),
        }
    }
}

pub async fn spawn_app(db: Db) -> TestApp {
    spawn_app_with(db, |_| {}).await
}

pub async fn spawn_app_with(db: Db, adjust: impl FnOnce(&mut Config)) -> TestApp {
    if let Ok(filter) = std::env::var("TEST_LOG") {
        // the gateway's own log, to see why a test failed: TEST_LOG=warn cargo nextest run ...
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    }
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut config = Config::default();
    config.server.port = 0;
    config.server.workers = 2;
    config.database.data_dir = dir.path().to_path_buf();
    config.database.max_connections = 8;
    // no chain unless a test asks for one (tests/api/anchoring.rs)
    config.chain.mode = gateway::config::ChainMode::Off;
    // a fixture ID-token key: generating an RSA key per test app would cost a second each
    config.auth.id_token_key_file = Some(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/auth/test-id-token-rs256.pem"),
    );
    // no access token needed unless a test asks for it (tests/api/access.rs)
    config.auth.required = false;
    // no on-chain consent unless a test asks for it (tests/api/consent.rs)
    config.consent.enforce = false;
    // no audit trail unless a test asks for it (tests/api/audit.rs): many tests count what
    // the log, a history or a compartment holds, and every request would add an AuditEvent
    config.audit.enabled = false;
    if let Db::Postgres = db {
        config.database.url = Some(new_postgres_database().await.into());
    }
    adjust(&mut config);
    let database = config.database.clone();
    let app = Application::build(config)
        .await
        .expect("the gateway builds");
    let base = app.base_url().to_owned();
    let mllp_port = app.mllp_port();
    tokio::spawn(app.run_until_stopped());
    TestApp {
        base,
        client: reqwest::Client::new(),
        database,
        mllp_port,
        _dir: dir,
    }
}

/// A fresh PostgreSQL database for this test process; returns its URL.
pub async fn new_postgres_database() -> String {
    // named after this test process, so later runs can drop what it leaves behind
    let name = format!(
        "gw_test_{}_{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    );
    let mut admin = sqlx::PgConnection::connect(&format!("{}/postgres", postgres_server()))
        .await
        .expect("PostgreSQL must run on 127.0.0.1:5432 (user postgres, trust auth) or at TEST_POSTGRES_URL");
    drop_databases_of_finished_tests(&mut admin).await;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut admin)
        .await
        .expect("create database");
    format!("{}/{name}", postgres_server())
}

/// Drops the databases of test processes that have exited (each test process runs one test
/// and its database lives as long as the process).
async fn drop_databases_of_finished_tests(admin: &mut sqlx::PgConnection) {
    let names: Vec<String> =
        sqlx::query_scalar("SELECT datname FROM pg_database WHERE datname LIKE 'gw\\_test\\_%'")
            .fetch_all(&mut *admin)
            .await
            .unwrap_or_default();
    for name in names {
        let pid = name.split('_').nth(2).and_then(|p| p.parse::<u32>().ok());
        let finished =
            pid.is_none_or(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists());
        if finished && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            // audited: `name` is a database name made only of [A-Za-z0-9_]
            let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
            )))
            .execute(&mut *admin)
            .await;
        }
    }
}

/// Runs a test body against PostgreSQL and against SQLite.
#[macro_export]
macro_rules! both {
    ($name:ident, $body:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let app = $crate::helpers::spawn_app($crate::helpers::Db::Postgres).await;
                ($body)(app).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let app = $crate::helpers::spawn_app($crate::helpers::Db::Sqlite).await;
                ($body)(app).await;
            }
        }
    };
}

impl TestApp {
    /// A connection to the gateway's database, to check what it holds.
    pub async fn database_connection(&self) -> sqlx::AnyConnection {
        use secrecy::ExposeSecret as _;
        sqlx::any::install_default_drivers();
        let url = match &self.database.url {
            Some(url) => url.expose_secret().to_owned(),
            None => format!(
                "sqlite://{}",
                self.database.data_dir.join("gateway.db").display()
            ),
        };
        sqlx::AnyConnection::connect(&url)
            .await
            .expect("a connection to the gateway's database")
    }
}

/// Runs a test body, given the database to start its own app on, against PostgreSQL and
/// against SQLite (for tests that configure their app).
#[macro_export]
macro_rules! on_both {
    ($name:ident, $body:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                ($body)($crate::helpers::Db::Postgres).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                ($body)($crate::helpers::Db::Sqlite).await;
            }
        }
    };
}

pub const FHIR_JSON: &str = "application/fhir+json";

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}/{}", self.base, path.trim_start_matches('/'))
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .send()
            .await
            .expect("request sent")
    }

    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        let response = self.get(path).await;
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: &Value,
    ) -> reqwest::Response {
        self.client
            .request(method, self.url(path))
            .header("content-type", FHIR_JSON)
            .body(body.to_string())
            .send()
            .await
            .expect("request sent")
    }

    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let response = self.send(reqwest::Method::POST, path, body).await;
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub async fn put(&self, path: &str, body: &Value) -> (u16, Value) {
        let response = self.send(reqwest::Method::PUT, path, body).await;
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Creates a resource and returns its id.
    pub async fn create(&self, resource: &Value) -> String {
        let resource_type = resource["resourceType"].as_str().expect("resourceType");
        let (status, body) = self.post(resource_type, resource).await;
        assert_eq!(status, 201, "creating {resource}: {body}");
        body["id"].as_str().expect("id").to_owned()
    }

    /// The ids of the matches in a searchset Bundle, in order.
    pub async fn search_ids(&self, query: &str) -> Vec<String> {
        let (status, bundle) = self.get_json(query).await;
        assert_eq!(status, 200, "searching {query}: {bundle}");
        match_ids(&bundle)
    }
}

pub fn match_ids(bundle: &Value) -> Vec<String> {
    bundle["entry"]
        .as_array()
        .map(|entries| {
            entries
                .iter()
                .filter(|e| e["search"]["mode"] == "match")
                .map(|e| e["resource"]["id"].as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The first issue of an OperationOutcome, for assertions.
pub fn diagnostics(outcome: &Value) -> String {
    assert_eq!(
        outcome["resourceType"], "OperationOutcome",
        "expected an OperationOutcome, got {outcome}"
    );
    let issues = outcome["issue"].as_array().cloned().unwrap_or_default();
    issues
        .iter()
        .map(|issue| {
            format!(
                "{} (at {})",
                issue["diagnostics"].as_str().unwrap_or(""),
                issue["expression"]
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}
