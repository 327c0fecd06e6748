//! Composition: builds the application from its configuration (store, routes, middleware)
//! and runs it until it is stopped.

use std::net::TcpListener;

use actix_web::dev::{Server, Service};
use actix_web::middleware::Compress;
use actix_web::{App, HttpMessage as _, HttpResponse, HttpServer, web};
use anyhow::Context as _;
use serde_json::json;
use tracing::Instrument as _;

use crate::anchoring::anvil::Anvil;
use crate::anchoring::{Anchoring, SharedStatus, Status, Target};
use crate::config::{ChainMode, Config, LedgerConfig};
use crate::interaction::Context;
use crate::rest::{self, AppState};
use crate::sequencer::Sequencer;
use crate::store::Store;

/// A built, bound, not yet running gateway.
#[allow(missing_debug_implementations)]
pub struct Application {
    port: u16,
    base_url: String,
    server: Server,
    store: Store,
    ledger: LedgerConfig,
    anvil: Option<Anvil>,
    target: Option<Target>,
    anchoring: SharedStatus,
    /// What the consent follower reads, from which block, for which enforcement.
    consent_follower: Option<(
        anchor::consent::ConsentReader,
        u64,
        std::sync::Arc<crate::consent::Consent>,
    )>,
    /// The HL7 v2 MLLP listener (`[mllp] enabled`), bound, with the intake and the actor it
    /// writes as.
    mllp: Option<(
        crate::hl7v2::mllp::MllpListener,
        crate::hl7v2::Intake,
        crate::access::Access,
    )>,
    shutdown_timeout_secs: u64,
    /// What the Bulk Data export worker needs (it runs while the server does).
    exporter: (Context, std::sync::Arc<crate::consent::Consent>),
}

