//! Inclusion proof verification, written from RFC 9162 section 2.1.3.2.
//!
//! This is the code that checks proofs from outside (an auditor's, a patient's), so it does
//! not use `rs_merkle`'s verifier: that one checks multi-proofs and accepts a repeated leaf
//! index carrying a forged leaf (rs-merkle pull request 52). Here one leaf, one index, one
//! path: the index must be below the tree size, the path must have exactly the length that
//! the index and the size fix, and hashing up the path must end at the expected root.

use crate::error::VerifyError;
use crate::tree::{InclusionProof, TreeHead};
use crate::{LeafHash, NodeHash};

/// Checks that `proof` leads from `leaf` to the root of the trusted tree head `anchored`
/// (the batch's size and root as recorded on chain, never as the proof's sender says).
///
/// Fails, in this order, when the proof is for another tree size, when its index is not
/// below the size, when its path has the wrong length, or when the path leads elsewhere.
pub fn verify_inclusion(
    leaf: &LeafHash,
    proof: &InclusionProof,
    anchored: &TreeHead,
) -> Result<(), VerifyError> {
    if proof.tree_size != anchored.tree_size {
        return Err(VerifyError::TreeSizeMismatch {
            proof: proof.tree_size,
            anchored: anchored.tree_size,
        });
    }
    let computed = root_from_inclusion_proof(leaf, proof)?;
    if computed == anchored.root {
        Ok(())
    } else {
        Err(VerifyError::RootMismatch {
            computed,
            expected: anchored.root,
        })
    }
}

/// The root that `proof` leads to from `leaf` (RFC 9162 section 2.1.3.2, steps 1 to 4),
/// after checking that the index is inside the tree and the path has the right length.
pub fn root_from_inclusion_proof(
    leaf: &LeafHash,
    proof: &InclusionProof,
) -> Result<NodeHash, VerifyError> {
    let InclusionProof {
        index,
        tree_size,
        ref path,
    } = *proof;
    let expected = inclusion_path_length(index, tree_size)
        .ok_or(VerifyError::IndexOutOfRange { index, tree_size })?;
    let wrong_length = VerifyError::WrongPathLength {
        index,
        tree_size,
        expected,
        actual: path.len(),
    };
    if path.len() != expected {
        return Err(wrong_length);
    }

    // Steps 2 and 3.
    let (mut f_n, mut s_n) = (index, tree_size - 1);
    let mut r = NodeHash::from(*leaf);
    // Step 4.
    for p in path {
        // 4a. (Unreachable after the length check; kept so the loop stands on its own.)
        if s_n == 0 {
            return Err(wrong_length);
        }
        if f_n & 1 == 1 || f_n == s_n {
            // 4b: p is a left sibling.
            r = NodeHash::of_children(p, &r);
            // Skip the levels where this node has no sibling (the right edge of the tree).
            while f_n & 1 == 0 && f_n != 0 {
                f_n >>= 1;
                s_n >>= 1;
            }
        } else {
            // Otherwise p is a right sibling.
            r = NodeHash::of_children(&r, p);
        }
        // 4c.
        f_n >>= 1;
        s_n >>= 1;
    }
    // Step 5, first half (unreachable after the length check, as 4a).
    if s_n != 0 {
        return Err(wrong_length);
    }
    Ok(r)
}

/// The length of the audit path of leaf `index` in a tree of `tree_size` leaves, or `None`
/// when the index is not below the size.
///
/// The path has one hash per level where the leaf's ancestor has a sibling: one for each
/// level below the point where the paths to the leaf and to the last leaf part
/// (the bit length of `index XOR (tree_size - 1)`), plus one for each left subtree joined
/// above that point (the set bits of `index` above it).
pub fn inclusion_path_length(index: u64, tree_size: u64) -> Option<usize> {
    if index >= tree_size {
        return None;
    }
    let inner = u64::BITS - (index ^ (tree_size - 1)).leading_zeros();
    let above = index.checked_shr(inner).unwrap_or(0).count_ones();
    usize::try_from(inner + above).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The path length by running the RFC's loop without hashing, to check the formula.
    fn rfc_loop_length(index: u64, tree_size: u64) -> usize {
        let (mut f_n, mut s_n, mut length) = (index, tree_size - 1, 0);
        while s_n != 0 {
            if f_n & 1 == 1 || f_n == s_n {
                while f_n & 1 == 0 && f_n != 0 {
                    f_n >>= 1;
                    s_n >>= 1;
                }
            }
            f_n >>= 1;
            s_n >>= 1;
            length += 1;
        }
        length
    }

    #[test]
    fn the_path_length_formula_agrees_with_the_rfc_loop() {
        for tree_size in 1..=1100u64 {
            for index in 0..tree_size {
                assert_eq!(
                    inclusion_path_length(index, tree_size),
                    Some(rfc_loop_length(index, tree_size)),
                    "leaf {index} of {tree_size}"
                );
            }
            assert_eq!(inclusion_path_length(tree_size, tree_size), None);
        }
        for (index, tree_size) in [
            (0, u64::MAX),
            (u64::MAX - 1, u64::MAX),
            (1 << 63, u64::MAX),
            ((1 << 63) - 1, 1 << 63),
        ] {
            assert_eq!(
                inclusion_path_length(index, tree_size),
                Some(rfc_loop_length(index, tree_size)),
                "leaf {index} of {tree_size}"
            );
        }
        assert_eq!(inclusion_path_length(0, 0), None);
    }

    #[test]
    fn an_empty_tree_proves_nothing() {
        let proof = InclusionProof {
            index: 0,
            tree_size: 0,
            path: vec![],
        };
        let leaf = LeafHash::of_input(b"");
        assert_eq!(
            root_from_inclusion_proof(&leaf, &proof),
            Err(VerifyError::IndexOutOfRange {
                index: 0,
                tree_size: 0
            })
        );
    }
}
