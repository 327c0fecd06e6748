//! `fhir-anchor consent-basis` against a real anvil (Foundry from the repository's npm
//! packages, `npm ci`): grants signed by patients' wallets and relayed to a `ConsentRegistry`
//! deployed from the committed artifact; AuditEvents written as the gateway writes them
//! (README, "The audit trail"), naming those grants; the command run as an auditor runs it,
//! and the library function behind it for the verdicts.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use alloy::primitives::{Address, B256, Bytes, U256};
use alloy::providers::Provider as _;
use alloy::signers::SignerSync as _;
use alloy::signers::local::PrivateKeySigner;
use anchor::audit::{
    CONSENT_BASIS_EXTENSION, ConsentAudit, ConsentBasis, Verdict, check_consent_basis,
};
use anchor::chain::{ChainConfig, SignerKey};
use anchor::consent::{
    ConsentReader, ConsentRelayer, GrantRequest, RevokeRequest, grantee_of_client, grantee_of_user,
    signing_hash_grant, signing_hash_revoke,
};
use common::{Anvil, KEY};
use serde_json::{Value, json};

fn fast() -> ChainConfig {
    ChainConfig {
        confirmations: 1,
        poll_interval: Duration::from_millis(10),
        bump_after: Duration::from_secs(3600),
        ..ChainConfig::default()
    }
}

/// A registry on its own anvil, a relayer, and the patients' wallets.
struct Chain {
    anvil: Anvil,
    relayer: ConsentRelayer,
    reader: ConsentReader,
}

impl Chain {
    async fn start() -> Chain {
        let anvil = Anvil::start(&[]);
        let key = SignerKey::from_hex(KEY).expect("the relayer key");
        let (relayer, _) = ConsentRelayer::deploy(&anvil.url, key, fast())
            .await
            .expect("deploy");
        let reader = relayer.reader();
        Chain {
            anvil,
            relayer,
            reader,
        }
    }

    fn registry(&self) -> Address {
        self.reader.registry()
    }

    /// `patient` grants `types` (none: every type) for `purpose` to `grantee`; the grant id
    /// and its block.
    async fn grant(
        &self,
        patient: &PrivateKeySigner,
        grantee: B256,
        types: &[&str],
        purpose: &str,
        expires_at: u64,
    ) -> (u64, u64) {
        let request = GrantRequest {
            patient: patient.address(),
            grantee,
            resource_types: types.iter().map(|t| (*t).to_owned()).collect(),
            purpose: purpose.to_owned(),
            expires_at,
            nonce: self.reader.nonce(patient.address()).await.expect("nonce"),
            deadline: U256::from(self.now().await + 3600),
        };
        let hash = signing_hash_grant(self.reader.chain_id(), self.registry(), &request);
        let relayed = self
            .relayer
            .relay_grant(&request, sign(patient, hash))
            .await
            .expect("the grant is relayed");
        (relayed.grant_id, relayed.block_number)
    }

    /// `patient` revokes `grant_id`; the revoking block.
    async fn revoke(&self, patient: &PrivateKeySigner, grant_id: u64) -> u64 {
        let request = RevokeRequest {
            patient: patient.address(),
            grant_id,
            nonce: self.reader.nonce(patient.address()).await.expect("nonce"),
            deadline: U256::from(self.now().await + 3600),
        };
        let hash = signing_hash_revoke(self.reader.chain_id(), self.registry(), &request);
        self.relayer
            .relay_revoke(&request, sign(patient, hash))
            .await
            .expect("the revocation is relayed")
            .block_number
    }

    fn provider(&self) -> impl alloy::providers::Provider {
        alloy::providers::ProviderBuilder::new().connect_http(self.anvil.url.parse().expect("url"))
    }

    /// The time of the latest block.
    async fn now(&self) -> u64 {
        self.provider()
            .get_block_by_number(alloy::eips::BlockNumberOrTag::Latest)
            .await
            .expect("latest block")
            .expect("a block")
            .header
            .timestamp
    }

