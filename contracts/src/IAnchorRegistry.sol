// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

/// @title The anchored log's registry: Merkle roots of contiguous batches, one log per anchoring account
/// @notice Every account that calls `anchor` owns one append-only log. A log is a sequence of
/// leaves numbered 0, 1, 2, ... ; the account publishes it in batches, each an RFC 9162
/// Merkle tree over the leaves `firstIndex .. firstIndex + size - 1`, and the registry keeps
/// each batch's root so that anyone can later check that a leaf was in the log.
/// A batch is accepted only if it starts exactly where the log ends: no gap, no overlap.
/// Nothing but roots and counters is stored; what a leaf is made of stays off chain.
interface IAnchorRegistry {
    /// @notice What the registry keeps of one batch.
    /// @param root RFC 9162 Merkle tree hash (SHA-256) of the batch's leaves
    /// @param firstIndex log index of the batch's first leaf
    /// @param size number of leaves in the batch (at least 1)
    /// @param blockNumber number of the block that anchored the batch
    /// @param timestamp timestamp of the block that anchored the batch (seconds since the epoch)
    struct Batch {
        bytes32 root;
        uint64 firstIndex;
        uint64 size;
        uint64 blockNumber;
        uint64 timestamp;
    }

    /// @notice A batch was appended to the log of `anchorer`.
    /// @param anchorer the account whose log grew (the caller of `anchor`)
    /// @param batchNumber the batch's number in that log (0 for the first batch)
    /// @param firstIndex log index of the batch's first leaf
    /// @param size number of leaves in the batch
    /// @param root RFC 9162 Merkle tree hash of the batch
    event BatchAnchored(
        address indexed anchorer, uint64 indexed batchNumber, uint64 firstIndex, uint64 size, bytes32 root
    );

    /// @notice The batch does not start where the caller's log ends.
    /// @param expectedFirstIndex the log's current size, where the next batch must start
    /// @param firstIndex where the refused batch starts
    error AnchorRegistryNotContiguous(uint64 expectedFirstIndex, uint64 firstIndex);

    /// @notice A batch must hold at least one leaf.
    error AnchorRegistryEmptyBatch();

    /// @notice The zero root is refused: no SHA-256 output is zero in practice, so it marks an unset value.
    error AnchorRegistryZeroRoot();

    /// @notice The batch would take the log past the largest index a uint64 holds.
    error AnchorRegistryLogOverflow(uint64 firstIndex, uint64 size);

    /// @notice The log of `anchorer` has no batch number `batchNumber`.
    error AnchorRegistryUnknownBatch(address anchorer, uint64 batchNumber);

    /// @notice The log index is not in the batch (`firstIndex <= logIndex < firstIndex + size`).
    error AnchorRegistryLeafNotInBatch(uint64 logIndex, uint64 firstIndex, uint64 size);

    /// @notice An inclusion proof's leaf index is not below its tree size (RFC 9162 section 2.1.3.2, step 1).
    error AnchorRegistryIndexOutOfRange(uint256 index, uint256 treeSize);

    /// @notice An inclusion path's length does not match its leaf index and tree size.
    /// @param expected the number of hashes the path must hold
    /// @param actual the number it holds
    error AnchorRegistryWrongPathLength(uint256 expected, uint256 actual);

    /// @notice Appends a batch to the caller's log.
    /// @dev Refuses (with the errors above) a batch that does not start at `logSize(msg.sender)`,
    /// an empty batch, a zero root, and a batch that would overflow the log's uint64 indexes.
    /// @param firstIndex log index of the batch's first leaf: must equal the log's current size
    /// @param size number of leaves in the batch
    /// @param root RFC 9162 Merkle tree hash (SHA-256) of the batch's leaves
    /// @return batchNumber the new batch's number in the caller's log
    function anchor(uint64 firstIndex, uint64 size, bytes32 root) external returns (uint64 batchNumber);

    /// @notice Number of leaves in the log of `anchorer`: where its next batch must start.
    function logSize(address anchorer) external view returns (uint64);

    /// @notice Number of batches in the log of `anchorer`; they are numbered from 0.
    function batchCount(address anchorer) external view returns (uint64);

    /// @notice Batch `batchNumber` of the log of `anchorer`; reverts with `AnchorRegistryUnknownBatch` if there is none.
    function batch(address anchorer, uint64 batchNumber) external view returns (Batch memory);

    /// @notice RFC 9162 leaf hash: SHA-256(0x00 || leafInput).
    /// @dev For the anchored log, `leafInput` is `salt || contentHash` (64 bytes).
    function hashLeaf(bytes calldata leafInput) external pure returns (bytes32);

    /// @notice Verifies an RFC 9162 inclusion proof (section 2.1.3.2) with SHA-256.
    /// @dev Reverts with `AnchorRegistryIndexOutOfRange` if `index >= treeSize` and with
    /// `AnchorRegistryWrongPathLength` if the path is longer or shorter than `index` and
    /// `treeSize` require; a well-formed proof returns whether it leads to `root`.
    /// @param leafHash the leaf's hash, SHA-256(0x00 || leaf input)
    /// @param index the leaf's 0-based index in the tree
    /// @param treeSize the number of leaves in the tree
    /// @param path sibling hashes from the leaf upwards
    /// @param root the tree's root hash
    function verifyInclusion(bytes32 leafHash, uint256 index, uint256 treeSize, bytes32[] calldata path, bytes32 root)
        external
        pure
        returns (bool);

    /// @notice Verifies that the leaf at log index `logIndex` of the log of `anchorer` is `leafHash`,
    /// with an inclusion path in batch `batchNumber` of that log.
    /// @dev Reverts like `batch` for an unknown batch, with `AnchorRegistryLeafNotInBatch` if
    /// `logIndex` is outside the batch, and like `verifyInclusion` for a malformed path.
    function verifyBatchInclusion(
        address anchorer,
        uint64 batchNumber,
        bytes32 leafHash,
        uint64 logIndex,
        bytes32[] calldata path
    ) external view returns (bool);
}
