//! Configuration in layers: built-in defaults, then a TOML file, then environment
//! variables (`FHIR_GATEWAY_` prefix, `__` between levels: `FHIR_GATEWAY_SERVER__PORT=9090`).
//! Every setting is documented once, in the README's configuration table.

use std::path::{Path, PathBuf};

use fhir_profiles::validate::UnknownProfile;
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub database: DatabaseConfig,
    pub limits: LimitsConfig,
    pub search: SearchConfig,
    pub validation: ValidationConfig,
    pub log: LogConfig,
    pub telemetry: TelemetryConfig,
    pub ledger: LedgerConfig,
    pub chain: ChainConfig,
    pub auth: AuthConfig,
    pub consent: ConsentConfig,
    pub mllp: MllpConfig,
    pub audit: AuditConfig,
}

/// The audit trail (the `[audit]` section, [`crate::audit`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// Whether every interaction with the FHIR API is recorded as an AuditEvent before it is
    /// answered. Only for measuring what auditing costs: off, the gateway breaks its promise
    /// that every access is on record (it warns at start).
    pub enabled: bool,
    /// How many batches of records the group-commit writer stores at once, each in its own
    /// transaction on its own connection: while one batch waits for its commit to reach the
    /// disk, the next is written (SQLite writes one at a time whatever this says).
    pub writers: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on.
    pub host: String,
    /// Port to listen on (0 picks a free port).
    pub port: u16,
    /// The public FHIR base URL (used in `Location`, `fullUrl` and paging links). Its path
    /// is where the FHIR API is mounted. Defaults to `http://{host}:{port}/fhir`.
    pub base_url: Option<String>,
    /// HTTP worker threads (0 = one per core).
    pub workers: usize,
    /// Seconds to let in-flight requests finish on shutdown.
    pub shutdown_timeout_secs: u64,
    /// Serve HTTPS (TLS 1.2 and 1.3) with this certificate chain (PEM); with `tls_key_file`.
    /// Unset: plain HTTP, for a TLS-terminating proxy in front or local development.
    pub tls_cert_file: Option<PathBuf>,
    /// The private key of `tls_cert_file` (PEM).
    pub tls_key_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `postgres://...` for PostgreSQL. Unset: an embedded SQLite file in `data_dir`.
    #[serde(serialize_with = "serialize_secret", default)]
    pub url: Option<SecretString>,
    /// Directory for the embedded SQLite database.
    pub data_dir: PathBuf,
    /// Maximum connections in the pool (PostgreSQL; SQLite uses one writer and this many readers).
    pub max_connections: u32,
    /// SQLite only: when a commit reaches the disk.
    pub sqlite_synchronous: SqliteSynchronous,
}

/// SQLite's `synchronous` setting (the database runs in WAL mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SqliteSynchronous {
    /// Every commit is on disk before it is acknowledged (survives a power loss).
    Full,
    /// Commits reach the disk at checkpoints: they survive a crash of the gateway, not of the
    /// machine. Much faster on slow disks; for tests and throw-away data.
    Normal,
}