impl Application {
    /// Connects the store (running migrations), binds the listener and prepares the server.
    pub async fn build(config: Config) -> anyhow::Result<Application> {
        let store = Store::connect(&config.database).await?;
        crate::interaction::proof::backfill(&store)
            .await
            .map_err(|e| anyhow::anyhow!("giving log leaves to earlier versions: {e}"))?;
        let data_dir = &config.database.data_dir;
        let anvil = match config.chain.mode {
            ChainMode::Embedded => Some(Anvil::start(&config.chain, data_dir).await?),
            ChainMode::Rpc | ChainMode::Off => None,
        };
        let target = Target::new(&config.chain, data_dir, anvil.as_ref())?;
        if let Some(target) = &target {
            target.check_recorded(&store).await?;
            target.fund_embedded().await?;
        }
        let anchoring = SharedStatus::new(std::sync::Mutex::new(Status {
            mode: Some(match config.chain.mode {
                ChainMode::Embedded => "embedded",
                ChainMode::Rpc => "rpc",
                ChainMode::Off => "off",
            }),
            ..Status::default()
        }));
        let listener = TcpListener::bind((config.server.host.as_str(), config.server.port))
            .with_context(|| format!("binding {}:{}", config.server.host, config.server.port))?;
        let port = listener.local_addr()?.port();
        let tls = tls_config(&config.server)?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let base_url = config
            .server
            .base_url
            .clone()
            .unwrap_or_else(|| format!("{scheme}://{}:{port}/fhir", config.server.host))
            .trim_end_matches('/')
            .to_owned();
        let base_path = url_path(&base_url);
        let auth = web::Data::new(crate::auth::Auth::new(
            &config.auth,
            data_dir,
            &base_url,
            store.clone(),
        )?);
        if !config.auth.required {
            tracing::warn!(
                "auth.required = false: the FHIR API serves every request WITHOUT an access token, with full access to every record; never run so with real patient data"
            );
        }
        if config.consent.enforce && config.chain.mode == ChainMode::Off && config.auth.required {
            tracing::warn!(
                "consent.enforce is on but chain.mode = \"off\": no consent can be read, so patient data is refused to every token (fail closed); set consent.enforce = false only if consent is decided elsewhere"
            );
        }
        if !config.consent.enforce {
            tracing::warn!(
                "consent.enforce = false: patient data is served to any token whose scopes allow it, without on-chain consent"
            );
        }
        let consent_chain =
            crate::consent::ConsentChain::connect(&config, anvil.as_ref().map(Anvil::url), &store)
                .await
                .context("the consent registry")?;
        let (consent_reader, relayer, consent_start) = match consent_chain {
            Some(chain) => (Some(chain.reader), chain.relayer, chain.start_block),
            None => (None, None, 0),
        };
        let consent = web::Data::new(crate::consent::Consent::new(
            config.consent.clone(),
            store.clone(),
            relayer,
        ));
        let consent_follower =
            consent_reader.map(|reader| (reader, consent_start, consent.clone().into_inner()));
        let ctx = Context {
            base_url: base_url.clone(),
            config: config.clone(),
        };
        // one intake for MLLP and `$hl7v2`, so both keep one order per patient
        let audit_log = config.audit.enabled.then(|| {
            crate::audit::AuditLog::spawn(store.clone(), ctx.clone(), config.audit.writers)
        });
        if audit_log.is_none() {
            tracing::warn!(
                "audit.enabled = false: interactions are served without an AuditEvent on record"
            );
        }
        let intake =
            crate::hl7v2::Intake::new(store.clone(), ctx.clone()).with_audit(audit_log.clone());
        let mllp = if config.mllp.enabled {
            Some((
                crate::hl7v2::mllp::MllpListener::bind(&config.mllp).await?,
                intake.clone(),
                crate::hl7v2::Intake::mllp_access(&config.mllp)?,
            ))
        } else {
            None
        };
        let intake = web::Data::new(intake);
        let exporter = (ctx.clone(), consent.clone().into_inner());
        let state = web::Data::new(AppState {
            store: store.clone(),
            ctx,
            anchoring: anchoring.clone(),
        });
        // parse the definitions now rather than in the first request
        fhir_profiles::Definitions::r4();
        fhir_profiles::search::Registry::r4();
        let workers = config.server.workers;
        let break_glass_store = store.clone();
        let prometheus = config.telemetry.prometheus;
        let metrics_token = config.telemetry.prometheus_token.clone();
        if prometheus && metrics_token.is_none() {
            tracing::warn!(
                "telemetry.prometheus is on without telemetry.prometheus_token: anyone who reaches this port can read GET /metrics (no patient data, but request rates and backlogs)"
            );
        }
        let mut server = HttpServer::new(move || {
            let break_glass_store = break_glass_store.clone();
            let base_path = base_path.clone();
            let audit_log = audit_log.clone();
            let audit_base = base_path.clone();
            let telemetry_base_path = base_path.clone();
            let metrics_token = metrics_token.clone();
            App::new()
                .app_data(state.clone())
                .app_data(auth.clone())
                .app_data(consent.clone())
                .app_data(intake.clone())
                .wrap_fn(move |req, srv| {
                    // break-the-glass: recorded before the response goes out, or not served
                    let store = break_glass_store.clone();
                    let response = srv.call(req);
                    async move {
                        let response = response.await?;
                        let marker = response
                            .request()
                            .extensions()
                            .get::<crate::consent::BreakGlass>()
                            .cloned();
                        let Some(marker) = marker else {
                            return Ok(response.map_into_left_body());
                        };
                        let method = response.request().method().to_string();
                        let path = response
                            .request()
                            .uri()
                            .path_and_query()
                            .map(|p| p.as_str().to_owned())
                            .unwrap_or_default();
                        let status = response.status().as_u16();
                        match crate::consent::record_break_glass(&store, &marker, &method, &path, status).await {
                            Ok(()) => {
                                let mut response = response.map_into_left_body();
                                response.headers_mut().insert(
                                    actix_web::http::header::HeaderName::from_static("x-break-the-glass"),
                                    actix_web::http::header::HeaderValue::from_static("recorded"),
                                );
                                Ok(response)
                            }
                            Err(error) => {
                                tracing::error!(error = %format!("{error:#}"), "a break-the-glass access could not be recorded; not served");
                                Ok(unrecorded(response, "a break-the-glass access is served only once it is recorded, and recording it failed; retry"))
                            }
                        }
                    }
                })
                .wrap_fn(move |req, srv| {
                    // every interaction with the FHIR API is recorded (crate::audit) before
                    // its response goes out, or it is not served
                    let audit = audit_log.clone();
                    let route = req.match_pattern().unwrap_or_default();
                    let interaction = route
                        .strip_prefix(audit_base.as_str())
                        .filter(|_| req.path().starts_with(audit_base.as_str()))
                        .and_then(|route| {
                            crate::audit::Interaction::of(req.method().as_str(), route, req.path())
                        });
                    let query = interaction
                        .as_ref()
                        .filter(|i| matches!(i, crate::audit::Interaction::Rest(code) if code.starts_with("search")))
                        .map(|_| req.query_string().to_owned())
                        .filter(|q| !q.is_empty());
                    let address = req.peer_addr().map(|a| a.ip().to_string());
                    let requested = crate::audit::requested(&route, req.path());
                    if let (Some(interaction), Some(_)) = (&interaction, &audit) {
                        // a write stores its record in its own transaction from this
                        req.extensions_mut().insert(crate::audit::Pending {
                            interaction: interaction.clone(),
                            query: query.clone(),
                            address: address.clone(),
                        });
                    }
                    let response = srv.call(req);
                    async move {
                        let response = response.await?;
                        let (Some(interaction), Some(audit)) = (interaction, audit) else {
                            return Ok(response.map_into_left_body());
                        };
                        if response.response().extensions().get::<crate::audit::Recorded>().is_some() {
                            return Ok(response.map_into_left_body());
                        }
                        let record = crate::audit::Record {
                            recorded: crate::model::Instant::now(),
                            interaction,
                            status: response.status().as_u16(),
                            failure: response.response().extensions().get::<crate::audit::Failure>().map(|f| f.0.clone()),
                            // the FHIR API's from the token; the authorization server's from
                            // whom it signed in or issued a token to
                            who: response
                                .request()
                                .extensions()
                                .get::<crate::audit::Who>()
                                .or(response.response().extensions().get::<crate::audit::Who>())
                                .cloned(),
                            touched: response
                                .response()
                                .extensions()
                                .get::<crate::audit::TouchedList>()
                                .map(|t| t.0.clone())
                                .unwrap_or_else(|| requested.into_iter().collect()),
                            query,
                            address,
                        };
                        match audit.record(record).await {
                            Ok(()) => Ok(response.map_into_left_body()),
                            Err(error) => {
                                tracing::error!(error = %format!("{error:#}"), "an interaction's audit record could not be stored; not served");
                                Ok(unrecorded(response, "the interaction is served only once its audit record is stored, and storing it failed; retry"))
                            }
                        }
                    }
                })
                .wrap(Compress::default())
                .wrap(crate::auth::cors::middleware(&base_path))
                .wrap_fn(move |req, srv| {
                    // the request's server span (a child of its `traceparent`), its metrics and
                    // its log line: method, route pattern, status and time only, never the path
                    // or query, which can carry patient data
                    let request = crate::telemetry::HttpRequest::start(&req, &telemetry_base_path);
                    let span = request.span.clone();
                    let response = span.in_scope(|| srv.call(req)).instrument(span);
                    async move {
                        match response.await {
                            Ok(mut response) => {
                                request.finish(&mut response);
                                Ok(response)
                            }
                            Err(error) => {
                                request.fail(error.as_response_error().status_code().as_u16());
                                Err(error)
                            }
                        }
                    }
                })
                .route("/health/live", web::get().to(live))
                .configure(|cfg| {
                    if prometheus {
                        cfg.app_data(web::Data::new(MetricsToken(metrics_token)))
                            .route("/metrics", web::get().to(metrics));
                    }
                })
                .route("/health/ready", web::get().to(ready))
                .configure(|cfg| crate::auth::configure(cfg, &base_path))
                .configure(|cfg| crate::consent::api::configure(cfg, &base_path))
                .configure(|cfg| crate::consent::projection::configure(cfg, &base_path))
                .configure(|cfg| rest::configure(cfg, &base_path))
        })
        .shutdown_timeout(config.server.shutdown_timeout_secs);
        server = match tls {
            Some(tls) => server.listen_rustls_0_23(listener, tls)?,
            None => server.listen(listener)?,
        };
        if workers > 0 {
            server = server.workers(workers);
        }
        Ok(Application {
            port,
            base_url,
            server: server.run(),
            store,
            ledger: config.ledger.clone(),
            anvil,
            target,
            anchoring,
            consent_follower,
            mllp,
            shutdown_timeout_secs: config.server.shutdown_timeout_secs,
            exporter,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The port the MLLP listener is bound to, when it is enabled.
    pub fn mllp_port(&self) -> Option<u16> {
        self.mllp.as_ref().map(|(listener, _, _)| listener.port())
    }

    /// The embedded chain's JSON-RPC URL, when `chain.mode = "embedded"`.
    pub fn embedded_chain_url(&self) -> Option<&str> {
        self.anvil.as_ref().map(Anvil::url)
    }

    /// Serves (and runs the anchored log's sequencer and anchoring worker) until
    /// SIGINT/SIGTERM, letting in-flight requests finish, then stops the workers, the embedded
    /// chain and the store.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        tracing::info!(base_url = %self.base_url, "fhir-gateway listening");
        let sequencer = Sequencer::spawn(self.store.clone(), self.ledger.clone());
        let anchoring = self
            .target
            .map(|target| Anchoring::spawn(self.store.clone(), target, self.anchoring.clone()));
        let (export_ctx, export_consent) = self.exporter;
        let follower = self.consent_follower.map(|(reader, start_block, consent)| {
            let status = consent.status.clone();
            crate::consent::follower::Follower::spawn(
                self.store.clone(),
                reader,
                start_block,
                consent,
                status,
                export_ctx.config.audit.enabled.then(|| export_ctx.clone()),
            )
        });
        let mllp = self
            .mllp
            .map(|(listener, intake, access)| listener.spawn(intake, access));
        let exporter =
            crate::export::Exporter::spawn(self.store.clone(), export_ctx, Some(export_consent));
        let served = self.server.await;
        if let Some(mllp) = mllp {
            mllp.stop(std::time::Duration::from_secs(self.shutdown_timeout_secs))
                .await;
        }
        exporter.stop().await;
        if let Some(follower) = follower {
            follower.stop().await;
        }
        sequencer.stop().await;
        if let Some(anchoring) = anchoring {
            anchoring.stop().await;
        }
        if let Some(anvil) = self.anvil {
            anvil.stop().await;
        }
        served?;
        self.store.close().await;
        tracing::info!("fhir-gateway stopped");
        Ok(())
    }
}

/// The TLS settings of the listener, when `server.tls_cert_file` is set: TLS 1.3 and 1.2 only
/// (rustls has nothing older), on ring.
fn tls_config(
    server: &crate::config::ServerConfig,
) -> anyhow::Result<Option<rustls::ServerConfig>> {
    let (Some(cert_file), Some(key_file)) = (&server.tls_cert_file, &server.tls_key_file) else {
        return Ok(None);
    };
    tls_identity(cert_file, key_file).map(Some)
}

/// A TLS server configuration for a certificate chain and its key (PEM files): TLS 1.3 and
/// 1.2, on ring. The HTTP and MLLP listeners use it.
pub(crate) fn tls_identity(
    cert_file: &std::path::Path,
    key_file: &std::path::Path,
) -> anyhow::Result<rustls::ServerConfig> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_file_iter(cert_file)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| anyhow::anyhow!("reading the certificates in {}: {e}", cert_file.display()))?;
    anyhow::ensure!(
        !chain.is_empty(),
        "{} holds no certificate",
        cert_file.display()
    );
    let key = PrivateKeyDer::from_pem_file(key_file)
        .map_err(|e| anyhow::anyhow!("reading the private key in {}: {e}", key_file.display()))?;
    let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .context("TLS protocol versions")?
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .with_context(|| {
        format!(
            "{} and {} do not make a TLS identity",
            cert_file.display(),
            key_file.display()
        )
    })?;
    Ok(config)
}

