//! The anchored log's costs: content hash, leaf hashing against raw SHA-256, a batch of
//! 100,000 leaves, and one proof's generation and verification.
//!
//! `cargo bench -p anchor --bench anchor`; the figures are in BENCHMARKS.md.

use std::hint::black_box;

use anchor::{Batch, ContentHash, Leaf, LeafHash, Salt, content_hash, verify_inclusion};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use json_syntax::Parse as _;
use sha2::{Digest as _, Sha256};

const LEAVES: usize = 100_000;

/// Leaves with distinct salts and content hashes (fixed, so runs compare).
fn leaves() -> Vec<Leaf> {
    (0..LEAVES as u64)
        .map(|i| {
            let mut salt = [0u8; 32];
            salt[..8].copy_from_slice(&i.to_le_bytes());
            let content: [u8; 32] = Sha256::digest(i.to_be_bytes()).into();
            Leaf::new(Salt::from_bytes(salt), ContentHash::from_bytes(content))
        })
        .collect()
}

/// A laboratory Observation of 1.4 KB, as a gateway would store it.
const OBSERVATION: &str = r#"{
  "resourceType": "Observation",
  "id": "f001",
  "meta": {"versionId": "3", "lastUpdated": "2024-05-01T10:12:31.123Z"},
  "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">Glucose 6.3 mmol/l, high</div>"},
  "identifier": [{"use": "official", "system": "http://www.bmc.nl/zorgportal/identifiers/observations", "value": "6323"}],
  "status": "final",
  "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory", "display": "Laboratory"}]}],
  "code": {"coding": [{"system": "http://loinc.org", "code": "15074-8", "display": "Glucose [Moles/volume] in Blood"}]},
  "subject": {"reference": "Patient/f001", "display": "P. van de Heuvel"},
  "effectivePeriod": {"start": "2013-04-02T09:30:10+01:00"},
  "issued": "2013-04-03T15:30:10.000+01:00",
  "performer": [{"reference": "Practitioner/f005", "display": "A. Langeveld"}],
  "valueQuantity": {"value": 6.30, "unit": "mmol/l", "system": "http://unitsofmeasure.org", "code": "mmol/L"},
  "interpretation": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation", "code": "H", "display": "High"}]}],
  "referenceRange": [{
    "low": {"value": 3.1, "unit": "mmol/l", "system": "http://unitsofmeasure.org", "code": "mmol/L"},
    "high": {"value": 6.2, "unit": "mmol/l", "system": "http://unitsofmeasure.org", "code": "mmol/L"}
  }]
}"#;

fn content(c: &mut Criterion) {
    let (observation, _) =
        json_syntax::Value::parse_str(OBSERVATION).expect("the benchmark resource parses");
    let mut group = c.benchmark_group("content_hash");
    group.throughput(Throughput::Bytes(OBSERVATION.len() as u64));
    group.bench_function("observation_1.4KB", |b| {
        b.iter(|| content_hash(black_box(&observation)))
    });
    group.finish();
}

fn leaf_hashing(c: &mut Criterion) {
    let leaves = leaves();
    let inputs: Vec<[u8; 65]> = leaves
        .iter()
        .map(|leaf| {
            let mut input = [0u8; 65];
            input[1..].copy_from_slice(&leaf.input());
            input
        })
        .collect();
    let mut group = c.benchmark_group("leaf_hashing_100k");
    group.throughput(Throughput::Elements(LEAVES as u64));
    group.sample_size(20);
    group.bench_function("Leaf::hash", |b| {
        b.iter(|| {
            black_box(&leaves)
                .iter()
                .map(Leaf::hash)
                .collect::<Vec<LeafHash>>()
        })
    });
    group.bench_function("raw_sha256_of_the_same_65_bytes", |b| {
        b.iter(|| {
            black_box(&inputs)
                .iter()
                .map(|input| <[u8; 32]>::from(Sha256::digest(input)))
                .collect::<Vec<[u8; 32]>>()
        })
    });
    group.finish();

    let kilobyte = vec![0x5au8; 1024];
    let mut group = c.benchmark_group("sha256");
    group.throughput(Throughput::Bytes(1024));
    group.bench_function("1KB", |b| b.iter(|| Sha256::digest(black_box(&kilobyte))));
    group.finish();
}

fn tree(c: &mut Criterion) {
    let leaf_hashes: Vec<LeafHash> = leaves().iter().map(Leaf::hash).collect();
    let mut group = c.benchmark_group("batch_100k");
    group.sample_size(10);
    group.bench_function("build", |b| {
        b.iter(|| Batch::new(black_box(&leaf_hashes)).map(|batch| batch.root()))
    });
    group.finish();

    let batch = Batch::new(&leaf_hashes).expect("100,000 leaves");
    let head = batch.tree_head();
    let index = 61_234u64;
    let proof = batch.proof(index).expect("inside the batch");
    let leaf = leaf_hashes[index as usize];
    let mut group = c.benchmark_group("proof_100k");
    group.bench_function("generate", |b| b.iter(|| batch.proof(black_box(index))));
    group.bench_function("verify", |b| {
        b.iter(|| verify_inclusion(black_box(&leaf), black_box(&proof), black_box(&head)))
    });
    group.bench_function("generate_and_verify_each_of_1000", |b| {
        b.iter_batched(
            || (0..1000u64).map(|i| i * 97).collect::<Vec<u64>>(),
            |indexes| {
                for index in indexes {
                    let proof = batch.proof(index).expect("inside the batch");
                    verify_inclusion(&leaf_hashes[index as usize], &proof, &head)
                        .expect("a genuine proof verifies");
                }
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, content, leaf_hashing, tree);
criterion_main!(benches);