impl SqliteSynchronous {
    pub fn pragma(self) -> &'static str {
        match self {
            SqliteSynchronous::Full => "FULL",
            SqliteSynchronous::Normal => "NORMAL",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest request body accepted, in bytes (after decompression).
    pub max_body_bytes: usize,
    /// Most entries accepted in a batch or transaction Bundle.
    pub max_bundle_entries: usize,
    /// Deepest nesting of JSON arrays and objects accepted.
    pub max_json_depth: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchConfig {
    /// Page size when the client gives no `_count`.
    pub default_count: usize,
    /// Largest page size served; larger `_count` values are lowered to this.
    pub max_count: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValidationConfig {
    /// What to do with a profile claimed in `meta.profile` that the server does not ship:
    /// `ignore`, `warn` (a warning in `$validate`; writes accept the resource) or `reject`.
    pub unknown_profile: UnknownProfile,
    /// Also ask the fhir-sdk R4B model whether it accepts each incoming resource (after the
    /// R4 validator passed it); a refusal becomes a warning, never a rejection.
    pub r4b_check: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `tracing` filter directive, e.g. `info` or `gateway=debug,sqlx=warn`.
    pub filter: String,
    /// `json` for structured logs, `pretty` for humans.
    pub format: String,
}

/// OpenTelemetry traces and metrics (the `[telemetry]` section). Nothing in them names a
/// patient: spans and metrics carry routes, interactions, outcomes and counts only.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// The OTLP/HTTP (protobuf) receiver traces and metrics are sent to, e.g.
    /// `http://localhost:4318` (`/v1/traces` and `/v1/metrics` are added). Unset: the standard
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` if it is set, else nothing is exported.
    pub otlp_endpoint: Option<String>,
    /// The `service.name` of the exported traces and metrics.
    pub service_name: String,
    /// `tracing` filter directive choosing the spans that become OpenTelemetry spans (and
    /// carry trace ids into the logs), independent of `log.filter`.
    pub trace_filter: String,
    /// Milliseconds between two exports of the metrics over OTLP.
    pub metrics_export_interval_ms: u64,
    /// Whether `GET /metrics` serves the metrics in the Prometheus text format.
    pub prometheus: bool,
    /// A bearer token `GET /metrics` requires (`Authorization: Bearer ...`), from the
    /// environment (`FHIR_GATEWAY_TELEMETRY__PROMETHEUS_TOKEN`). Unset: anyone who reaches the
    /// port may scrape (the gateway warns at start).
    #[serde(serialize_with = "serialize_secret", default)]
    pub prometheus_token: Option<SecretString>,
}

impl TelemetryConfig {
    /// The OTLP endpoint in force: the configured one, else `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub fn otlp_endpoint(&self) -> Option<String> {
        self.otlp_endpoint
            .clone()
            .or_else(|| std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok())
            .map(|endpoint| endpoint.trim().trim_end_matches('/').to_owned())
            .filter(|endpoint| !endpoint.is_empty())
    }
}

/// The anchored log's sequencer and sealer (the `[ledger]` section: `[log]` is the
/// diagnostic log).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LedgerConfig {
    /// Most leaves in a batch; a full batch is sealed at once.
    pub batch_max_size: u64,
    /// Seconds after which a batch that is not full is sealed (counted from the write of its
    /// first version, the oldest in the log's commit order).
    pub batch_max_age_secs: u64,
    /// Milliseconds between two runs of the sequencer and sealer.
    pub interval_ms: u64,
}

/// Where the anchored log's batches are anchored (the `[chain]` section).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChainConfig {
    /// `embedded`: start a local anvil from the project's npm-installed Foundry and anchor
    /// there; `rpc`: anchor on the chain at `rpc_url`; `off`: seal batches but anchor nowhere
    /// (proofs stay `pending` until a chain is configured).
    pub mode: ChainMode,
    /// `rpc` mode: the JSON-RPC endpoint (`https://` or `http://`; it may hold an API key, so it is a
    /// secret: logs name its scheme, host and port only).
    #[serde(serialize_with = "serialize_secret", default)]
    pub rpc_url: Option<SecretString>,
    /// `rpc` mode: the anchoring account's key (64 hex digits), from the environment
    /// (`FHIR_GATEWAY_CHAIN__SIGNER_KEY`). Use this or `signer_key_file`.
    #[serde(serialize_with = "serialize_secret", default)]
    pub signer_key: Option<SecretString>,
    /// `rpc` mode: a file holding the anchoring account's key.
    pub signer_key_file: Option<PathBuf>,
    /// The `AnchorRegistry` address. Unset: the gateway deploys one the first time and
    /// records it in the database (table `log_chain`), then reuses it.
    pub registry: Option<String>,
    /// How deep an anchoring block must be before its batch counts as confirmed (1 = mined).
    pub confirmations: u64,
    /// Milliseconds between two looks at the chain (receipts, head, backlog).
    pub poll_interval_ms: u64,
    /// Seconds an anchor transaction may stay unmined before it is replaced with higher fees.
    pub bump_after_secs: u64,
    /// By how much a replacement raises the fees, in percent (at least 10).
    pub bump_percent: u32,
    /// The highest fee per gas ever offered, in gwei (unset: no cap).
    pub max_fee_per_gas_gwei: Option<u64>,
    /// `embedded` mode: the anvil binary (unset: the one `npm ci` installs under
    /// `node_modules/@foundry-rs/`, looked for from the working directory upwards, then
    /// `anvil` on the `PATH`).
    pub anvil_path: Option<PathBuf>,
    /// `embedded` mode: the port anvil listens on, on 127.0.0.1 (0 picks a free one).
    pub anvil_port: u16,
    /// `embedded` mode: seconds between anvil's blocks (blocks also come with every
    /// transaction), so that confirmations accrue.
    pub anvil_block_time_secs: u64,
}

