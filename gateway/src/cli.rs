//! The `fhir-gateway` command line.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use crate::auth::clients::{self, AuthMethod, ClientKind, NewClient};
use crate::auth::{authorize, binding, users};
use crate::config::Config;
use crate::erasure::{self, Erasure};
use crate::model::{ResourceId, ResourceType};
use crate::startup::Application;
use crate::store::Store;
use crate::telemetry;

/// FHIR R4 interoperability gateway.
#[derive(Debug, Parser)]
#[command(name = "fhir-gateway", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the FHIR API (and health endpoints) until SIGINT or SIGTERM.
    Serve {
        /// A TOML configuration file (settings in FHIR_GATEWAY_* environment variables win).
        #[arg(long, short, env = "FHIR_GATEWAY_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Print the effective configuration (defaults, file, environment) as TOML-like JSON, secrets hidden.
    Config {
        #[arg(long, short, env = "FHIR_GATEWAY_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Erase a resource for good (crypto-shredding): delete it if it is not deleted, then
    /// remove the content of all its versions and the salts of their log leaves. Other
    /// records' proofs still verify. Cannot be undone.
    Erase {
        /// The resource, as `Type/id` (e.g. `Patient/123`).
        resource: String,
        /// Why it is erased, kept in the database with the erasure (a reference to the
        /// request, such as a ticket number; no patient data). Never logged.
        #[arg(long)]
        reason: String,
        #[arg(long, short, env = "FHIR_GATEWAY_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Import FHIR NDJSON files (one resource per line): each resource checked like a REST
    /// write and stored with its id (create or update), its version and log leaf committed
    /// together, in batches. Resumable: run it again after an interruption and it continues
    /// after the last committed batch. Rejected lines go to the error file with their
    /// OperationOutcome; the exit status is 2 when any line was rejected. Prints a JSON summary.
    Import {
        /// The NDJSON files, in order (references across them resolve).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Where rejected lines are written (NDJSON: file, line, outcome).
        #[arg(long, default_value = "import-errors.ndjson")]
        errors: PathBuf,
        /// Lines per database transaction.
        #[arg(long, default_value_t = 2000)]
        batch_size: usize,
        /// Accept references to resources that are neither in the import nor stored (by
        /// default such a line is rejected).
        #[arg(long)]
        allow_dangling: bool,
        /// No progress bar (it is drawn on standard error only when that is a terminal).
        #[arg(long)]
        no_progress: bool,
        #[arg(long, short, env = "FHIR_GATEWAY_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Register, list and remove SMART on FHIR clients (prints JSON).
    Client {
        #[command(subcommand)]
        command: ClientCommand,
    },
    /// The keys that sign the gateway's access tokens.
    AuthKey {
        #[command(subcommand)]
        command: AuthKeyCommand,
    },
    /// Access tokens for the operator's own scripts.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Add, list and disable the users who sign in to approve apps (prints JSON).
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Bind Patient records to patients' wallets: issue link codes, show and remove
    /// bindings (prints JSON).
    Patient {
        #[command(subcommand)]
        command: PatientCommand,
    },
    /// Issue an EHR launch value (prints it): opaque, single use, valid for 5 minutes; the
    /// app sends it as `launch` to the authorization endpoint and gets this context back with
    /// its token.
    Launch {
        /// The launch patient's id.
        #[arg(long)]
        patient: String,
        /// The launch encounter's id.
        #[arg(long)]
        encounter: Option<String>,
        /// Only this client may use the launch value.
        #[arg(long)]
        client: Option<String>,
        #[arg(long, short, env = "FHIR_GATEWAY_CONFIG")]
        config: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum PatientCommand {
    /// Issue a one-time link code for a Patient (prints it, its expiry and the URL of the page
    /// where the patient redeems it by signing in with their wallet). The Patient's earlier
    /// unused codes stop working.
    LinkCode {
        /// The Patient's id.
        id: String,
        #[arg(long, short, env = "FHIR_GATEWAY_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Show a Patient's wallet binding and its history.
    Show {
        /// The Patient's id.
        id: String,
        #[arg(long, short, env = "FHIR_GATEWAY_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Unbind a Patient's wallet: the patient user goes (its sessions end, its tokens are
    /// revoked) and the wallet is free again; a new link code binds the Patient again.
    Unbind {
        /// The Patient's id.
        id: String,
        #[arg(long, short, env = "FHIR_GATEWAY_CONFIG")]
        config: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum AuthKeyCommand {
    /// Make a new P-256 signing key (PKCS#8 PEM, mode 0600) for `auth.signing_key_file`;
    /// prints its kid. An existing file is never overwritten.
    Generate {
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Mint an access token with the configured signing key and print it (sub and
    /// client_id `operator`). Set `server.base_url`: the token's aud must be the FHIR base URL.
    Issue {
        /// The scopes, such as `system/*.rs` or `patient/Observation.rs`; repeat it, or give
        /// several separated by spaces.
        #[arg(long = "scope", required = true)]
        scopes: Vec<String>,
        /// The launch patient's id (needed by patient/ scopes).
        #[arg(long)]
        patient: Option<String>,
        /// How long the token lives.
        #[arg(long, default_value_t = 300)]
        lifetime_secs: i64,
        #[arg(long, short, env = "FHIR_GATEWAY_CONFIG")]
        config: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum UserCommand {
    /// Add a user; prints it with its id. Practitioners and staff get a password, read from
    /// --password-file or FHIR_GATEWAY_USER_PASSWORD (never the command line); patients
    /// sign in with their Ethereum wallet.
    Add {
        #[arg(long, value_enum)]
        kind: UserKind,
        /// Practitioners and staff: the name they sign in with.
        #[arg(long, required_unless_present = "wallet")]
        username: Option<String>,
        /// Practitioners and staff: a file whose first line is the password.
        #[arg(long)]
        password_file: Option<PathBuf>,
        /// Patients: their Ethereum address (0x and 40 hex digits).
        #[arg(long, conflicts_with_all = ["username", "password_file"])]
        wallet: Option<String>,
        /// The user's FHIR resource: `Patient/123` for a patient, `Practitioner/7` ...
        #[arg(long)]
        fhir_user: String,
        #[arg(long, short, env = "FHIR_GATEWAY_CONFIG")]
        config: Option<PathBuf>,
    },
    /// List the users (never their passwords).
    List {
        #[arg(long, short, env = "FHIR_GATEWAY_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Give (or with --revoke take) a practitioner's or staff user's permission to break the
    /// glass: to read patient data without consent in an emergency, by naming the purpose of
    /// use ETREAT (always recorded and flagged). Tokens issued afterwards carry it.
    BreakGlass {
        /// The user, by id or username.
        user: String,
        #[arg(long)]
        revoke: bool,
        #[arg(long, short, env = "FHIR_GATEWAY_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Give (or with --revoke take) a staff user the auditor role: to read every AuditEvent,
    /// whoever's record it is about, without a consent grant (with a token holding
    /// user/AuditEvent.rs). Tokens issued afterwards carry it.
    Auditor {
        /// The user, by id or username.
        user: String,
        #[arg(long)]
        revoke: bool,
        #[arg(long, short, env = "FHIR_GATEWAY_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Disable a user (by id or username): they can no longer sign in or refresh tokens.
    Disable {
        user: String,
        #[arg(long, short, env = "FHIR_GATEWAY_CONFIG")]
        config: Option<PathBuf>,
    },
}

/// See `user add --kind`.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum UserKind {
    Patient,
    Practitioner,
    Staff,
}

#[derive(Debug, Subcommand)]
enum ClientCommand {
    /// Register a client; prints it, with the client_id it was given (and, for a
    /// confidential-symmetric client, its client_secret: shown this once, stored hashed).
    Add {
        /// A name for people (shown in listings and on the approval page).
        #[arg(long)]
        name: String,
        /// `backend`: a system acting on its own (client_credentials, system/ scopes, a signed
        /// JWT); `confidential-asymmetric`: an app signing JWTs with its key;
        /// `confidential-symmetric`: an app with a client secret; `public`: an app without a
        /// secret (PKCE).
        #[arg(long, value_enum)]
        kind: ClientKind,
        /// Apps: where the authorization endpoint may send the user back (exact match; https,
        /// or http on localhost). Repeat for several.
        #[arg(long = "redirect-uri")]
        redirect_uris: Vec<String>,
        /// Apps: where an EHR launch starts the app.
        #[arg(long)]
        launch_uri: Option<String>,
        /// A scope the client may be granted (`system/*.rs` for backend clients;
        /// `patient/*.rs`, `user/Observation.cruds`, `openid`, `fhirUser`, `launch`,
        /// `launch/patient`, `offline_access`... for apps); repeat it, or give several
        /// separated by spaces.
        #[arg(long = "scope", required = true)]
        scopes: Vec<String>,
        /// `backend`, `confidential-asymmetric`: a file holding the client's public JSON Web
        /// Key Set (RS384 or ES384 keys, each with a kid; public keys only).
        #[arg(long, conflicts_with = "jwks_url")]
        jwks_file: Option<PathBuf>,
        /// `backend`, `confidential-asymmetric`: where the client publishes its JWKS (https).
        #[arg(long)]
        jwks_url: Option<String>,
        /// `confidential-symmetric`: how it sends its secret (default client_secret_basic).
        #[arg(long, value_enum)]
        auth_method: Option<AuthMethod>,
        /// `backend`: its tokens may use the client admin API (`[base]/auth/clients`).
        #[arg(long)]
        admin: bool,
        #[arg(long, short, env = "FHIR_GATEWAY_CONFIG")]
        config: Option<PathBuf>,
    },
    /// List the registered clients.
    List {
        #[arg(long, short, env = "FHIR_GATEWAY_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Remove a client: it gets no more tokens (tokens already issued live until they expire).
    Remove {
        /// The client's client_id.
        client_id: String,
        #[arg(long, short, env = "FHIR_GATEWAY_CONFIG")]
        config: Option<PathBuf>,
    },
}

/// Parses the command line and runs the command.
pub async fn run() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Serve { config } => {
            let config = Config::load(config.as_deref())?;
            let _telemetry = telemetry::init(&config)?;
            let app = Application::build(config).await?;
            app.run_until_stopped().await
        }
        Command::Config { config } => {
            let mut config = Config::load(config.as_deref())?;
            for secret in [
                &mut config.database.url,
                &mut config.chain.rpc_url,
                &mut config.chain.signer_key,
                &mut config.consent.relayer_key,
                &mut config.telemetry.prometheus_token,
            ] {
                if secret.is_some() {
                    *secret = Some("********".into());
                }
            }
            println!("{}", serde_json::to_string_pretty(&config)?);
            Ok(())
        }
        Command::Client { command } => client(command).await,
        Command::Import {
            files,
            errors,
            batch_size,
            allow_dangling,
            no_progress,
            config,
        } => {
            let config = Config::load(config.as_deref())?;
            let _telemetry = telemetry::init_stderr(&config)?;
            let store = Store::connect(&config.database).await?;
            let ctx = crate::interaction::Context {
                base_url: base_url(&config),
                config,
            };
            let options = crate::import::Options {
                files,
                errors,
                batch_size,
                allow_dangling,
                progress: !no_progress,
            };
            let summary = crate::import::run(&store, &ctx, &options).await;
            store.close().await;
            let summary = summary?;
            println!("{}", serde_json::to_string(&summary)?);
            if summary.rejected_in_files > 0 {
                // rejections are not a failure of the command, but a script must see them
                std::process::exit(2);
            }
            Ok(())
        }
        Command::AuthKey {
            command: AuthKeyCommand::Generate { out },
        } => {
            let kid = crate::auth::keys::generate_key_file(&out)?;
            println!("{kid}");
            Ok(())
        }
        Command::Token {
            command:
                TokenCommand::Issue {
                    scopes,
                    patient,
                    lifetime_secs,
                    config,
                },
        } => {
            let config = Config::load(config.as_deref())?;
            let base_url = base_url(&config);
            let token = crate::auth::operator_token(
                &config.auth,
                &config.database.data_dir,
                &base_url,
                &scopes.join(" "),
                patient,
                lifetime_secs,
            )?;
            println!("{token}");
            Ok(())
        }
        Command::User { command } => user(command).await,
        Command::Patient { command } => patient(command).await,
        Command::Launch {
            patient,
            encounter,
            client,
            config,
        } => {
            let config = Config::load(config.as_deref())?;
            let _telemetry = telemetry::init_stderr(&config)?;
            let store = Store::connect(&config.database).await?;
            let result = launch(&store, &patient, encounter.as_deref(), client.as_deref()).await;
            store.close().await;
            println!("{}", result?);
            Ok(())
        }
        Command::Erase {
            resource,
            reason,
            config,
        } => {
            let config = Config::load(config.as_deref())?;
            let _telemetry = telemetry::init_stderr(&config)?;
            let (resource_type, id) = parse_reference(&resource)?;
            anyhow::ensure!(!reason.trim().is_empty(), "--reason must not be empty");
            let store = Store::connect(&config.database).await?;
            let ctx = crate::interaction::Context {
                base_url: base_url(&config),
                config,
            };
            let audit = ctx.config.audit.enabled.then_some(&ctx);
            let erased = erasure::erase(&store, audit, &resource_type, &id, &reason).await;
            let emptied = match erased {
                Ok(Erasure::Erased { .. }) => Some(store.truncate_write_ahead_log().await),
                _ => None,
            };
            store.close().await;
            match erased? {
                Erasure::Erased { versions, deletion } => {
                    let deletion = deletion.map_or(String::new(), |version| {
                        format!("; its deletion is version {version}")
                    });
                    println!("erased {resource_type}/{id}: {versions} version(s){deletion}");
                    if !matches!(emptied, Some(Ok(true))) {
                        eprintln!(
                            "fhir-gateway: the SQLite write-ahead log could not be emptied now; \
                             it holds erased content until the next checkpoint"
                        );
                    }
                }
                Erasure::AlreadyErased => {
                    println!("{resource_type}/{id} is already erased; nothing changed");
                }
            }
            Ok(())
        }
    }
}

/// `fhir-gateway client ...`.
async fn client(command: ClientCommand) -> anyhow::Result<()> {
    let config = match &command {
        ClientCommand::Add { config, .. }
        | ClientCommand::List { config }
        | ClientCommand::Remove { config, .. } => Config::load(config.as_deref())?,
    };
    let _telemetry = telemetry::init_stderr(&config)?;
    let store = Store::connect(&config.database).await?;
    let result = async {
        match command {
            ClientCommand::Add {
                name,
                kind,
                redirect_uris,
                launch_uri,
                scopes,
                jwks_file,
                jwks_url,
                auth_method,
                admin,
                config: _,
            } => {
                let jwks = jwks_file
                    .map(|file| {
                        std::fs::read_to_string(&file)
                            .map_err(|e| anyhow::anyhow!("reading {}: {e}", file.display()))
                    })
                    .transpose()?;
                let registered = clients::register(
                    &store,
                    NewClient {
                        name,
                        kind,
                        scopes: scopes.join(" "),
                        redirect_uris,
                        launch_uri,
                        jwks,
                        jwks_url,
                        auth_method,
                        admin,
                    },
                )
                .await?;
                println!("{}", serde_json::to_string_pretty(&registered)?);
            }
            ClientCommand::List { config: _ } => {
                let clients = clients::list(&store).await?;
                println!("{}", serde_json::to_string_pretty(&clients)?);
            }
            ClientCommand::Remove {
                client_id,
                config: _,
            } => {
                anyhow::ensure!(
                    clients::remove(&store, &client_id).await?,
                    "no client {client_id:?} is registered"
                );
                println!("{}", serde_json::json!({"removed": client_id}));
            }
        }
        Ok(())
    }
    .await;
    store.close().await;
    result
}

/// `fhir-gateway launch ...`: checks the context exists, then issues a launch value.
async fn launch(
    store: &Store,
    patient: &str,
    encounter: Option<&str>,
    client: Option<&str>,
) -> anyhow::Result<String> {
    let mut conn = store.reader().await?;
    for (resource_type, id) in
        std::iter::once(("Patient", patient)).chain(encounter.map(|e| ("Encounter", e)))
    {
        let found = crate::store::read_current(&mut conn, resource_type, id).await?;
        anyhow::ensure!(
            found.is_some_and(|v| v.body.is_some()),
            "there is no {resource_type}/{id}"
        );
    }
    if let Some(client) = client {
        anyhow::ensure!(
            crate::store::clients::find(&mut conn, client)
                .await?
                .is_some(),
            "no client {client:?} is registered"
        );
    }
    drop(conn);
    authorize::issue_launch(store, patient, encounter, client).await
}

/// `fhir-gateway user ...`.
async fn user(command: UserCommand) -> anyhow::Result<()> {
    let config = match &command {
        UserCommand::Add { config, .. }
        | UserCommand::List { config }
        | UserCommand::Disable { config, .. }
        | UserCommand::BreakGlass { config, .. }
        | UserCommand::Auditor { config, .. } => Config::load(config.as_deref())?,
    };
    let _telemetry = telemetry::init_stderr(&config)?;
    let store = Store::connect(&config.database).await?;
    let result = async {
        match command {
            UserCommand::Add {
                kind,
                username,
                password_file,
                wallet,
                fhir_user,
                config: _,
            } => {
                let kind = match kind {
                    UserKind::Patient => users::Kind::Patient,
                    UserKind::Practitioner => users::Kind::Practitioner,
                    UserKind::Staff => users::Kind::Staff,
                };
                let credential = match (wallet, username) {
                    (Some(wallet), _) => users::Credential::Wallet(wallet),
                    (None, _) if kind == users::Kind::Patient => {
                        anyhow::bail!("patients sign in with an Ethereum wallet: give --wallet")
                    }
                    (None, Some(username)) => users::Credential::Password {
                        username,
                        password: read_password(password_file.as_deref())?,
                    },
                    (None, None) => anyhow::bail!("give --username (or --wallet for a patient)"),
                };
                let user = users::add(&store, kind, credential, &fhir_user).await?;
                println!("{}", serde_json::to_string_pretty(&user)?);
            }
            UserCommand::List { config: _ } => {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&users::list(&store).await?)?
                );
            }
            UserCommand::BreakGlass {
                user,
                revoke,
                config: _,
            } => {
                anyhow::ensure!(
                    users::set_break_glass(&store, &user, !revoke).await?,
                    "no practitioner or staff user {user:?}"
                );
                println!(
                    "{}",
                    serde_json::json!({"user": user, "breakGlass": !revoke})
                );
            }
            UserCommand::Auditor {
                user,
                revoke,
                config: _,
            } => {
                anyhow::ensure!(
                    users::set_auditor(&store, &user, !revoke).await?,
                    "no staff user {user:?}"
                );
                println!("{}", serde_json::json!({"user": user, "auditor": !revoke}));
            }
            UserCommand::Disable { user, config: _ } => {
                anyhow::ensure!(
                    users::disable(&store, &user).await?,
                    "no enabled user {user:?}"
                );
                println!("{}", serde_json::json!({"disabled": user}));
            }
        }
        Ok(())
    }
    .await;
    store.close().await;
    result
}

/// `fhir-gateway patient ...`.
async fn patient(command: PatientCommand) -> anyhow::Result<()> {
    let config = match &command {
        PatientCommand::LinkCode { config, .. }
        | PatientCommand::Show { config, .. }
        | PatientCommand::Unbind { config, .. } => Config::load(config.as_deref())?,
    };
    let _telemetry = telemetry::init_stderr(&config)?;
    let store = Store::connect(&config.database).await?;
    let result = async {
        let output = match command {
            PatientCommand::LinkCode { id, config: _ } => serde_json::to_value(
                binding::issue_code(
                    &store,
                    &id,
                    binding::CLI,
                    config.auth.link_code_lifetime_secs,
                    &base_url(&config),
                )
                .await?
                .map_err(|refused| anyhow::anyhow!("Patient/{id}: {refused}"))?,
            )?,
            PatientCommand::Show { id, config: _ } => serde_json::to_value(
                binding::status(&store, &id)
                    .await?
                    .map_err(|refused| anyhow::anyhow!("Patient/{id}: {refused}"))?,
            )?,
            PatientCommand::Unbind { id, config: _ } => serde_json::json!({
                "unbound": binding::unbind(&store, &id, binding::CLI)
                    .await?
                    .map_err(|refused| anyhow::anyhow!("Patient/{id}: {refused}"))?,
            }),
        };
        println!("{}", serde_json::to_string_pretty(&output)?);
        Ok(())
    }
    .await;
    store.close().await;
    result
}

/// The FHIR base URL: `server.base_url`, or what `serve` would use without TLS.
fn base_url(config: &Config) -> String {
    config
        .server
        .base_url
        .clone()
        .unwrap_or_else(|| format!("http://{}:{}/fhir", config.server.host, config.server.port))
        .trim_end_matches('/')
        .to_owned()
}

/// The password from `--password-file` (its first line) or `FHIR_GATEWAY_USER_PASSWORD`.
fn read_password(file: Option<&std::path::Path>) -> anyhow::Result<secrecy::SecretString> {
    let password = match file {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned(),
        None => std::env::var("FHIR_GATEWAY_USER_PASSWORD").map_err(|_| {
            anyhow::anyhow!("give --password-file or set FHIR_GATEWAY_USER_PASSWORD")
        })?,
    };
    Ok(password.into())
}

/// `Type/id`, parsed.
fn parse_reference(text: &str) -> anyhow::Result<(ResourceType, ResourceId)> {
    let (resource_type, id) = text
        .split_once('/')
        .ok_or_else(|| anyhow::anyhow!("{text:?} is not a resource reference (Type/id)"))?;
    Ok((ResourceType::parse(resource_type)?, ResourceId::parse(id)?))
}
