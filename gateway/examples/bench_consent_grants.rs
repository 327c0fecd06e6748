//! Benchmark setup (scripts/bench/consent.sh): binds every Patient in the gateway's database
//! to a fresh wallet and has each wallet grant every resource type, for treatment, to one app,
//! on chain (EIP-712 signed, relayed with a funded key): the consent state a gateway serving
//! that app with enforcement on needs to answer every read.
//!
//!     cargo run --release -p gateway --example bench_consent_grants -- \
//!         <database url> <rpc url> <registry> <client id> <relayer key hex>
//!
//! Never for real data: the patients' keys are thrown away.

use std::time::Duration;

use alloy::primitives::{Bytes, U256};
use alloy::signers::SignerSync as _;
use alloy::signers::local::PrivateKeySigner;
use anchor::chain::{ChainConfig, SignerKey};
use anchor::consent::{ConsentRelayer, GrantRequest, grantee_of_client, signing_hash_grant};
use gateway::config::Config;
use gateway::store::Store;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [database, rpc, registry, client, key] = args.as_slice() else {
        anyhow::bail!(
            "usage: bench_consent_grants <database url> <rpc url> <registry> <client id> <relayer key>"
        );
    };
    let mut config = Config::default();
    config.database.url = Some(database.clone().into());
    let store = Store::connect(&config.database).await?;
    let relayer = ConsentRelayer::connect(
        rpc,
        SignerKey::from_hex(key)?,
        registry.parse()?,
        ChainConfig {
            confirmations: 1,
            poll_interval: Duration::from_millis(5),
            ..ChainConfig::default()
        },
    )
    .await?;
    let patients: Vec<String> = sqlx::query_scalar(
        "SELECT id FROM resource WHERE resource_type = 'Patient' AND deleted = 0 ORDER BY id",
    )
    .fetch_all(&mut *store.reader().await?)
    .await?;
    let now = gateway::model::Instant::now().millis();
    let mut granted = 0;
    for patient in &patients {
        let wallet = PrivateKeySigner::random();
        let address = format!("{:#x}", wallet.address());
        let mut tx = store.begin().await?;
        match gateway::auth::binding::bind(&mut tx, patient, &address, "bench", now).await? {
            Ok(_) => tx.commit().await?,
            Err(refused) => {
                eprintln!("{patient}: not bound ({refused:?}); skipped");
                continue;
            }
        }
        let request = GrantRequest {
            patient: wallet.address(),
            grantee: grantee_of_client(client),
            resource_types: Vec::new(),
            purpose: "TREAT".to_owned(),
            expires_at: 0,
            nonce: U256::ZERO,
            deadline: U256::from(u64::try_from(now / 1000)? + 3600),
        };
        let hash = signing_hash_grant(relayer.chain_id(), relayer.registry(), &request);
        let signature = Bytes::from(wallet.sign_hash_sync(&hash)?.as_bytes().to_vec());
        relayer.relay_grant(&request, signature).await?;
        granted += 1;
    }
    println!(
        "{granted} of {} patients bound and granting {client}",
        patients.len()
    );
    Ok(())
}
