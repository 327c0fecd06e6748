//! RFC 9162 trees and inclusion proofs: the RFC 6962 vectors (tests/data/rfc6962.json),
//! `rs_merkle` (through `Batch`) against the RFC's recursive definitions for every tree size
//! from 1 to 300 and every index, and proofs that must fail.

use anchor::{
    Batch, InclusionProof, LeafHash, NodeHash, TreeHead, VerifyError, inclusion_path_length,
    root_from_inclusion_proof, verify_inclusion,
};
use proptest::prelude::*;
use sha2::{Digest as _, Sha256};
use std::cell::RefCell;
use std::collections::HashMap;

// ---------------------------------------------------------------------------------------
// The RFC's definitions, written out plainly (RFC 9162 sections 2.1.1 and 2.1.3.1), with
// SHA-256 called directly: nothing here comes from the crate or from rs_merkle.

fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part);
    }
    hasher.finalize().into()
}

/// The largest power of two smaller than `n` (n > 1).
fn split(n: usize) -> usize {
    let mut k = 1;
    while k * 2 < n {
        k *= 2;
    }
    k
}

/// The RFC's MTH and PATH over a list of leaf inputs. MTH of a range depends only on that
/// range, so it is computed once per range (the recursion stays the RFC's).
struct Rfc<'a> {
    inputs: &'a [Vec<u8>],
    subtree_hashes: RefCell<HashMap<(usize, usize), [u8; 32]>>,
}

impl<'a> Rfc<'a> {
    fn new(inputs: &'a [Vec<u8>]) -> Self {
        Self {
            inputs,
            subtree_hashes: RefCell::default(),
        }
    }

    /// MTH(D[start:end]).
    fn mth(&self, start: usize, end: usize) -> [u8; 32] {
        if let Some(hash) = self.subtree_hashes.borrow().get(&(start, end)) {
            return *hash;
        }
        let hash = match end - start {
            0 => sha256(&[]),
            1 => sha256(&[&[0x00], &self.inputs[start]]),
            n => {
                let k = split(n);
                sha256(&[
                    &[0x01],
                    &self.mth(start, start + k),
                    &self.mth(start + k, end),
                ])
            }
        };
        self.subtree_hashes.borrow_mut().insert((start, end), hash);
        hash
    }

    /// PATH(m, D[start:end]).
    fn path(&self, m: usize, start: usize, end: usize) -> Vec<[u8; 32]> {
        let n = end - start;
        if n <= 1 {
            return Vec::new();
        }
        let k = split(n);
        if m < k {
            let mut path = self.path(m, start, start + k);
            path.push(self.mth(start + k, end));
            path
        } else {
            let mut path = self.path(m - k, start + k, end);
            path.push(self.mth(start, start + k));
            path
        }
    }
}

fn mth(inputs: &[Vec<u8>]) -> [u8; 32] {
    Rfc::new(inputs).mth(0, inputs.len())
}

// ---------------------------------------------------------------------------------------

fn leaf_hashes(inputs: &[Vec<u8>]) -> Vec<LeafHash> {
    inputs
        .iter()
        .map(|input| LeafHash::from_bytes(sha256(&[&[0x00], input])))
        .collect()
}

fn node(bytes: [u8; 32]) -> NodeHash {
    NodeHash::from_bytes(bytes)
}

/// Checks the batch over the first `size` inputs against MTH and PATH, for every index,
/// and that the crate's verifier accepts each proof.
fn check_against_the_rfc(rfc: &Rfc<'_>, size: usize) -> Result<(), TestCaseError> {
    let leaves = leaf_hashes(&rfc.inputs[..size]);
    let batch = Batch::new(&leaves).expect("a non-empty batch");
    prop_assert_eq!(batch.size(), size as u64);
    prop_assert_eq!(
        batch.root(),
        node(rfc.mth(0, size)),
        "root of {} leaves",
        size
    );
    for (index, leaf) in leaves.iter().enumerate() {
        let proof = batch.proof(index as u64).expect("index inside the batch");
        let expected: Vec<NodeHash> = rfc.path(index, 0, size).into_iter().map(node).collect();
        prop_assert_eq!(&proof.path, &expected, "path of leaf {} of {}", index, size);
        prop_assert_eq!(proof.index, index as u64);
        prop_assert_eq!(proof.tree_size, size as u64);
        prop_assert_eq!(
            inclusion_path_length(proof.index, size as u64),
            Some(expected.len())
        );
        prop_assert_eq!(verify_inclusion(leaf, &proof, &batch.tree_head()), Ok(()));
    }
    Ok(())
}

