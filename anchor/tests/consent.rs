//! The consent client against a real anvil (Foundry 1.7.1 from the repository's npm packages,
//! installed by `npm ci` at the repository root): a registry deployed from the committed
//! artifact, patients' grants and revocations signed off chain and relayed, and the events and
//! views read back. Each test starts its own anvil on a free port.

mod common;

use std::process::Command;
use std::time::Duration;

use alloy::primitives::{Address, B256, Bytes, U256};
use alloy::signers::SignerSync as _;
use alloy::signers::local::PrivateKeySigner;
use anchor::chain::{ChainConfig, ChainError, SignerKey};
use anchor::consent::{
    ConsentChange, ConsentError, ConsentReader, ConsentRegistry, ConsentRelayer, GrantRequest,
    RevokeRequest, grantee_of_account, grantee_of_client, grantee_of_user, signing_hash_grant,
    signing_hash_revoke, typed_data_grant, typed_data_revoke,
};
use common::{Anvil, KEY, foundry_binary};

/// A patient's wallet key (not an anvil account: the patient holds no ether).
const PATIENT_KEY: &str = "0x5c0b4ae3c0b0e3ac6bb5a4b5f1a0b7ad8fdc6d8d9a0b1c2d3e4f5a6b7c8d9e0f";
const OTHER_KEY: &str = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d";

fn fast() -> ChainConfig {
    ChainConfig {
        confirmations: 1,
        poll_interval: Duration::from_millis(10),
        bump_after: Duration::from_secs(3600),
        ..ChainConfig::default()
    }
}

fn wallet(key: &str) -> PrivateKeySigner {
    key.parse().expect("a test key")
}

async fn deploy(anvil: &Anvil) -> ConsentRelayer {
    let key = SignerKey::from_hex(KEY).expect("the relayer key");
    let (relayer, deployed) = ConsentRelayer::deploy(&anvil.url, key, fast())
        .await
        .expect("deploy");
    assert_eq!(relayer.registry(), deployed.registry);
    relayer
}

/// An hour from the time of the node's latest block.
async fn deadline(url: &str) -> U256 {
    U256::from(latest_timestamp(url).await + 3600)
}

/// The time of the node's latest block.
async fn latest_timestamp(url: &str) -> u64 {
    use alloy::providers::Provider as _;
    alloy::providers::ProviderBuilder::new()
        .connect_http(url.parse().expect("url"))
        .get_block_by_number(alloy::eips::BlockNumberOrTag::Latest)
        .await
        .expect("latest block")
        .expect("a block")
        .header
        .timestamp
}