/// The gateway's SMART on FHIR authorization server (the `[auth]` section).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// The `iss` of the tokens the gateway issues. Unset: the FHIR base URL.
    pub issuer: Option<String>,
    /// A PEM file (PKCS#8) holding the P-256 key that signs the gateway's tokens (ES256).
    /// Unset: a key generated on first start into `database.data_dir` (`auth-signing.pem`,
    /// mode 0600) and reused after.
    pub signing_key_file: Option<PathBuf>,
    /// An RSA private key (PEM, at least 2048 bits) that signs OpenID Connect ID tokens with
    /// RS256; unset: one is made in the data directory on first start.
    pub id_token_key_file: Option<PathBuf>,
    /// Lifetime of the access tokens the gateway issues, in seconds.
    pub access_token_lifetime_secs: u64,
    /// Whether the FHIR API requires an access token. `false` runs every request as the
    /// operator, with full access (for development only: the gateway warns at start).
    pub required: bool,
    /// Earlier signing keys (PEM files), kept during a key rotation: their public keys are
    /// published in the JWKS and still verify the tokens they signed; they never sign.
    #[serde(default)]
    pub previous_signing_key_files: Vec<PathBuf>,
    /// OAuth 2.0 Dynamic Client Registration (RFC 7591) at `[base]/auth/register`: `open`
    /// (anyone may register an app, within `registration_scopes`) or `off`.
    pub registration: RegistrationMode,
    /// The most an openly registered app may be allowed (never `system/` scopes).
    pub registration_scopes: String,
    /// How long a client's JWKS fetched from its JWKS URL is used, in seconds.
    pub jwks_cache_secs: u64,
    /// The least time between two fetches of one JWKS URL when an assertion names a key the
    /// cached set lacks, in seconds.
    pub jwks_refetch_secs: u64,
    /// Lifetime of an authorization code, in seconds (single use in any case).
    pub code_lifetime_secs: u64,
    /// Lifetime of a refresh token, in seconds (each use rotates it and starts a new one).
    pub refresh_token_lifetime_secs: u64,
    /// How long a user stays signed in at the authorization server's pages, in seconds;
    /// `online_access` refresh tokens end with the session.
    pub session_lifetime_secs: u64,
    /// The EIP-155 chain id written into the Sign-In with Ethereum messages patients sign
    /// (and required back). The messages' domain and URI come from the FHIR base URL.
    pub siwe_chain_id: u64,
    /// How long a link code that binds a Patient to the patient's wallet can be redeemed,
    /// in seconds (single use in any case).
    pub link_code_lifetime_secs: u64,
}