#[test]
fn every_size_from_1_to_300_and_every_index_matches_the_rfc() {
    // Distinct inputs of varying length (the RFC vectors' pattern, extended).
    let inputs: Vec<Vec<u8>> = (0..300u32)
        .map(|i| (0..i % 9).map(|j| (i * 31 + j * 7) as u8).collect())
        .collect();
    let rfc = Rfc::new(&inputs);
    for size in 1..=inputs.len() {
        check_against_the_rfc(&rfc, size)
            .unwrap_or_else(|error| panic!("tree of {size} leaves: {error}"));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Random leaves (empty, short, long, repeated), a random size up to 300.
    #[test]
    fn random_batches_match_the_rfc(
        inputs in prop::collection::vec(
            prop_oneof![
                prop::collection::vec(any::<u8>(), 0..80),
                Just(b"same".to_vec()),
            ],
            1..=300,
        )
    ) {
        check_against_the_rfc(&Rfc::new(&inputs), inputs.len())?;
    }
}

// ---------------------------------------------------------------------------------------
// The published vectors.

#[derive(serde::Deserialize)]
struct Vectors {
    leaf_inputs_hex: Vec<String>,
    root_by_tree_size_hex: Vec<String>,
    inclusion_proofs: Vec<ProofVector>,
    hash_vectors: Vec<HashVector>,
}

#[derive(serde::Deserialize)]
struct ProofVector {
    leaf_index: u64,
    tree_size: u64,
    proof_hex: Vec<String>,
}

#[derive(serde::Deserialize)]
struct HashVector {
    kind: String,
    input_ascii: Option<String>,
    left_ascii: Option<String>,
    right_ascii: Option<String>,
    hash_hex: String,
}

fn vectors() -> Vectors {
    serde_json::from_str(include_str!("data/rfc6962.json")).expect("tests/data/rfc6962.json")
}

fn vector_inputs(vectors: &Vectors) -> Vec<Vec<u8>> {
    vectors
        .leaf_inputs_hex
        .iter()
        .map(|text| hex::decode(text).expect("hex"))
        .collect()
}

fn hash(text: &str) -> NodeHash {
    NodeHash::from_hex(text).expect("a 32-byte hex hash")
}

#[test]
fn rfc_6962_roots_for_every_size() {
    let vectors = vectors();
    let inputs = vector_inputs(&vectors);
    assert_eq!(vectors.root_by_tree_size_hex.len(), inputs.len() + 1);
    // Size 0 is the empty tree, which a batch never is; the plain MTH covers it.
    assert_eq!(node(mth(&[])), hash(&vectors.root_by_tree_size_hex[0]));
    for size in 1..=inputs.len() {
        let batch = Batch::new(&leaf_hashes(&inputs[..size])).expect("non-empty");
        assert_eq!(
            batch.root(),
            hash(&vectors.root_by_tree_size_hex[size]),
            "size {size}"
        );
        assert_eq!(node(mth(&inputs[..size])), batch.root(), "size {size}");
    }
}

#[test]
fn rfc_6962_inclusion_proofs() {
    let vectors = vectors();
    let inputs = vector_inputs(&vectors);
    assert_eq!(vectors.inclusion_proofs.len(), 4);
    for vector in &vectors.inclusion_proofs {
        let size = vector.tree_size as usize;
        let batch = Batch::new(&leaf_hashes(&inputs[..size])).expect("non-empty");
        let expected = InclusionProof {
            index: vector.leaf_index,
            tree_size: vector.tree_size,
            path: vector.proof_hex.iter().map(|text| hash(text)).collect(),
        };
        assert_eq!(batch.proof(vector.leaf_index).as_ref(), Ok(&expected));
        let leaf = LeafHash::of_input(&inputs[vector.leaf_index as usize]);
        let head = TreeHead {
            tree_size: vector.tree_size,
            root: hash(&vectors.root_by_tree_size_hex[size]),
        };
        assert_eq!(verify_inclusion(&leaf, &expected, &head), Ok(()));
    }
}

#[test]
fn rfc_6962_leaf_and_node_hashes() {
    for vector in vectors().hash_vectors {
        let computed = match vector.kind.as_str() {
            "leaf" => NodeHash::from(LeafHash::of_input(
                vector.input_ascii.as_deref().expect("input").as_bytes(),
            )),
            "node" => {
                // The vector's children are ASCII strings, not 32-byte hashes: hash as the
                // RFC does, 0x01 || left || right.
                let left = vector.left_ascii.as_deref().expect("left");
                let right = vector.right_ascii.as_deref().expect("right");
                node(sha256(&[
                    &[anchor::NODE_PREFIX],
                    left.as_bytes(),
                    right.as_bytes(),
                ]))
            }
            other => panic!("unknown vector kind {other}"),
        };
        assert_eq!(computed, hash(&vector.hash_hex), "{}", vector.kind);
    }
    assert_eq!(anchor::LEAF_PREFIX, 0x00);
    assert_eq!(anchor::NODE_PREFIX, 0x01);
}

// ---------------------------------------------------------------------------------------
// Proofs that must fail, each with the reason.

/// The RFC vectors' tree of 8 leaves and the proof of leaf 5.
fn vector_case() -> (LeafHash, InclusionProof, TreeHead) {
    let vectors = vectors();
    let inputs = vector_inputs(&vectors);
    let batch = Batch::new(&leaf_hashes(&inputs)).expect("eight leaves");
    let proof = batch.proof(5).expect("leaf 5");
    (LeafHash::of_input(&inputs[5]), proof, batch.tree_head())
}

fn flip(bytes: &[u8; 32], position: usize) -> [u8; 32] {
    let mut changed = *bytes;
    changed[position] ^= 0x01;
    changed
}

fn is_root_mismatch(result: &Result<(), VerifyError>) -> bool {
    matches!(result, Err(VerifyError::RootMismatch { .. }))
}

#[test]
fn one_byte_changed_in_the_leaf_fails_with_a_root_mismatch() {
    let (leaf, proof, head) = vector_case();
    assert_eq!(verify_inclusion(&leaf, &proof, &head), Ok(()));
    for position in 0..32 {
        let changed = LeafHash::from_bytes(flip(leaf.as_bytes(), position));
        let result = verify_inclusion(&changed, &proof, &head);
        assert!(is_root_mismatch(&result), "byte {position}: {result:?}");
    }
    // A changed leaf input (the resource, or its salt) changes the leaf hash.
    let vectors = vectors();
    let mut input = vector_inputs(&vectors)[5].clone();
    input[0] ^= 0x80;
    let result = verify_inclusion(&LeafHash::of_input(&input), &proof, &head);
    assert!(is_root_mismatch(&result), "{result:?}");
}

#[test]
fn one_byte_changed_in_a_path_element_fails_with_a_root_mismatch() {
    let (leaf, proof, head) = vector_case();
    for element in 0..proof.path.len() {
        for position in 0..32 {
            let mut changed = proof.clone();
            changed.path[element] = node(flip(proof.path[element].as_bytes(), position));
            let result = verify_inclusion(&leaf, &changed, &head);
            assert!(
                is_root_mismatch(&result),
                "element {element}, byte {position}: {result:?}"
            );
        }
    }
}

#[test]
fn one_byte_changed_in_the_root_fails_with_a_root_mismatch() {
    let (leaf, proof, head) = vector_case();
    for position in 0..32 {
        let changed = TreeHead {
            root: node(flip(head.root.as_bytes(), position)),
            ..head
        };
        assert_eq!(
            verify_inclusion(&leaf, &proof, &changed),
            Err(VerifyError::RootMismatch {
                computed: head.root,
                expected: changed.root,
            }),
            "byte {position}"
        );
    }
}

#[test]
fn a_changed_index_fails_with_the_right_reason() {
    let (leaf, proof, head) = vector_case();
    let with_index = |index: u64| {
        verify_inclusion(
            &leaf,
            &InclusionProof {
                index,
                ..proof.clone()
            },
            &head,
        )
    };
    // Every other index inside the tree: leaf 5's path has 3 hashes, as every leaf of a
    // full tree of 8, so the path leads elsewhere.
    for index in (0..8).filter(|index| *index != 5) {
        let result = with_index(index);
        assert!(is_root_mismatch(&result), "index {index}: {result:?}");
    }
    // One byte changed (low byte 5 -> 13, second byte 5 -> 5 + 256), and far outside.
    for index in [13, 5 + 256, u64::MAX] {
        assert_eq!(
            with_index(index),
            Err(VerifyError::IndexOutOfRange {
                index,
                tree_size: 8
            }),
            "index {index}"
        );
    }
}

#[test]
fn a_changed_size_fails_with_the_right_reason() {
    let (leaf, proof, head) = vector_case();
    // Against the anchored head, any other size in the proof is refused before hashing.
    for tree_size in [7, 9, 8 + 256, 0] {
        let changed = InclusionProof {
            tree_size,
            ..proof.clone()
        };
        assert_eq!(
            verify_inclusion(&leaf, &changed, &head),
            Err(VerifyError::TreeSizeMismatch {
                proof: tree_size,
                anchored: 8
            }),
            "size {tree_size}"
        );
    }
    // When the trusted head itself has another size, the path must fit that size.
    let nine = TreeHead {
        tree_size: 9,
        ..head
    };
    let proof_for_nine = InclusionProof {
        tree_size: 9,
        ..proof.clone()
    };
    assert_eq!(
        verify_inclusion(&leaf, &proof_for_nine, &nine),
        Err(VerifyError::WrongPathLength {
            index: 5,
            tree_size: 9,
            expected: 4,
            actual: 3
        })
    );
    let five = TreeHead {
        tree_size: 5,
        ..head
    };
    let proof_for_five = InclusionProof {
        tree_size: 5,
        ..proof
    };
    assert_eq!(
        verify_inclusion(&leaf, &proof_for_five, &five),
        Err(VerifyError::IndexOutOfRange {
            index: 5,
            tree_size: 5
        })
    );
}

/// Why the size must come from the trusted record: leaf 5 has the same path shape in trees
/// of 7 and 8 leaves, so a proof from the tree of 8 leads to the same root under size 7.
#[test]
fn the_path_alone_does_not_bind_the_size() {
    let (leaf, proof, head) = vector_case();
    let claimed_seven = InclusionProof {
        tree_size: 7,
        ..proof
    };
    assert_eq!(
        root_from_inclusion_proof(&leaf, &claimed_seven),
        Ok(head.root)
    );
    assert!(matches!(
        verify_inclusion(&leaf, &claimed_seven, &head),
        Err(VerifyError::TreeSizeMismatch { .. })
    ));
}

#[test]
fn a_path_of_the_wrong_length_fails() {
    let (leaf, proof, head) = vector_case();
    let mut longer = proof.clone();
    longer.path.push(proof.path[0]);
    let mut shorter = proof.clone();
    shorter.path.pop();
    let empty = InclusionProof {
        path: Vec::new(),
        ..proof
    };
    for (changed, actual) in [(longer, 4), (shorter, 2), (empty, 0)] {
        assert_eq!(
            verify_inclusion(&leaf, &changed, &head),
            Err(VerifyError::WrongPathLength {
                index: 5,
                tree_size: 8,
                expected: 3,
                actual
            })
        );
    }
    // A one-leaf tree has an empty path, and nothing else fits.
    let single = Batch::new(&[leaf]).expect("one leaf");
    let mut padded = single.proof(0).expect("leaf 0");
    assert_eq!(
        verify_inclusion(&leaf, &padded, &single.tree_head()),
        Ok(())
    );
    padded.path.push(node(*leaf.as_bytes()));
    assert!(matches!(
        verify_inclusion(&leaf, &padded, &single.tree_head()),
        Err(VerifyError::WrongPathLength {
            expected: 0,
            actual: 1,
            ..
        })
    ));
}

/// The rs-merkle pull request 52 attack on multi-proofs (the same index twice, one copy
/// carrying a forged leaf) has no counterpart here: a proof names one index and the leaf is
/// given separately, so a forged leaf under a genuine proof is a plain root mismatch.
#[test]
fn a_forged_leaf_under_a_genuine_proof_fails() {
    let (_, proof, head) = vector_case();
    let forged = LeafHash::of_input(b"forged");
    assert!(is_root_mismatch(&verify_inclusion(&forged, &proof, &head)));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// In random trees, any single changed byte of the leaf, of a path element or of the
    /// root fails with a root mismatch.
    #[test]
    fn random_single_byte_changes_fail(
        size in 1usize..=300,
        index_seed in any::<prop::sample::Index>(),
        target in 0usize..3,
        element_seed in any::<prop::sample::Index>(),
        position in 0usize..32,
        bit in 0u8..8,
    ) {
        let inputs: Vec<Vec<u8>> = (0..size).map(|i| (i as u32).to_be_bytes().to_vec()).collect();
        let leaves = leaf_hashes(&inputs);
        let batch = Batch::new(&leaves).expect("non-empty");
        let index = index_seed.index(size);
        let mut leaf = leaves[index];
        let mut proof = batch.proof(index as u64).expect("inside");
        let mut head = batch.tree_head();
        let change = |bytes: &[u8; 32]| {
            let mut changed = *bytes;
            changed[position] ^= 1 << bit;
            changed
        };
        match target {
            0 => leaf = LeafHash::from_bytes(change(leaf.as_bytes())),
            1 if !proof.path.is_empty() => {
                let element = element_seed.index(proof.path.len());
                proof.path[element] = node(change(proof.path[element].as_bytes()));
            }
            _ => head.root = node(change(head.root.as_bytes())),
        }
        let result = verify_inclusion(&leaf, &proof, &head);
        prop_assert!(is_root_mismatch(&result), "{:?}", result);
    }
}
