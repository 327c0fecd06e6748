//! The chain client against a real anvil (Foundry 1.7.1 from the repository's npm packages,
//! installed by `npm ci` at the repository root; contracts/scripts/foundry runs the same
//! binary). Each test starts its own anvil on a free port.

mod common;

use std::sync::Arc;
use std::time::Duration;

use alloy::primitives::{Address, B256};
use alloy::providers::Provider as _;
use anchor::chain::{AnchorClient, ChainConfig, ChainError, RegistryError, SignerKey};
use anchor::{Batch, LeafHash, NodeHash};
use common::{Anvil, KEY};
use serde_json::{Value, json};

fn key() -> SignerKey {
    SignerKey::from_hex(KEY).expect("the test key")
}

fn fast(confirmations: u64) -> ChainConfig {
    ChainConfig {
        confirmations,
        poll_interval: Duration::from_millis(10),
        bump_after: Duration::from_secs(3600),
        ..ChainConfig::default()
    }
}

/// The root of a batch of `size` distinct leaves.
fn root(seed: u8, size: u8) -> NodeHash {
    let leaves: Vec<LeafHash> = (0..size)
        .map(|i| LeafHash::from_bytes([seed ^ i; 32]))
        .collect();
    Batch::new(&leaves).expect("a batch").root()
}

async fn rpc(client: &AnchorClient, method: &'static str, params: Value) -> Value {
    client
        .provider()
        .raw_request(method.into(), params)
        .await
        .unwrap_or_else(|e| panic!("{method}: {e}"))
}

async fn mine(client: &AnchorClient, blocks: u64) {
    rpc(client, "anvil_mine", json!([blocks])).await;
}

async fn canonical_hash(client: &AnchorClient, number: u64) -> Option<B256> {
    client
        .provider()
        .get_block_by_number(number.into())
        .await
        .expect("eth_getBlockByNumber")
        .map(|block| block.header.hash)
}