/// On-chain patient consent (the `[consent]` section): the ConsentRegistry the gateway follows
/// and how it enforces what the index holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsentConfig {
    /// Whether patient-compartment reads need a consent grant on chain. `false` serves every
    /// token by its scopes alone (for a deployment whose consent lives elsewhere; the gateway
    /// warns at start). The operator (`auth.required = false`) is never consent-gated.
    pub enforce: bool,
    /// The `ConsentRegistry` address. Unset: the gateway deploys one with the relayer key
    /// (on the embedded chain, its own) and records it in the database, then reuses it.
    pub registry: Option<String>,
    /// The block the configured registry was deployed in: where reading its events starts
    /// (unset: block 0).
    pub start_block: Option<u64>,
    /// `rpc` mode: the key of the account that relays patients' signed grants and
    /// revocations and pays their gas (64 hex digits), from the environment
    /// (`FHIR_GATEWAY_CONSENT__RELAYER_KEY`); or `relayer_key_file`. Unset: no relaying
    /// (patients send their grants themselves). The embedded chain makes and funds its own.
    #[serde(serialize_with = "serialize_secret", default)]
    pub relayer_key: Option<SecretString>,
    /// `rpc` mode: a file holding the relayer's key.
    pub relayer_key_file: Option<PathBuf>,
    /// How deep a granting block must be before the grant counts (1 = mined).
    /// Revocations count as soon as their block is seen.
    pub confirmations: u64,
    /// Milliseconds between two looks at the chain for new consent events.
    pub poll_interval_ms: u64,
    /// Seconds the index may go without catching up with the chain head before
    /// consent-gated reads are refused with 503 (fail closed).
    pub max_lag_secs: u64,
    /// How a read of one resource that no grant covers answers: `forbidden` (403, saying
    /// that consent is missing) or `not-found` (404, hiding that the resource exists).
    pub denied: ConsentDenied,
}

/// The HL7 v2 listener (the `[mllp]` section): MLLP over TCP, or over TLS with a certificate.
/// MLLP carries no credentials: the listener writes as a system actor with `scopes`, and is
/// protected by where it listens, TLS, and the list of sending facilities it accepts.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MllpConfig {
    /// Whether the listener runs.
    pub enabled: bool,
    /// Address to listen on.
    pub host: String,
    /// Port to listen on (0 picks a free port; 2575 is HL7's registered port).
    pub port: u16,
    /// Speak MLLP inside TLS (1.2 and 1.3) with this certificate chain (PEM); with
    /// `tls_key_file`. Unset: plain TCP.
    pub tls_cert_file: Option<PathBuf>,
    /// The private key of `tls_cert_file` (PEM).
    pub tls_key_file: Option<PathBuf>,
    /// Largest message accepted, in bytes; a larger one is refused (AR) and the connection
    /// closed.
    pub max_message_bytes: usize,
    /// Seconds a connection may stay silent before it is closed.
    pub idle_timeout_secs: u64,
    /// Most connections served at once; more are closed at once.
    pub max_connections: usize,
    /// The SMART scopes the listener writes with (it acts as the system client `mllp`).
    pub scopes: String,
    /// The sending facilities (MSH-4, its first component) whose messages are accepted;
    /// empty accepts every facility. Others are answered AR and nothing is written.
    pub allowed_facilities: Vec<String>,
}

/// See [`ConsentConfig::denied`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConsentDenied {
    Forbidden,
    NotFound,
}

/// See [`AuthConfig::registration`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RegistrationMode {
    Off,
    Open,
}

/// See [`ChainConfig::mode`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChainMode {
    Embedded,
    Rpc,
    Off,
}

