//! RFC 9162 Merkle trees over a batch of leaf hashes, built with `rs_merkle`, and their
//! inclusion proofs.
//!
//! RFC 9162 section 2.1.1 splits a list of `n` leaves at the largest power of two below
//! `n`. `rs_merkle` instead pairs nodes level by level and promotes the last node of an odd
//! level unchanged; with leaves hashed as `SHA-256(0x00 || input)` beforehand and inner
//! nodes as `SHA-256(0x01 || left || right)` (the hasher below), both give the same root and
//! the same audit paths for every size. The crate's tests check this against the RFC 6962
//! vectors and, for every size from 1 to 300 and every index, against a direct
//! implementation of the RFC's recursive definitions.

use rs_merkle::MerkleTree;
use sha2::{Digest as _, Sha256};

use crate::error::BatchError;
use crate::{LeafHash, NodeHash};

/// The RFC 9162 domain separation prefix of an inner node hash.
pub const NODE_PREFIX: u8 = 0x01;

impl NodeHash {
    /// An inner node of an RFC 9162 tree: `SHA-256(0x01 || left || right)`.
    pub fn of_children(left: &NodeHash, right: &NodeHash) -> NodeHash {
        NodeHash::from_bytes(node_hash(left.as_bytes(), right.as_bytes()))
    }
}

fn node_hash(left: &[u8; 32], right: &[u8; 32]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update([NODE_PREFIX]);
    hasher.update(left);
    hasher.update(right);
    hasher.finalize().into()
}

/// The `rs_merkle` hasher for RFC 9162 trees whose leaves are already leaf hashes.
#[derive(Debug, Clone, Copy)]
struct Rfc9162;

impl rs_merkle::Hasher for Rfc9162 {
    type Hash = [u8; 32];

    /// The RFC 9162 leaf hash. `rs_merkle` calls `hash` only from the default
    /// `concat_and_hash`, which is replaced below; the leaves handed to it are hashed already.
    fn hash(data: &[u8]) -> [u8; 32] {
        *LeafHash::of_input(data).as_bytes()
    }

    /// Two children make an inner node with the 0x01 prefix; a node without a right
    /// sibling (the last of an odd level) is promoted unchanged, which is what RFC 9162's
    /// split at the largest power of two amounts to.
    fn concat_and_hash(left: &[u8; 32], right: Option<&[u8; 32]>) -> [u8; 32] {
        match right {
            Some(right) => node_hash(left, right),
            None => *left,
        }
    }
}

/// A sealed batch of the log: the RFC 9162 tree over its leaf hashes, in log order.
pub struct Batch {
    tree: MerkleTree<Rfc9162>,
    size: u64,
    root: NodeHash,
}

impl std::fmt::Debug for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch")
            .field("size", &self.size)
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

impl Batch {
    /// Builds the tree over `leaves` (at least one; leaf `i` of the batch is
    /// `leaves[i]`).
    pub fn new(leaves: &[LeafHash]) -> Result<Self, BatchError> {
        let hashes: Vec<[u8; 32]> = leaves.iter().map(|leaf| *leaf.as_bytes()).collect();
        let tree = MerkleTree::<Rfc9162>::from_leaves(&hashes);
        let root = NodeHash::from_bytes(tree.root().ok_or(BatchError::Empty)?);
        Ok(Self {
            tree,
            size: leaves.len() as u64,
            root,
        })
    }

    /// The number of leaves: the tree size of every proof from this batch.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The RFC 9162 root, `MTH` of the leaves (the leaf hash itself for one leaf).
    pub fn root(&self) -> NodeHash {
        self.root
    }

    /// The size and the root: what the anchor records for this batch.
    pub fn tree_head(&self) -> TreeHead {
        TreeHead {
            tree_size: self.size,
            root: self.root,
        }
    }

    /// The inclusion proof of the leaf at `index` (0-based, inside the batch): its audit
    /// path in RFC 9162 order, from the leaf's sibling up to the child of the root.
    pub fn proof(&self, index: u64) -> Result<InclusionProof, BatchError> {
        let out_of_range = BatchError::IndexOutOfRange {
            index,
            size: self.size,
        };
        if index >= self.size {
            return Err(out_of_range);
        }
        let position = usize::try_from(index).map_err(|_| out_of_range)?;
        let path = self
            .tree
            .proof(&[position])
            .proof_hashes()
            .iter()
            .map(|hash| NodeHash::from_bytes(*hash))
            .collect();
        Ok(InclusionProof {
            index,
            tree_size: self.size,
            path,
        })
    }
}

/// The size and root of a tree, as a trusted record holds them (RFC 9162's tree head; here
/// the batch as anchored on chain).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TreeHead {
    /// The number of leaves.
    pub tree_size: u64,
    /// The root hash.
    pub root: NodeHash,
}

/// An RFC 9162 inclusion proof of one leaf (the `inclusion_proof_v2` fields).
///
/// Its `tree_size` is a claim, checked against the trusted [`TreeHead`]: the path alone binds
/// the size only loosely (leaf 5 has the same path shape in trees of 7 and 8 leaves, so the
/// same path leads to the same root under both sizes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InclusionProof {
    /// The leaf's 0-based index in the tree.
    pub index: u64,
    /// The number of leaves in the tree.
    pub tree_size: u64,
    /// The audit path, from the leaf's sibling upwards.
    pub path: Vec<NodeHash>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaves(count: u8) -> Vec<LeafHash> {
        (0..count).map(|i| LeafHash::of_input(&[i])).collect()
    }

    #[test]
    fn an_empty_batch_is_refused() {
        assert_eq!(
            Batch::new(&[]).map(|batch| batch.size()),
            Err(BatchError::Empty)
        );
    }

    #[test]
    fn one_leaf_is_its_own_root_with_an_empty_path() {
        let batch = Batch::new(&leaves(1)).expect("one leaf");
        assert_eq!(batch.root(), NodeHash::from(leaves(1)[0]));
        assert_eq!(
            batch.proof(0),
            Ok(InclusionProof {
                index: 0,
                tree_size: 1,
                path: vec![]
            })
        );
    }

    #[test]
    fn a_proof_outside_the_batch_is_refused() {
        let batch = Batch::new(&leaves(5)).expect("five leaves");
        assert_eq!(
            batch.proof(5),
            Err(BatchError::IndexOutOfRange { index: 5, size: 5 })
        );
        assert!(batch.proof(u64::MAX).is_err());
    }

    #[test]
    fn three_leaves_follow_the_rfc_split() {
        // MTH(d0, d1, d2) = node(node(l0, l1), l2): k = 2 splits the list.
        let l = leaves(3);
        let batch = Batch::new(&l).expect("three leaves");
        let left = NodeHash::of_children(&l[0].into(), &l[1].into());
        assert_eq!(batch.root(), NodeHash::of_children(&left, &l[2].into()));
        assert_eq!(batch.proof(2).map(|proof| proof.path), Ok(vec![left]));
        assert_eq!(
            batch.proof(0).map(|proof| proof.path),
            Ok(vec![l[1].into(), l[2].into()])
        );
    }
}