/// Polls `done` every 10 ms for up to 20 s.
async fn until<F: Future<Output = bool>>(what: &str, mut done: impl FnMut() -> F) {
    for _ in 0..2000 {
        if done().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploys_anchors_contiguous_batches_and_reads_them_back() {
    let anvil = Anvil::start(&[]);
    let (client, deployed) = AnchorClient::deploy(&anvil.url, key(), fast(1))
        .await
        .expect("deploy");
    assert_eq!(client.registry(), deployed.registry);
    let me = client.anchorer();
    assert_eq!(client.log_size(me).await.expect("logSize"), 0);

    let first = client.anchor(0, 3, &root(1, 3)).await.expect("batch 0");
    let second = client.anchor(3, 2, &root(2, 2)).await.expect("batch 1");
    assert_eq!((first.batch_number, second.batch_number), (0, 1));
    assert!(
        first.gas_used > 21_000 && first.gas_used <= 120_000,
        "{first:?}"
    );
    assert_eq!((first.replacements, first.reorgs, first.dropped), (0, 0, 0));
    assert_eq!(client.log_size(me).await.expect("logSize"), 5);
    assert_eq!(client.batch_count(me).await.expect("batchCount"), 2);

    // A second client of the same registry reads what the first anchored.
    let reader = AnchorClient::connect(&anvil.url, key(), deployed.registry, fast(1))
        .await
        .expect("connect");
    let batch = reader.batch(me, 1).await.expect("batch 1");
    assert_eq!(
        (
            batch.root,
            batch.first_index,
            batch.size,
            batch.block_number
        ),
        (root(2, 2), 3, 2, second.block_number)
    );
    assert!(batch.timestamp > 0);
    assert_eq!(
        reader
            .batch(me, 2)
            .await
            .expect_err("no batch 2")
            .to_string(),
        ChainError::from(RegistryError::UnknownBatch {
            anchorer: me,
            batch_number: 2
        })
        .to_string()
    );
    assert!(matches!(
        reader.batch(me, 2).await,
        Err(ChainError::Registry(RegistryError::UnknownBatch { anchorer, batch_number: 2 })) if anchorer == me
    ));
    // Another account's log is empty.
    assert_eq!(
        reader
            .log_size(Address::repeat_byte(7))
            .await
            .expect("logSize"),
        0
    );

    let events = reader
        .batch_anchored_events(me, 0, None)
        .await
        .expect("events");
    assert_eq!(events.len(), 2);
    for (event, anchored, (first_index, size, root)) in [
        (&events[0], &first, (0, 3, root(1, 3))),
        (&events[1], &second, (3, 2, root(2, 2))),
    ] {
        assert_eq!(event.anchorer, me);
        assert_eq!(event.batch_number, anchored.batch_number);
        assert_eq!(
            (event.first_index, event.size, event.root),
            (first_index, size, root)
        );
        assert_eq!(
            (event.block_number, event.block_hash),
            (anchored.block_number, anchored.block_hash)
        );
        assert_eq!(event.tx_hash, anchored.tx_hash);
        assert_eq!(
            canonical_hash(&reader, event.block_number).await,
            Some(event.block_hash)
        );
    }
    assert!(
        reader
            .batch_anchored_events(Address::repeat_byte(7), 0, None)
            .await
            .expect("events")
            .is_empty()
    );

    // Refusals come back typed, from the simulation, without spending a nonce.
    let nonce_before = client
        .provider()
        .get_transaction_count(me)
        .await
        .expect("nonce");
    assert!(matches!(
        client.anchor(4, 1, &root(3, 1)).await,
        Err(ChainError::Registry(RegistryError::NotContiguous {
            expected_first_index: 5,
            first_index: 4
        }))
    ));
    assert!(matches!(
        client.anchor(6, 1, &root(3, 1)).await,
        Err(ChainError::Registry(RegistryError::NotContiguous {
            expected_first_index: 5,
            first_index: 6
        }))
    ));
    assert!(matches!(
        client.anchor(5, 0, &root(3, 1)).await,
        Err(ChainError::Registry(RegistryError::EmptyBatch))
    ));
    assert!(matches!(
        client.anchor(5, 1, &NodeHash::from_bytes([0; 32])).await,
        Err(ChainError::Registry(RegistryError::ZeroRoot))
    ));
    assert!(matches!(
        client.anchor(5, u64::MAX, &root(3, 1)).await,
        Err(ChainError::Registry(RegistryError::LogOverflow {
            first_index: 5,
            size: u64::MAX
        }))
    ));
    let nonce_after = client
        .provider()
        .get_transaction_count(me)
        .await
        .expect("nonce");
    assert_eq!(nonce_before, nonce_after);
    // The log goes on after the refusals.
    let third = client.anchor(5, 1, &root(3, 1)).await.expect("batch 2");
    assert_eq!(third.batch_number, 2);

    // A client of an address without code is refused.
    assert!(matches!(
        AnchorClient::connect(&anvil.url, key(), Address::repeat_byte(9), fast(1)).await,
        Err(ChainError::NoRegistry(address)) if address == Address::repeat_byte(9)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resyncs_a_stale_nonce_from_the_chain() {
    let anvil = Anvil::start(&[]);
    let (first, deployed) = AnchorClient::deploy(&anvil.url, key(), fast(1))
        .await
        .expect("deploy");
    first.anchor(0, 1, &root(1, 1)).await.expect("batch 0");
    // The same key used by another client: the first client's local nonce falls behind.
    let other = AnchorClient::connect(&anvil.url, key(), deployed.registry, fast(1))
        .await
        .expect("connect");
    other.anchor(1, 1, &root(2, 1)).await.expect("batch 1");
    let anchored = first
        .anchor(2, 1, &root(3, 1))
        .await
        .expect("batch 2, nonce resynced");
    assert_eq!(anchored.batch_number, 2);
    assert_eq!(first.log_size(first.anchorer()).await.expect("logSize"), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waits_for_the_configured_confirmations() {
    let anvil = Anvil::start(&[]);
    // Nothing mines but the transactions: deploy at 1 confirmation, then wait for 3.
    let (_, deployed) = AnchorClient::deploy(&anvil.url, key(), fast(1))
        .await
        .expect("deploy");
    let client = AnchorClient::connect(&anvil.url, key(), deployed.registry, fast(3))
        .await
        .expect("connect");
    let client = Arc::new(client);
    let me = client.anchorer();
    let task = tokio::spawn({
        let client = Arc::clone(&client);
        async move { client.anchor(0, 4, &root(1, 4)).await }
    });
    // Automine puts the transaction in a block at once; nothing else mines.
    until("the anchor to be mined", || async {
        client.log_size(me).await.expect("logSize") == 4
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!task.is_finished(), "returned at 1 confirmation of 3");
    mine(&client, 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!task.is_finished(), "returned at 2 confirmations of 3");
    mine(&client, 1).await;
    let anchored = tokio::time::timeout(Duration::from_secs(20), task)
        .await
        .expect("returns at 3 confirmations")
        .expect("the task")
        .expect("anchored");
    let head = client.provider().get_block_number().await.expect("head");
    assert_eq!(head, anchored.block_number + 2);
    assert_eq!(
        canonical_hash(&client, anchored.block_number).await,
        Some(anchored.block_hash)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anchors_again_when_a_reorg_drops_the_transaction() {
    let anvil = Anvil::start(&[]);
    let (first, deployed) = AnchorClient::deploy(&anvil.url, key(), fast(1))
        .await
        .expect("deploy");
    first.anchor(0, 2, &root(1, 2)).await.expect("batch 0");
    let client = AnchorClient::connect(&anvil.url, key(), deployed.registry, fast(3))
        .await
        .expect("connect");
    let client = Arc::new(client);
    let me = client.anchorer();
    let snapshot = rpc(&client, "evm_snapshot", json!([])).await;
    let before = client.provider().get_block_number().await.expect("head");

    let task = tokio::spawn({
        let client = Arc::clone(&client);
        async move { client.anchor(2, 3, &root(2, 3)).await }
    });
    until("the anchor to be mined", || async {
        client.log_size(me).await.expect("logSize") == 5
    })
    .await;
    // Time for the client to read the receipt: it is then waiting for confirmations.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let dropped_block = before + 1;
    let dropped = canonical_hash(&client, dropped_block)
        .await
        .expect("the anchoring block");
    // The chain goes back to before the anchoring block: the transaction is gone.
    assert_eq!(
        rpc(&client, "evm_revert", json!([snapshot])).await,
        json!(true)
    );
    assert_eq!(client.log_size(me).await.expect("logSize"), 2);
    // A new branch grows until the client has anchored again and seen 3 confirmations.
    let mut blocks = 0;
    while !task.is_finished() {
        mine(&client, 1).await;
        blocks += 1;
        assert!(blocks < 400, "the anchor was not re-sent");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let anchored = task.await.expect("the task").expect("anchored again");
    assert!(anchored.reorgs >= 1, "{anchored:?}");
    assert_eq!(anchored.dropped, 0, "{anchored:?}");
    assert_eq!(anchored.batch_number, 1);
    assert_ne!(
        (anchored.block_number, anchored.block_hash),
        (dropped_block, dropped)
    );
    assert_eq!(
        canonical_hash(&client, anchored.block_number).await,
        Some(anchored.block_hash)
    );
    // Anchored exactly once on the canonical chain.
    assert_eq!(client.log_size(me).await.expect("logSize"), 5);
    assert_eq!(client.batch_count(me).await.expect("batchCount"), 2);
    let events = client
        .batch_anchored_events(me, 0, None)
        .await
        .expect("events");
    assert_eq!(events.len(), 2);
    assert_eq!(events[1].block_hash, anchored.block_hash);
    assert_eq!((events[1].first_index, events[1].size), (2, 3));
    // The client goes on with the next batch.
    mine(&client, 3).await;
    let next = tokio::spawn({
        let client = Arc::clone(&client);
        async move { client.anchor(5, 1, &root(3, 1)).await }
    });
    while !next.is_finished() {
        mine(&client, 1).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        next.await.expect("the task").expect("batch 2").batch_number,
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaces_a_stuck_transaction_with_higher_fees() {
    let anvil = Anvil::start(&[]);
    let (client, _) = AnchorClient::deploy(&anvil.url, key(), fast(1))
        .await
        .expect("deploy");
    let me = client.anchorer();
    let registry = client.registry();
    // Mining stops: the next transaction stays in the pool.
    rpc(&client, "evm_setAutomine", json!([false])).await;
    let client = AnchorClient::connect(
        &anvil.url,
        key(),
        registry,
        ChainConfig {
            bump_after: Duration::from_millis(200),
            bump_percent: 20,
            ..fast(1)
        },
    )
    .await
    .expect("connect");
    let client = Arc::new(client);
    let task = tokio::spawn({
        let client = Arc::clone(&client);
        async move { client.anchor(0, 2, &root(1, 2)).await }
    });
    // The pending versions of the transaction, as the pool shows them: (hash, maxFeePerGas).
    let pending = || async {
        let content = rpc(&client, "txpool_content", json!([])).await;
        let by_nonce = content["pending"]
            .as_object()
            .and_then(|senders| {
                senders
                    .iter()
                    .find(|(sender, _)| sender.parse::<Address>().ok() == Some(me))
            })
            .map(|(_, by_nonce)| by_nonce.clone())
            .unwrap_or(Value::Null);
        by_nonce
            .as_object()
            .map(|txs| {
                txs.values()
                    .map(|tx| {
                        let fee = tx["maxFeePerGas"].as_str().expect("maxFeePerGas");
                        let fee = u128::from_str_radix(fee.trim_start_matches("0x"), 16)
                            .expect("a hex fee");
                        (tx["hash"].as_str().expect("hash").to_owned(), fee)
                    })
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default()
    };
    let mut polls = 0;
    let (first_hash, first_fee) = loop {
        if let Some(first) = pending().await.first().cloned() {
            break first;
        }
        polls += 1;
        assert!(
            polls < 2000,
            "timed out waiting for the first version in the pool"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    until("a replacement with higher fees", || async {
        pending()
            .await
            .iter()
            .any(|(hash, fee)| *hash != first_hash && *fee >= first_fee * 12 / 10)
    })
    .await;
    assert!(!task.is_finished());
    rpc(&client, "evm_mine", json!([])).await;
    let anchored = tokio::time::timeout(Duration::from_secs(20), task)
        .await
        .expect("returns once mined")
        .expect("the task")
        .expect("anchored");
    assert!(anchored.replacements >= 1, "{anchored:?}");
    assert_eq!((anchored.reorgs, anchored.dropped), (0, 0), "{anchored:?}");
    assert_ne!(format!("{:#x}", anchored.tx_hash), first_hash);
    let mined = client
        .provider()
        .get_transaction_by_hash(anchored.tx_hash)
        .await
        .expect("eth_getTransactionByHash")
        .expect("the mined version");
    use alloy::consensus::Transaction as _;
    assert!(mined.max_fee_per_gas() >= first_fee * 12 / 10);
    // The replaced version was not mined as well: one batch, one nonce.
    assert_eq!(client.batch_count(me).await.expect("batchCount"), 1);
    assert_eq!(client.log_size(me).await.expect("logSize"), 2);
    let nonce = client
        .provider()
        .get_transaction_count(me)
        .await
        .expect("nonce");
    assert_eq!(nonce, 2, "one deployment and one anchor");
}

#[tokio::test]
async fn refuses_urls_it_cannot_use_without_echoing_them() {
    let refused = AnchorClient::deploy("ws://rpc.example/v3/SECRET", key(), fast(1))
        .await
        .expect_err("no websocket transport");
    assert!(matches!(&refused, ChainError::UnsupportedScheme(scheme) if scheme == "ws"));
    assert!(!refused.to_string().contains("SECRET"));
    assert!(matches!(
        AnchorClient::deploy("not a url", key(), fast(1)).await,
        Err(ChainError::InvalidUrl)
    ));
}

#[tokio::test]
async fn speaks_tls_to_https_endpoints_and_names_them_without_their_path() {
    // a listener that records the first bytes a client sends: a TLS ClientHello starts with
    // a handshake record (0x16) of TLS major version 3
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a listener");
    let port = listener.local_addr().expect("its address").port();
    let first_bytes = std::thread::spawn(move || {
        use std::io::Read as _;
        let (mut stream, _) = listener.accept().expect("a connection");
        let mut bytes = [0u8; 3];
        stream.read_exact(&mut bytes).expect("the first bytes");
        bytes
    });
    let url = format!("https://127.0.0.1:{port}/v3/SECRET");
    let error = AnchorClient::deploy(&url, key(), fast(1))
        .await
        .expect_err("no TLS server there");
    let bytes = first_bytes.join().expect("the listener");
    assert_eq!(bytes[..2], [0x16, 0x03], "a TLS handshake: {bytes:?}");
    assert!(
        matches!(&error, ChainError::Rpc { endpoint, .. } if *endpoint == format!("https://127.0.0.1:{port}")),
        "{error:?}"
    );
    assert!(!error.to_string().contains("SECRET"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_again_a_transaction_that_vanished_from_the_pool() {
    let anvil = Anvil::start(&[]);
    let (client, _) = AnchorClient::deploy(&anvil.url, key(), fast(1))
        .await
        .expect("deploy");
    let client = Arc::new(client);
    let me = client.anchorer();
    rpc(&client, "evm_setAutomine", json!([false])).await;
    let task = tokio::spawn({
        let client = Arc::clone(&client);
        async move { client.anchor(0, 3, &root(1, 3)).await }
    });
    let pool_size = || async {
        let status = rpc(&client, "txpool_status", json!([])).await;
        let pending = status["pending"].as_str().expect("pending count");
        u64::from_str_radix(pending.trim_start_matches("0x"), 16).expect("a hex count")
    };
    until("the transaction in the pool", || async {
        pool_size().await == 1
    })
    .await;
    rpc(&client, "anvil_dropAllTransactions", json!([])).await;
    assert_eq!(pool_size().await, 0);
    until("the transaction sent again", || async {
        pool_size().await == 1
    })
    .await;
    rpc(&client, "evm_mine", json!([])).await;
    let anchored = tokio::time::timeout(Duration::from_secs(20), task)
        .await
        .expect("returns once mined")
        .expect("the task")
        .expect("anchored");
    assert!(anchored.dropped >= 1, "{anchored:?}");
    assert_eq!(anchored.batch_number, 0);
    assert_eq!(client.log_size(me).await.expect("logSize"), 3);
    assert_eq!(client.batch_count(me).await.expect("batchCount"), 1);
}