    /// Mines one block `seconds` after the latest; its number.
    async fn later(&self, seconds: u64) -> u64 {
        let provider = self.provider();
        let _: Value = provider
            .raw_request("evm_increaseTime".into(), json!([seconds]))
            .await
            .expect("evm_increaseTime");
        let _: Value = provider
            .raw_request("evm_mine".into(), json!([]))
            .await
            .expect("evm_mine");
        self.reader.head().await.expect("head")
    }

    async fn check(&self, event: &Value) -> ConsentAudit {
        let basis = ConsentBasis::from_json(event).expect("the AuditEvent's basis");
        check_consent_basis(&self.anvil.url, self.registry(), &basis)
            .await
            .expect("the chain is read")
    }

    /// Runs `fhir-anchor consent-basis` on `event`: exit code and standard output.
    fn run(&self, test: &str, event: &Value) -> (i32, String) {
        self.run_with(test, event, self.registry())
    }

    /// Runs `fhir-anchor consent-basis` on `event` with `--registry registry`.
    fn run_with(&self, test: &str, event: &Value, registry: Address) -> (i32, String) {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join("fhir-anchor-consent")
            .join(test);
        std::fs::create_dir_all(&dir).expect("a scratch directory");
        let path = dir.join("audit-event.json");
        std::fs::write(&path, serde_json::to_string_pretty(event).expect("JSON")).expect("written");
        let registry = registry.to_string();
        let output = Command::new(env!("CARGO_BIN_EXE_fhir-anchor"))
            .args(["consent-basis", "--audit-event"])
            .arg(&path)
            .args(["--rpc", &self.anvil.url, "--registry", &registry])
            .env_remove("FHIR_ANCHOR_RPC")
            .output()
            .expect("fhir-anchor runs");
        (
            output.status.code().expect("an exit code"),
            String::from_utf8(output.stdout).expect("UTF-8 output"),
        )
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

/// One patient entity of an AuditEvent, as the gateway writes it.
struct Patient {
    id: &'static str,
    wallet: Option<Address>,
    types: Vec<&'static str>,
    grants: Vec<u64>,
    own_record: bool,
}

impl Patient {
    fn entity(&self, block: u64) -> Value {
        let mut detail = vec![json!({"type": "consentBlock", "valueString": block.to_string()})];
        if let Some(wallet) = self.wallet {
            detail.push(json!({"type": "consentWallet", "valueString": format!("{wallet:#x}")}));
        }
        for t in &self.types {
            detail.push(json!({"type": "consentType", "valueString": t}));
        }
        if self.own_record {
            detail.push(json!({"type": "consentBasis", "valueString": "own record"}));
        }
        for grant in &self.grants {
            detail.push(json!({"type": "consentGrant", "valueString": grant.to_string()}));
        }
        json!({
            "what": {"reference": format!("Patient/{}", self.id)},
            "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "1"},
            "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "1", "display": "Patient"},
            "detail": detail,
        })
    }
}

/// The AuditEvent of a read by the practitioner user `dr-7` through the app `app`, for
/// `purpose`, decided at `block` with grants counted through `confirmed_through`.
fn read_event(purpose: &str, block: u64, confirmed_through: u64, patients: &[Patient]) -> Value {
    let mut entity = vec![json!({
        "what": {"reference": "Observation/o1/_history/1"},
        "type": {"code": "2"}, "role": {"code": "4"},
    })];
    entity.extend(patients.iter().map(|p| p.entity(block)));
    json!({
        "resourceType": "AuditEvent", "id": "ae1",
        "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest"},
        "subtype": [{"system": "http://hl7.org/fhir/restful-interaction", "code": "read"}],
        "action": "R", "recorded": "2026-11-25T04:00:00.000Z", "outcome": "0",
        "purposeOfEvent": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": purpose}]}],
        "agent": [
            {"type": {"coding": [{"code": "PROV"}]}, "requestor": true,
             "who": {"identifier": {"system": "urn:fhir-gateway:user", "value": "dr-7"}, "reference": "Practitioner/7"}},
            {"type": {"coding": [{"code": "110150"}]}, "requestor": false,
             "who": {"identifier": {"system": "urn:fhir-gateway:client", "value": "app"}}},
        ],
        "source": {"observer": {"display": "FHIR gateway"}},
        "entity": entity,
        "extension": [{"url": CONSENT_BASIS_EXTENSION, "extension": [
            {"url": "block", "valueString": block.to_string()},
            {"url": "confirmedThrough", "valueString": confirmed_through.to_string()},
        ]}],
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_access_the_grants_covered_is_accepted_grant_by_grant() {
    let chain = Chain::start().await;
    let (ann, bob) = (PrivateKeySigner::random(), PrivateKeySigner::random());
    let tomorrow = chain.now().await + 86_400;
    // Observations to the app; every type to the user, for a day
    let (to_app, _) = chain
        .grant(&ann, grantee_of_client("app"), &["Observation"], "TREAT", 0)
        .await;
    let (to_user, granted) = chain
        .grant(&ann, grantee_of_user("dr-7"), &[], "TREAT", tomorrow)
        .await;
    let block = chain.later(1).await;
    let ann_read = Patient {
        id: "ann",
        wallet: Some(ann.address()),
        types: vec!["Observation", "Patient"],
        grants: vec![to_app, to_user],
        own_record: false,
    };
    let event = read_event("TREAT", block, granted, &[ann_read]);

    let audit = chain.check(&event).await;
    assert!(audit.is_ok(), "{audit}");
    let verdict = &audit.patients[0];
    assert_eq!(verdict.verdict, Verdict::Covered, "{audit}");
    assert_eq!(verdict.grants[0].opens, ["Observation"], "{audit}");
    assert_eq!(verdict.grants[1].opens, ["Observation", "Patient"]);
    let (code, out) = chain.run("covered", &event);
    assert_eq!(code, 0, "{out}");
    for expected in [
        "Patient/ann (wallet ",
        ": COVERED",
        &format!("grant {to_app}: OK: granted in block "),
        "to client app for TREAT, types Observation; not revoked at block",
        &format!("grant {to_user}: OK"),
        "to user dr-7 for TREAT, types every type",
        &format!("expires at {tomorrow}"),
    ] {
        assert!(out.contains(expected), "expected {expected:?} in:\n{out}");
    }
    assert!(out.ends_with("OK\n"), "{out}");

    // a revocation after the decision does not change what covered it then
    chain.revoke(&ann, to_app).await;
    let (code, out) = chain.run("covered-then-revoked", &event);
    assert_eq!(code, 0, "{out}");

    // a patient's own record, and break-the-glass, need no grant
    let mut own = read_event(
        "TREAT",
        block,
        granted,
        &[Patient {
            id: "bob",
            wallet: Some(bob.address()),
            types: vec!["Observation"],
            grants: vec![],
            own_record: true,
        }],
    );
    own["agent"] = json!([{"requestor": true, "type": {"coding": [{"code": "PAT"}]},
        "who": {"identifier": {"system": "urn:fhir-gateway:user", "value": "bob-user"}, "reference": "Patient/bob"}}]);
    let audit = chain.check(&own).await;
    assert_eq!(audit.patients[0].verdict, Verdict::OwnRecord, "{audit}");
    assert!(audit.is_ok(), "{audit}");
    // ... but only when the requestor is that patient
    let mut not_own = own.clone();
    not_own["agent"][0]["who"]["reference"] = json!("Patient/ann");
    let (code, out) = chain.run("not-own", &not_own);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("recorded as the requestor's own record, but the requestor is Patient/ann"),
        "{out}"
    );

    // break-the-glass: no consent decision was made (the gateway records no basis), flagged
    let mut glass = read_event("ETREAT", block, granted, &[]);
    glass["purposeOfEvent"]
        .as_array_mut()
        .expect("as the test set up")
        .push(json!({"coding": [{"code": "BTG"}]}));
    glass
        .as_object_mut()
        .expect("an object")
        .remove("extension");
    glass["entity"]
        .as_array_mut()
        .expect("as the test set up")
        .push(json!({"what": {"reference": "Patient/bob"}, "role": {"code": "1"}}));
    let (code, out) = chain.run("break-the-glass", &glass);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("Patient/bob: BREAK-THE-GLASS"), "{out}");
    assert!(out.contains("flagged BTG"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_way_a_basis_can_be_wrong_fails_with_its_reason() {
    let chain = Chain::start().await;
    let (ann, bob) = (PrivateKeySigner::random(), PrivateKeySigner::random());
    let app = grantee_of_client("app");
    let (treat, _) = chain.grant(&ann, app, &["Observation"], "TREAT", 0).await;
    let (revoked, _) = chain.grant(&ann, app, &["Observation"], "TREAT", 0).await;
    let revoked_in = chain.revoke(&ann, revoked).await;
    let (payment, _) = chain.grant(&ann, app, &["Observation"], "HPAYMT", 0).await;
    let (other_app, _) = chain
        .grant(&ann, grantee_of_client("other-app"), &[], "TREAT", 0)
        .await;
    let (conditions, _) = chain.grant(&ann, app, &["Condition"], "TREAT", 0).await;
    let (bobs, _) = chain.grant(&bob, app, &["Observation"], "TREAT", 0).await;
    let expires_at = chain.now().await + 60;
    let (expiring, last_grant) = chain.grant(&ann, app, &[], "TREAT", expires_at).await;
    // the decision: two minutes later, past the expiry
    let block = chain.later(120).await;
    let (made_later, _) = chain.grant(&ann, app, &[], "TREAT", 0).await;

    let with = |grants: &[u64], types: &[&'static str]| Patient {
        id: "ann",
        wallet: Some(ann.address()),
        types: types.to_vec(),
        grants: grants.to_vec(),
        own_record: false,
    };
    let obs = &["Observation"];
    let cases: Vec<(&str, Patient, Vec<String>)> = vec![
        (
            "revoked before the block",
            with(&[revoked], obs),
            vec![format!(
                "revoked in block {revoked_in}, at or before block {block}"
            )],
        ),
        (
            "expired at the block's time",
            with(&[expiring], obs),
            vec![format!(
                "expired at {expires_at}, at or before the time of block {block}"
            )],
        ),
        (
            "another purpose",
            with(&[payment], obs),
            vec!["its purpose is HPAYMT, the access's TREAT".to_owned()],
        ),
        (
            "another grantee",
            with(&[other_app], obs),
            vec![format!(
                "its grantee {} is none of the agents' (user dr-7 {}, client app {})",
                grantee_of_client("other-app"),
                grantee_of_user("dr-7"),
                app
            )],
        ),
        (
            "a type not granted",
            with(&[conditions], obs),
            vec![
                "it opens Condition, none of the types served (Observation)".to_owned(),
                "no valid grant opens Observation".to_owned(),
            ],
        ),
        (
            "a type no grant opens beside one that is",
            with(&[treat], &["Observation", "Condition"]),
            vec!["no valid grant opens Condition".to_owned()],
        ),
        (
            "an unknown grant",
            with(&[9_999], obs),
            vec![format!(
                "the registry has no such grant as of block {block}"
            )],
        ),
        (
            "a grant made after the block",
            with(&[made_later], obs),
            vec![format!(
                "the registry has no such grant as of block {block}"
            )],
        ),
        (
            "another patient's grant",
            with(&[bobs], obs),
            vec![format!(
                "granted by {}, not by the patient's wallet {}",
                bob.address(),
                ann.address()
            )],
        ),
        (
            "no grant named",
            with(&[], obs),
            vec!["no grant is named, and it is not the requestor's own record".to_owned()],
        ),
    ];
    for (case, patient, expected) in cases {
        let event = read_event("TREAT", block, last_grant, &[patient]);
        let audit = chain.check(&event).await;
        assert!(!audit.is_ok(), "{case}: expected a failure, got\n{audit}");
        assert_eq!(
            audit.patients[0].verdict,
            Verdict::NotCovered,
            "{case}:\n{audit}"
        );
        let (code, out) = chain.run(&case.replace(' ', "-"), &event);
        assert_eq!(code, 1, "{case}: expected exit 1:\n{out}");
        for reason in &expected {
            assert!(
                out.contains(reason.as_str()),
                "{case}: expected {reason:?} in:\n{out}"
            );
        }
        assert!(out.contains("FAILED: "), "{case}:\n{out}");
    }

    // counted only once confirmed: a grant after `confirmedThrough`
    let event = read_event("TREAT", block, last_grant - 1, &[with(&[expiring], &[])]);
    let (code, out) = chain.run("not-confirmed", &event);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!(
            "granted in block {last_grant}, after block {}",
            last_grant - 1
        )),
        "{out}"
    );

    // served without any consent decision: neither own record nor break-the-glass
    let mut open = read_event("TREAT", block, last_grant, &[]);
    open.as_object_mut().expect("an object").remove("extension");
    open["entity"]
        .as_array_mut()
        .expect("as the test set up")
        .push(json!({"what": {"reference": "Patient/ann"}, "role": {"code": "1"}}));
    let (code, out) = chain.run("no-basis", &open);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("served without a recorded consent decision"),
        "{out}"
    );

    // the registry named must hold code: refused before any check
    let event = read_event("TREAT", block, last_grant, &[with(&[treat], obs)]);
    let (code, out) = chain.run_with("valid", &event, Address::repeat_byte(0x01));
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("FAILED: cannot read the chain: no contract code"),
        "{out}"
    );
    let (code, out) = chain.run("valid", &event);
    assert_eq!(code, 0, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_basis_is_checked_on_the_chain_and_block_it_names() {
    let chain = Chain::start().await;
    let ann = PrivateKeySigner::random();
    let (to_app, granted) = chain
        .grant(&ann, grantee_of_client("app"), &[], "TREAT", 0)
        .await;
    let block = chain.later(1).await;
    let patient = Patient {
        id: "ann",
        wallet: Some(ann.address()),
        types: vec!["Observation"],
        grants: vec![to_app],
        own_record: false,
    };
    let hash = chain
        .reader
        .block_hash(block)
        .await
        .expect("read")
        .expect("a block");
    let mut event = read_event("TREAT", block, granted, &[patient]);
    let named = |event: &mut Value, member: &str, value: String| {
        let parts = event["extension"][0]["extension"]
            .as_array_mut()
            .expect("as the test set up");
        parts.retain(|p| p["url"] != member);
        parts.push(json!({"url": member, "valueString": value}));
    };
    named(&mut event, "blockHash", hash.to_string());
    let chain_id = chain.reader.chain_id();
    named(&mut event, "chainId", chain_id.to_string());
    named(&mut event, "registry", chain.registry().to_string());
    let audit = chain.check(&event).await;
    assert!(audit.is_ok(), "{audit}");
    assert_eq!(audit.basis.block_hash, Some(hash));

    // each of the three differs: each is reported, and the check fails
    let mut elsewhere = event.clone();
    named(
        &mut elsewhere,
        "blockHash",
        B256::repeat_byte(0x42).to_string(),
    );
    named(&mut elsewhere, "chainId", "1".to_owned());
    named(
        &mut elsewhere,
        "registry",
        Address::repeat_byte(0x07).to_string(),
    );
    let (code, out) = chain.run("elsewhere", &elsewhere);
    assert_eq!(code, 1, "{out}");
    for expected in [
        &format!("the decision was made on chain 1; the endpoint serves chain {chain_id}"),
        &format!(
            "the decision read the registry at {}, not the one checked ({})",
            Address::repeat_byte(0x07),
            chain.registry()
        ),
        &format!(
            "block {block} is {hash} on this chain, not {}",
            B256::repeat_byte(0x42)
        ),
        "a reorganization replaced the block the decision rested on",
        "FAILED: 3 problem(s)",
    ] {
        assert!(out.contains(expected), "expected {expected:?} in:\n{out}");
    }
    // and a hash that is not one is refused as such
    let mut malformed = event.clone();
    named(&mut malformed, "blockHash", "0x12".to_owned());
    let error = ConsentBasis::from_json(&malformed).expect_err("malformed");
    assert!(error.to_string().contains("blockHash"), "{error}");
}