fn url_path(base_url: &str) -> String {
    let without_scheme = base_url
        .split_once("://")
        .map_or(base_url, |(_, rest)| rest);
    match without_scheme.find('/') {
        Some(i) => without_scheme[i..].trim_end_matches('/').to_owned(),
        None => String::new(),
    }
}

/// The bearer token `GET /metrics` requires, if any.
struct MetricsToken(Option<secrecy::SecretString>);

/// `GET /metrics`: the metrics in the Prometheus text format (`telemetry.prometheus`), behind
/// `telemetry.prometheus_token` when it is set.
async fn metrics(
    req: actix_web::HttpRequest,
    token: web::Data<MetricsToken>,
) -> crate::error::Result<HttpResponse> {
    use secrecy::ExposeSecret as _;
    if let Some(token) = &token.0 {
        let given = req
            .headers()
            .get(actix_web::http::header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "));
        let expected = token.expose_secret().as_bytes();
        // digests compared, so that the comparison's time tells nothing of the token
        let matches = given.is_some_and(|given| {
            use sha2::Digest as _;
            sha2::Sha256::digest(given.trim().as_bytes()) == sha2::Sha256::digest(expected)
        });
        if !matches {
            return Err(crate::error::Error::Unauthorized {
                realm: "metrics".to_owned(),
                invalid_token: given.is_some(),
                description: "GET /metrics needs the bearer token telemetry.prometheus_token"
                    .to_owned(),
            });
        }
    }
    let text = crate::telemetry::prometheus_text().ok_or_else(|| {
        crate::error::Error::Unavailable(
            "this process does not collect metrics (telemetry was not installed)".to_owned(),
        )
    })?;
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(text))
}