fn serialize_secret<S: serde::Serializer>(
    secret: &Option<SecretString>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match secret {
        Some(secret) => s.serialize_some(secret.expose_secret()),
        None => s.serialize_none(),
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            server: ServerConfig {
                host: "127.0.0.1".to_owned(),
                port: 8080,
                base_url: None,
                workers: 0,
                shutdown_timeout_secs: 30,
                tls_cert_file: None,
                tls_key_file: None,
            },
            database: DatabaseConfig {
                url: None,
                data_dir: PathBuf::from(".data"),
                max_connections: 16,
                sqlite_synchronous: SqliteSynchronous::Full,
            },
            limits: LimitsConfig {
                max_body_bytes: 32 * 1024 * 1024,
                max_bundle_entries: 10_000,
                max_json_depth: 64,
            },
            search: SearchConfig {
                default_count: 50,
                max_count: 1000,
            },
            validation: ValidationConfig {
                unknown_profile: UnknownProfile::Warn,
                r4b_check: true,
            },
            log: LogConfig {
                filter: "info".to_owned(),
                format: "json".to_owned(),
            },
            telemetry: TelemetryConfig {
                otlp_endpoint: None,
                service_name: "fhir-gateway".to_owned(),
                trace_filter: "info".to_owned(),
                metrics_export_interval_ms: 60_000,
                prometheus: false,
                prometheus_token: None,
            },
            ledger: LedgerConfig {
                batch_max_size: 10_000,
                batch_max_age_secs: 12,
                interval_ms: 1000,
            },
            chain: ChainConfig {
                mode: ChainMode::Embedded,
                rpc_url: None,
                signer_key: None,
                signer_key_file: None,
                registry: None,
                confirmations: 3,
                poll_interval_ms: 1000,
                bump_after_secs: 60,
                bump_percent: 25,
                max_fee_per_gas_gwei: None,
                anvil_path: None,
                anvil_port: 8545,
                anvil_block_time_secs: 1,
            },
            auth: AuthConfig {
                issuer: None,
                signing_key_file: None,
                id_token_key_file: None,
                access_token_lifetime_secs: 300,
                required: true,
                previous_signing_key_files: Vec::new(),
                registration: RegistrationMode::Open,
                registration_scopes:
                    "openid fhirUser launch/patient offline_access online_access patient/*.rs"
                        .to_owned(),
                jwks_cache_secs: 300,
                jwks_refetch_secs: 10,
                code_lifetime_secs: 60,
                refresh_token_lifetime_secs: 30 * 24 * 3600,
                session_lifetime_secs: 8 * 3600,
                siwe_chain_id: 1,
                link_code_lifetime_secs: 7 * 24 * 3600,
            },
            consent: ConsentConfig {
                enforce: true,
                registry: None,
                start_block: None,
                relayer_key: None,
                relayer_key_file: None,
                confirmations: 2,
                poll_interval_ms: 500,
                max_lag_secs: 30,
                denied: ConsentDenied::Forbidden,
            },
            mllp: MllpConfig {
                enabled: false,
                host: "127.0.0.1".to_owned(),
                port: 2575,
                tls_cert_file: None,
                tls_key_file: None,
                max_message_bytes: 1024 * 1024,
                idle_timeout_secs: 600,
                max_connections: 256,
                scopes: "system/*.cruds".to_owned(),
                allowed_facilities: Vec::new(),
            },
            audit: AuditConfig {
                enabled: true,
                writers: 2,
            },
        }
    }
}