fn grant_request(patient: Address, nonce: u64, deadline: U256) -> GrantRequest {
    GrantRequest {
        patient,
        grantee: grantee_of_client("smart-app"),
        resource_types: vec!["Observation".into(), "Condition".into()],
        purpose: "TREAT".into(),
        expires_at: 0,
        nonce: U256::from(nonce),
        deadline,
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_signed_grants_and_revocations_and_reads_them_back() {
    let anvil = Anvil::start(&[]);
    let relayer = deploy(&anvil).await;
    let reader = ConsentReader::connect(&anvil.url, relayer.registry())
        .await
        .expect("connect");
    let (chain_id, registry) = (reader.chain_id(), reader.registry());
    let patient = wallet(PATIENT_KEY);
    assert_eq!(
        reader.nonce(patient.address()).await.expect("nonce"),
        U256::ZERO
    );

    let request = grant_request(patient.address(), 0, deadline(&anvil.url).await);
    let signature = sign(&patient, signing_hash_grant(chain_id, registry, &request));
    let granted = relayer
        .relay_grant(&request, signature.clone())
        .await
        .expect("the signed grant is accepted");
    assert_eq!(granted.grant_id, 1);
    assert_eq!(
        reader.nonce(patient.address()).await.expect("nonce"),
        U256::from(1)
    );

    let grant = reader.grant(1, None).await.expect("grant 1");
    assert_eq!(grant.patient, patient.address());
    assert_eq!(grant.grantee, grantee_of_client("smart-app"));
    assert_eq!(grant.resource_types, ["Observation", "Condition"]);
    assert_eq!(grant.purpose, "TREAT");
    assert_eq!(
        (grant.expires_at, grant.granted_block, grant.revoked_block),
        (0, granted.block_number, None)
    );
    assert_eq!(
        reader
            .is_allowed(
                patient.address(),
                grantee_of_client("smart-app"),
                "Observation",
                "TREAT"
            )
            .await
            .expect("isAllowed"),
        Some(1)
    );
    assert_eq!(
        reader
            .is_allowed(
                patient.address(),
                grantee_of_client("smart-app"),
                "Patient",
                "TREAT"
            )
            .await
            .expect("isAllowed"),
        None
    );

    // The same signature again: refused by the simulation, typed, nothing sent.
    let head = reader.head().await.expect("head");
    let replay = relayer.relay_grant(&request, signature).await;
    assert!(
        matches!(
            replay,
            Err(ChainError::Consent(ConsentError::InvalidNonce { patient: p, expected })) if p == patient.address() && expected == U256::from(1)
        ),
        "{replay:?}"
    );
    assert_eq!(
        reader.head().await.expect("head"),
        head,
        "no transaction was sent"
    );

    let revoke = RevokeRequest {
        patient: patient.address(),
        grant_id: 1,
        nonce: U256::from(1),
        deadline: deadline(&anvil.url).await,
    };
    let revoked = relayer
        .relay_revoke(
            &revoke,
            sign(&patient, signing_hash_revoke(chain_id, registry, &revoke)),
        )
        .await
        .expect("the signed revocation is accepted");
    assert_eq!(revoked.grant_id, 1);
    assert_eq!(
        reader.grant(1, None).await.expect("grant 1").revoked_block,
        Some(revoked.block_number)
    );
    // An auditor reads the grant as it was before the revocation.
    assert_eq!(
        reader
            .grant(1, Some(granted.block_number))
            .await
            .expect("grant 1 at its block")
            .revoked_block,
        None
    );
    assert!(matches!(
        reader.grant(1, Some(granted.block_number - 1)).await,
        Err(ChainError::Consent(ConsentError::UnknownGrant {
            grant_id: 1
        }))
    ));

    // Revoking it again: the registry says why.
    let again = RevokeRequest {
        nonce: U256::from(2),
        ..revoke.clone()
    };
    let refused = relayer
        .relay_revoke(
            &again,
            sign(&patient, signing_hash_revoke(chain_id, registry, &again)),
        )
        .await;
    assert!(
        matches!(
            refused,
            Err(ChainError::Consent(ConsentError::AlreadyRevoked {
                grant_id: 1
            }))
        ),
        "{refused:?}"
    );

    let events = reader
        .events(0, reader.head().await.expect("head"))
        .await
        .expect("events");
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(
        events[0].change,
        ConsentChange::Granted {
            grant_id: 1,
            patient: patient.address(),
            grantee: grantee_of_client("smart-app"),
            resource_types: vec!["Observation".into(), "Condition".into()],
            purpose: "TREAT".into(),
            expires_at: 0,
        }
    );
    assert_eq!(
        (
            events[0].block_number,
            events[0].block_hash,
            events[0].tx_hash
        ),
        (granted.block_number, granted.block_hash, granted.tx_hash)
    );
    assert_eq!(
        events[1].change,
        ConsentChange::Revoked {
            grant_id: 1,
            patient: patient.address(),
            grantee: grantee_of_client("smart-app"),
        }
    );
    assert_eq!(
        (
            events[1].block_number,
            events[1].block_hash,
            events[1].tx_hash
        ),
        (revoked.block_number, revoked.block_hash, revoked.tx_hash)
    );
    assert_eq!(
        reader
            .block_hash(revoked.block_number)
            .await
            .expect("block hash"),
        Some(revoked.block_hash)
    );
    assert_eq!(
        reader
            .block_hash(revoked.block_number + 100)
            .await
            .expect("block hash"),
        None
    );
    // the blocks before the grant (the deployment) hold none
    assert!(
        reader
            .events(0, granted.block_number - 1)
            .await
            .expect("no events")
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_other_signers_and_passed_deadlines_before_sending() {
    let anvil = Anvil::start(&[]);
    let relayer = deploy(&anvil).await;
    let reader = relayer.reader();
    let (chain_id, registry) = (reader.chain_id(), reader.registry());
    let patient = wallet(PATIENT_KEY);
    let head = reader.head().await.expect("head");

    // signed by another key
    let request = grant_request(patient.address(), 0, deadline(&anvil.url).await);
    let forged = sign(
        &wallet(OTHER_KEY),
        signing_hash_grant(chain_id, registry, &request),
    );
    let refused = relayer.relay_grant(&request, forged).await;
    assert!(
        matches!(&refused, Err(ChainError::Consent(ConsentError::InvalidSignature { patient: p })) if *p == patient.address()),
        "{refused:?}"
    );
    // signed for another chain
    let elsewhere = sign(
        &patient,
        signing_hash_grant(chain_id + 1, registry, &request),
    );
    assert!(matches!(
        relayer.relay_grant(&request, elsewhere).await,
        Err(ChainError::Consent(ConsentError::InvalidSignature { .. }))
    ));
    // the deadline passed
    let late = grant_request(
        patient.address(),
        0,
        U256::from(latest_timestamp(&anvil.url).await - 1),
    );
    let refused = relayer
        .relay_grant(
            &late,
            sign(&patient, signing_hash_grant(chain_id, registry, &late)),
        )
        .await;
    assert!(
        matches!(&refused, Err(ChainError::Consent(ConsentError::DeadlinePassed { deadline })) if *deadline == late.deadline),
        "{refused:?}"
    );
    let revoke = RevokeRequest {
        patient: patient.address(),
        grant_id: 9,
        nonce: U256::ZERO,
        deadline: deadline(&anvil.url).await,
    };
    let refused = relayer
        .relay_revoke(
            &revoke,
            sign(&patient, signing_hash_revoke(chain_id, registry, &revoke)),
        )
        .await;
    assert!(
        matches!(
            &refused,
            Err(ChainError::Consent(ConsentError::UnknownGrant {
                grant_id: 9
            }))
        ),
        "{refused:?}"
    );
    // an invalid grant, well signed
    let invalid = GrantRequest {
        resource_types: vec!["Observation1".into()],
        ..request.clone()
    };
    let refused = relayer
        .relay_grant(
            &invalid,
            sign(&patient, signing_hash_grant(chain_id, registry, &invalid)),
        )
        .await;
    assert!(
        matches!(&refused, Err(ChainError::Consent(ConsentError::InvalidResourceType { index })) if *index == U256::ZERO),
        "{refused:?}"
    );

    assert_eq!(reader.head().await.expect("head"), head, "nothing was sent");
    assert_eq!(reader.grant_count().await.expect("grantCount"), 0);
    assert!(matches!(
        reader.grant(1, None).await,
        Err(ChainError::Consent(ConsentError::UnknownGrant {
            grant_id: 1
        }))
    ));
}

/// The JSON a browser wallet signs (`eth_signTypedData_v4`), signed here by Foundry's
/// `cast wallet sign --data`, is accepted by the contract: the JSON, the Rust hash and the
/// contract agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wallet_signature_of_the_typed_data_json_is_accepted() {
    let anvil = Anvil::start(&[]);
    let relayer = deploy(&anvil).await;
    let reader = relayer.reader();
    let (chain_id, registry) = (reader.chain_id(), reader.registry());
    let patient = wallet(PATIENT_KEY);

    let request = GrantRequest {
        resource_types: vec![],
        purpose: "HPAYMT".into(),
        expires_at: latest_timestamp(&anvil.url).await + 86_400,
        grantee: grantee_of_user("dr-7"),
        ..grant_request(patient.address(), 0, deadline(&anvil.url).await)
    };
    let json = typed_data_grant(chain_id, registry, &request);
    let signature = cast_sign(PATIENT_KEY, &json);
    assert_eq!(
        signature,
        sign(&patient, signing_hash_grant(chain_id, registry, &request)),
        "cast hashes the JSON as the Rust code does (RFC 6979 signatures are deterministic)"
    );
    let granted = relayer
        .relay_grant(&request, signature)
        .await
        .expect("the wallet-signed grant is accepted");

    let revoke = RevokeRequest {
        patient: patient.address(),
        grant_id: granted.grant_id,
        nonce: U256::from(1),
        deadline: deadline(&anvil.url).await,
    };
    let json = typed_data_revoke(chain_id, registry, &revoke);
    relayer
        .relay_revoke(&revoke, cast_sign(PATIENT_KEY, &json))
        .await
        .expect("the wallet-signed revocation is accepted");
    assert!(
        reader
            .grant(granted.grant_id, None)
            .await
            .expect("grant")
            .revoked_block
            .is_some()
    );
}

/// Signs typed data JSON with `cast wallet sign --data` (EIP-712, as a wallet does).
fn cast_sign(key: &str, typed_data: &serde_json::Value) -> Bytes {
    let output = Command::new(foundry_binary("cast"))
        .args(["wallet", "sign", "--private-key", key, "--data"])
        .arg(typed_data.to_string())
        .output()
        .expect("cast runs");
    assert!(
        output.status.success(),
        "cast wallet sign: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .expect("utf-8")
        .trim()
        .parse()
        .expect("a hex signature")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grantee_helpers_match_the_contract_and_clients_need_code() {
    let anvil = Anvil::start(&[]);
    let relayer = deploy(&anvil).await;
    let provider =
        alloy::providers::ProviderBuilder::new().connect_http(anvil.url.parse().expect("url"));
    let contract = ConsentRegistry::new(relayer.registry(), provider);
    let account = Address::repeat_byte(0x5a);
    assert_eq!(
        contract
            .granteeOfAccount(account)
            .call()
            .await
            .expect("call"),
        grantee_of_account(account)
    );
    for (name, expected) in [
        ("client:smart-app", grantee_of_client("smart-app")),
        ("user:Zoë", grantee_of_user("Zoë")),
    ] {
        assert_eq!(
            contract
                .granteeOfName(name.into())
                .call()
                .await
                .expect("call"),
            expected
        );
    }

    let nowhere = Address::repeat_byte(0x01);
    assert!(matches!(
        ConsentReader::connect(&anvil.url, nowhere).await,
        Err(ChainError::NoRegistry(address)) if address == nowhere
    ));
    let key = SignerKey::from_hex(KEY).expect("the relayer key");
    assert!(matches!(
        ConsentRelayer::connect(&anvil.url, key.clone(), nowhere, fast()).await,
        Err(ChainError::NoRegistry(address)) if address == nowhere
    ));
    let connected = ConsentRelayer::connect(&anvil.url, key, relayer.registry(), fast())
        .await
        .expect("connects to the deployed registry");
    assert_eq!(connected.relayer(), relayer.relayer());
}