async fn live() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/health+json")
        .body(json!({"status": "pass"}).to_string())
}

async fn ready(
    state: web::Data<AppState>,
    consent: web::Data<crate::consent::Consent>,
) -> HttpResponse {
    let database = state.store.ping().await;
    // the anchored log's backlog is information, not a reason to stop taking writes
    let backlog = match state.store.reader().await {
        Ok(mut conn) => crate::store::log::backlog(&mut conn).await.ok(),
        Err(_) => None,
    };
    let body = json!({
        "status": if database { "pass" } else { "fail" },
        "checks": {
            "database": [{"status": if database { "pass" } else { "fail" }, "backend": format!("{:?}", state.store.backend())}],
            "log:backlog": [{
                "status": if backlog.is_some() { "pass" } else { "warn" },
                "unsealedLeaves": backlog.map(|b| b.unsealed_leaves),
                "sealedBatchesAwaitingSubmission": backlog.map(|b| b.sealed_batches),
                "oldestSealedBatchAgeSecs": backlog
                    .and_then(|b| b.oldest_sealed_at)
                    .map(|at| (crate::model::Instant::now().millis() - at.millis()).max(0) / 1000),
                "submittedBatchesAwaitingConfirmation": backlog.map(|b| b.submitted_batches),
            }],
            "log:anchoring": [anchoring_check(&state.anchoring)],
            "consent:index": [consent.health().await],
        },
    });
    let mut response = if database {
        HttpResponse::Ok()
    } else {
        HttpResponse::ServiceUnavailable()
    };
    response
        .content_type("application/health+json")
        .body(body.to_string())
}