impl Config {
    /// Defaults, then the file (if given, it must exist), then the environment.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Config> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            anyhow::ensure!(
                file.exists(),
                "configuration file {} does not exist",
                file.display()
            );
            figment = figment.merge(Toml::file(file));
        }
        // FHIR_GATEWAY_CONFIG and FHIR_GATEWAY_USER_PASSWORD are the command line's, not settings
        figment = figment.merge(
            Env::prefixed("FHIR_GATEWAY_")
                .split("__")
                .ignore(&["config", "user_password"]),
        );
        let config: Config = figment.extract()?;
        config.check()?;
        Ok(config)
    }

    fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            (1..=usize::try_from(self.database.max_connections).unwrap_or(usize::MAX))
                .contains(&self.audit.writers),
            "audit.writers must be at least 1 and at most database.max_connections"
        );
        anyhow::ensure!(
            self.search.default_count >= 1,
            "search.default_count must be at least 1"
        );
        anyhow::ensure!(
            self.search.max_count >= self.search.default_count,
            "search.max_count must be >= default_count"
        );
        anyhow::ensure!(
            self.limits.max_json_depth >= 8,
            "limits.max_json_depth must be at least 8"
        );
        anyhow::ensure!(
            matches!(self.log.format.as_str(), "json" | "pretty"),
            "log.format must be json or pretty"
        );
        anyhow::ensure!(
            self.telemetry.metrics_export_interval_ms >= 100,
            "telemetry.metrics_export_interval_ms must be at least 100"
        );
        if let Some(endpoint) = self.telemetry.otlp_endpoint() {
            anyhow::ensure!(
                endpoint.starts_with("http://") || endpoint.starts_with("https://"),
                "the OTLP endpoint (telemetry.otlp_endpoint or OTEL_EXPORTER_OTLP_ENDPOINT) must be an http:// or https:// URL"
            );
        }
        anyhow::ensure!(
            (1..=1_000_000).contains(&self.ledger.batch_max_size),
            "ledger.batch_max_size must be between 1 and 1000000"
        );
        anyhow::ensure!(
            self.ledger.interval_ms >= 10,
            "ledger.interval_ms must be at least 10"
        );
        anyhow::ensure!(
            self.chain.confirmations >= 1,
            "chain.confirmations must be at least 1"
        );
        anyhow::ensure!(
            self.mllp.tls_cert_file.is_some() == self.mllp.tls_key_file.is_some(),
            "mllp.tls_cert_file and mllp.tls_key_file go together"
        );
        anyhow::ensure!(
            self.mllp.max_message_bytes >= 1024,
            "mllp.max_message_bytes must be at least 1024"
        );
        anyhow::ensure!(
            self.mllp.max_connections >= 1 && self.mllp.idle_timeout_secs >= 1,
            "mllp.max_connections and mllp.idle_timeout_secs must be at least 1"
        );
        crate::auth::scopes::ScopeSet::parse(&self.mllp.scopes)
            .map_err(|e| anyhow::anyhow!("mllp.scopes: {e}"))?;
        anyhow::ensure!(
            self.chain.poll_interval_ms >= 10,
            "chain.poll_interval_ms must be at least 10"
        );
        anyhow::ensure!(
            self.chain.bump_percent >= 10,
            "chain.bump_percent must be at least 10 (nodes refuse smaller replacements)"
        );
        if self.chain.mode == ChainMode::Rpc {
            anyhow::ensure!(
                self.chain.rpc_url.is_some(),
                "chain.mode = \"rpc\" needs chain.rpc_url"
            );
            anyhow::ensure!(
                self.chain.signer_key.is_some() != self.chain.signer_key_file.is_some(),
                "chain.mode = \"rpc\" needs exactly one of chain.signer_key (from the environment) and chain.signer_key_file"
            );
        }
        for (name, registry) in [
            ("chain.registry", &self.chain.registry),
            ("consent.registry", &self.consent.registry),
        ] {
            if let Some(registry) = registry {
                anyhow::ensure!(
                    registry.len() == 42
                        && registry.starts_with("0x")
                        && registry[2..].bytes().all(|b| b.is_ascii_hexdigit()),
                    "{name} must be a 0x-prefixed 20-byte hexadecimal address"
                );
            }
        }
        anyhow::ensure!(
            self.consent.confirmations >= 1,
            "consent.confirmations must be at least 1"
        );
        anyhow::ensure!(
            self.consent.poll_interval_ms >= 10,
            "consent.poll_interval_ms must be at least 10"
        );
        anyhow::ensure!(
            self.consent.max_lag_secs >= 1,
            "consent.max_lag_secs must be at least 1"
        );
        anyhow::ensure!(
            self.consent.max_lag_secs * 1000 > self.consent.poll_interval_ms,
            "consent.max_lag_secs must be longer than consent.poll_interval_ms, or every read would be refused"
        );
        anyhow::ensure!(
            (10..=3600).contains(&self.auth.access_token_lifetime_secs),
            "auth.access_token_lifetime_secs must be between 10 and 3600 (tokens are short-lived)"
        );
        crate::auth::clients::check_registration_scopes(&self.auth.registration_scopes)
            .map_err(|e| anyhow::anyhow!("auth.registration_scopes: {e}"))?;
        anyhow::ensure!(
            (10..=600).contains(&self.auth.code_lifetime_secs),
            "auth.code_lifetime_secs must be between 10 and 600 (codes are short-lived)"
        );
        anyhow::ensure!(
            self.auth.refresh_token_lifetime_secs >= 60,
            "auth.refresh_token_lifetime_secs must be at least 60"
        );
        anyhow::ensure!(
            self.auth.session_lifetime_secs >= 60,
            "auth.session_lifetime_secs must be at least 60"
        );
        anyhow::ensure!(
            (60..=90 * 24 * 3600).contains(&self.auth.link_code_lifetime_secs),
            "auth.link_code_lifetime_secs must be between 60 and 7776000 (90 days)"
        );
        anyhow::ensure!(
            self.auth.siwe_chain_id > 0,
            "auth.siwe_chain_id must be an EIP-155 chain id (1 for Ethereum mainnet)"
        );
        if let Some(issuer) = &self.auth.issuer {
            anyhow::ensure!(
                issuer.starts_with("http://") || issuer.starts_with("https://"),
                "auth.issuer must be an http(s) URL"
            );
        }
        if let Some(base) = &self.server.base_url {
            anyhow::ensure!(
                base.starts_with("http://") || base.starts_with("https://"),
                "server.base_url must be an http(s) URL"
            );
        }
        anyhow::ensure!(
            self.server.tls_cert_file.is_some() == self.server.tls_key_file.is_some(),
            "server.tls_cert_file and server.tls_key_file go together"
        );
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Jail's closure signature
mod tests {
    use super::*;

