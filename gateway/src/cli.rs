//! The `fhir-gateway` command line.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::Config;
use crate::startup::Application;
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
}

/// Parses the command line and runs the command.
pub async fn run() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Serve { config } => {
            let config = Config::load(config.as_deref())?;
            telemetry::init(&config.log);
            let app = Application::build(config).await?;
            app.run_until_stopped().await
        }
        Command::Config { config } => {
            let mut config = Config::load(config.as_deref())?;
            for secret in [
                &mut config.database.url,
                &mut config.chain.rpc_url,
                &mut config.chain.signer_key,
            ] {
                if secret.is_some() {
                    *secret = Some("********".into());
                }
            }
            println!("{}", serde_json::to_string_pretty(&config)?);
            Ok(())
        }
    }
}