/// The anchoring worker's state: `fail` once halted, `warn` while its rounds fail (the chain
/// unreachable: writes go on, batches wait).
fn anchoring_check(status: &SharedStatus) -> serde_json::Value {
    let status = status.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let verdict = if status.halted.is_some() {
        "fail"
    } else if status.last_error.is_some() {
        "warn"
    } else {
        "pass"
    };
    let mut check = serde_json::to_value(&status).unwrap_or_default();
    check["status"] = json!(verdict);
    check
}

/// The 503 that replaces a response whose record (audit, break-the-glass) could not be
/// stored: what is not on record is not served.
fn unrecorded<B>(
    response: actix_web::dev::ServiceResponse<B>,
    why: &str,
) -> actix_web::dev::ServiceResponse<actix_web::body::EitherBody<B>> {
    let refusal = crate::error::Error::Unavailable(why.to_owned());
    let (req, _) = response.into_parts();
    actix_web::dev::ServiceResponse::new(req, actix_web::ResponseError::error_response(&refusal))
        .map_into_right_body()
}

#[cfg(test)]
mod tests {
    use super::url_path;

    #[test]
    fn the_api_is_mounted_at_the_base_url_path() {
        assert_eq!(url_path("http://localhost:8080/fhir"), "/fhir");
        assert_eq!(url_path("https://example.org/api/fhir/r4/"), "/api/fhir/r4");
        assert_eq!(url_path("http://localhost:8080"), "");
    }
}