    #[test]
    fn a_tls_certificate_needs_its_key() {
        let mut config = Config::default();
        config.server.tls_cert_file = Some(PathBuf::from("cert.pem"));
        let error = config.check().expect_err("refused");
        assert!(error.to_string().contains("go together"), "{error}");
        config.server.tls_key_file = Some(PathBuf::from("key.pem"));
        assert!(config.check().is_ok());
    }

    #[test]
    fn layers_apply_in_order() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "gw.toml",
                "[server]\nport = 9000\n[search]\ndefault_count = 20\n",
            )?;
            jail.set_env("FHIR_GATEWAY_SERVER__PORT", "9100");
            let config = Config::load(Some(Path::new("gw.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(config.server.port, 9100, "environment overrides the file");
            assert_eq!(
                config.search.default_count, 20,
                "the file overrides the defaults"
            );
            assert_eq!(config.limits.max_json_depth, 64, "defaults fill the rest");
            Ok(())
        });
    }

    #[test]
    fn the_shipped_example_configuration_loads() {
        figment::Jail::expect_with(|jail| {
            let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/fhir-gateway.toml");
            assert!(
                Config::load(Some(&path)).is_err(),
                "the chain's RPC URL must come from the environment"
            );
            jail.set_env("FHIR_GATEWAY_CHAIN__RPC_URL", "http://127.0.0.1:8545/key");
            let config = Config::load(Some(&path)).map_err(|e| e.to_string())?;
            assert_eq!(
                config.server.base_url.as_deref(),
                Some("https://fhir.example.org/fhir")
            );
            assert!(config.database.url.is_none(), "no secret in the example");
            assert!(
                config.chain.signer_key.is_none(),
                "no secret in the example"
            );
            assert_eq!(config.chain.mode, ChainMode::Rpc);
            assert_eq!(
                config.auth.signing_key_file.as_deref(),
                Some(Path::new("/etc/fhir-gateway/auth-signing.pem"))
            );
            assert_eq!(config.auth.access_token_lifetime_secs, 300);
            assert!(config.auth.required, "the example requires tokens");
            assert_eq!(config.auth.registration, RegistrationMode::Open);
            assert_eq!(config.auth.jwks_refetch_secs, 10);
            Ok(())
        });
    }

    #[test]
    fn the_r4b_check_is_on_unless_switched_off() {
        figment::Jail::expect_with(|jail| {
            assert!(
                Config::load(None)
                    .map_err(|e| e.to_string())?
                    .validation
                    .r4b_check
            );
            jail.set_env("FHIR_GATEWAY_VALIDATION__R4B_CHECK", "false");
            assert!(
                !Config::load(None)
                    .map_err(|e| e.to_string())?
                    .validation
                    .r4b_check
            );
            Ok(())
        });
    }

    #[test]
    fn tokens_are_required_unless_switched_off_and_previous_keys_are_a_list() {
        figment::Jail::expect_with(|jail| {
            let config = Config::load(None).map_err(|e| e.to_string())?;
            assert!(config.auth.required);
            assert!(config.auth.previous_signing_key_files.is_empty());
            jail.set_env("FHIR_GATEWAY_AUTH__REQUIRED", "false");
            jail.set_env(
                "FHIR_GATEWAY_AUTH__PREVIOUS_SIGNING_KEY_FILES",
                "[/keys/a.pem, /keys/b.pem]",
            );
            let config = Config::load(None).map_err(|e| e.to_string())?;
            assert!(!config.auth.required);
            assert_eq!(
                config.auth.previous_signing_key_files,
                [Path::new("/keys/a.pem"), Path::new("/keys/b.pem")]
            );
            Ok(())
        });
    }

    #[test]
    fn bad_settings_are_refused() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("FHIR_GATEWAY_SEARCH__DEFAULT_COUNT", "0");
            assert!(Config::load(None).is_err());
            jail.set_env("FHIR_GATEWAY_SEARCH__DEFAULT_COUNT", "10");
            for writers in ["0", "17"] {
                jail.set_env("FHIR_GATEWAY_AUDIT__WRITERS", writers);
                let refused = Config::load(None).expect_err("audit.writers out of range");
                assert!(refused.to_string().contains("audit.writers"), "{refused}");
            }
            jail.set_env("FHIR_GATEWAY_AUDIT__WRITERS", "16");
            assert_eq!(
                Config::load(None).map_err(|e| e.to_string())?.audit.writers,
                16
            );
            jail.set_env(
                "FHIR_GATEWAY_AUTH__REGISTRATION_SCOPES",
                "patient/*.rs system/*.rs",
            );
            assert!(
                Config::load(None).is_err(),
                "system/ scopes are never for open registration"
            );
            jail.set_env(
                "FHIR_GATEWAY_AUTH__REGISTRATION_SCOPES",
                "patient/*.rs openid",
            );
            let config = Config::load(None).map_err(|e| e.to_string())?;
            assert_eq!(config.auth.registration, RegistrationMode::Open);
            jail.set_env("FHIR_GATEWAY_SERVER__NOPE", "1");
            assert!(
                Config::load(None).is_err(),
                "unknown settings are errors, not silently ignored"
            );
            Ok(())
        });
    }

    #[test]
    fn the_unknown_profile_policy_is_one_of_three() {
        figment::Jail::expect_with(|jail| {
            let config = Config::load(None).map_err(|e| e.to_string())?;
            assert_eq!(
                config.validation.unknown_profile,
                UnknownProfile::Warn,
                "unknown profiles are warned about by default"
            );
            jail.create_file("gw.toml", "[validation]\nunknown_profile = \"reject\"\n")?;
            let config = Config::load(Some(Path::new("gw.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(config.validation.unknown_profile, UnknownProfile::Reject);
            jail.set_env("FHIR_GATEWAY_VALIDATION__UNKNOWN_PROFILE", "ignore");
            let config = Config::load(Some(Path::new("gw.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(config.validation.unknown_profile, UnknownProfile::Ignore);
            jail.set_env("FHIR_GATEWAY_VALIDATION__UNKNOWN_PROFILE", "strict");
            assert!(
                Config::load(None).is_err(),
                "only ignore, warn and reject are accepted"
            );
            Ok(())
        });
    }
}
