//! `fhir-anchor`: the auditor's command. Checks a resource version against its `$proof` and
//! the chain (`verify`), replays a whole log from the chain (`audit-log`), or checks the
//! consent basis an AuditEvent records against the consent registry (`consent-basis`). It reads files
//! and an Ethereum JSON-RPC endpoint, never the gateway (README, "The auditor's CLI,
//! `fhir-anchor`"; the checks are in [`anchor::audit`]).
//!
//! Exit status: 0 when verified or OK, 1 when FAILED (including an unreadable file or an
//! unreachable endpoint), 2 for a usage error. The RPC URL is never printed, only its scheme,
//! host and port: its path may hold an API key.

use std::path::PathBuf;
use std::process::ExitCode;

use alloy::primitives::Address;
use anchor::audit::{self, DEFAULT_BLOCKS_PER_QUERY, LogAuditRequest};
use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "fhir-anchor",
    version,
    about = "Checks the anchored log of a FHIR gateway against the chain"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The Ethereum JSON-RPC endpoint every command reads the chain through.
#[derive(Debug, Args)]
struct Endpoint {
    /// The Ethereum JSON-RPC endpoint (http://).
    #[arg(
        long,
        value_name = "URL",
        env = "FHIR_ANCHOR_RPC",
        hide_env_values = true
    )]
    rpc: String,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Verifies one resource version against its `$proof` Parameters and the chain.
    Verify {
        /// The resource version as JSON, in any formatting (omit for a deletion: the proof's
        /// `deletion` record is the content).
        #[arg(long, value_name = "R.json")]
        resource: Option<PathBuf>,
        /// The `$proof` Parameters, as the gateway returned them.
        #[arg(long, value_name = "P.json")]
        proof: PathBuf,
        #[command(flatten)]
        endpoint: Endpoint,
        /// How deep the anchoring block must be (1 = the block itself).
        #[arg(long, value_name = "N", default_value_t = 3)]
        confirmations: u64,
    },
    /// Replays every `BatchAnchored` event of one log and checks it is one append-only log.
    AuditLog {
        #[command(flatten)]
        endpoint: Endpoint,
        /// The `AnchorRegistry`'s address.
        #[arg(long, value_name = "ADDR")]
        registry: Address,
        /// The log: the address of the account that anchors it.
        #[arg(long, value_name = "ANCHORER")]
        log: Address,
        /// The first block to read (the registry's deployment block, or earlier).
        #[arg(long, value_name = "N", default_value_t = 0)]
        from_block: u64,
        /// The last block to read (default: the head).
        #[arg(long, value_name = "M")]
        to_block: Option<u64>,
        /// Blocks per `eth_getLogs` query (public endpoints cap the range).
        #[arg(long, value_name = "BLOCKS", default_value_t = DEFAULT_BLOCKS_PER_QUERY)]
        blocks_per_query: u64,
    },
    /// Checks the consent basis an AuditEvent records (the grants that covered the access)
    /// against the `ConsentRegistry` as of the decision's block.
    ConsentBasis {
        /// The AuditEvent, as JSON.
        #[arg(long, value_name = "E.json")]
        audit_event: PathBuf,
        #[command(flatten)]
        endpoint: Endpoint,
        /// The `ConsentRegistry`'s address.
        #[arg(long, value_name = "ADDR")]
        registry: Address,
    },
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Verify {
            resource,
            proof,
            endpoint: Endpoint { rpc },
            confirmations,
        } => verify(resource, proof, &rpc, confirmations).await,
        Command::AuditLog {
            endpoint: Endpoint { rpc },
            registry,
            log,
            from_block,
            to_block,
            blocks_per_query,
        } => {
            let request = LogAuditRequest {
                registry,
                anchorer: log,
                from_block,
                to_block,
                blocks_per_query,
            };
            match audit::audit_log(&rpc, request).await {
                Ok(audit) => {
                    println!("{audit}");
                    if audit.is_ok() {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::FAILURE
                    }
                }
                Err(error) => {
                    println!("FAILED: cannot read the chain: {error}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::ConsentBasis {
            audit_event,
            endpoint: Endpoint { rpc },
            registry,
        } => {
            let basis = match audit::read_audit_event(&audit_event) {
                Ok(basis) => basis,
                Err(failure) => {
                    println!("FAILED: {failure}");
                    return ExitCode::FAILURE;
                }
            };
            match audit::check_consent_basis(&rpc, registry, &basis).await {
                Ok(audit) => {
                    println!("{audit}");
                    if audit.is_ok() {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::FAILURE
                    }
                }
                Err(error) => {
                    println!("FAILED: cannot read the chain: {error}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

async fn verify(
    resource: Option<PathBuf>,
    proof: PathBuf,
    rpc: &str,
    confirmations: u64,
) -> ExitCode {
    let outcome = async {
        let resource = resource
            .map(|path| audit::read_resource(&path))
            .transpose()?;
        let proof = audit::read_proof(&proof)?;
        audit::verify_proof(resource.as_ref(), &proof, rpc, confirmations).await
    };
    match outcome.await {
        Ok(verified) => {
            println!("VERIFIED {verified}");
            ExitCode::SUCCESS
        }
        Err(failure) => {
            println!("FAILED: {failure}");
            ExitCode::FAILURE
        }
    }
}
