// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

import {IAnchorRegistry} from "./IAnchorRegistry.sol";

/// @title AnchorRegistry
/// @notice One registry serves any number of logs, each keyed by the account that anchors it
/// (see contracts/README.md for why). No owner, no roles, no upgrades: once deployed, the rules
/// below are all there is.
contract AnchorRegistry is IAnchorRegistry {
    /// @dev Where a log ends and how many batches it has; both share one storage slot.
    struct LogHead {
        uint64 size;
        uint64 batchCount;
    }

    mapping(address anchorer => LogHead) private _logs;

    /// @dev Two storage slots per batch, the least that holds a 256-bit root and where and
    /// when the batch was anchored: the root, then firstIndex, size, blockNumber and timestamp
    /// packed into the second.
    mapping(address anchorer => mapping(uint64 batchNumber => Batch)) private _batches;

    /// @inheritdoc IAnchorRegistry
    function anchor(uint64 firstIndex, uint64 size, bytes32 root) external returns (uint64 batchNumber) {
        LogHead memory head = _logs[msg.sender];
        if (firstIndex != head.size) revert AnchorRegistryNotContiguous(head.size, firstIndex);
        if (size == 0) revert AnchorRegistryEmptyBatch();
        if (root == bytes32(0)) revert AnchorRegistryZeroRoot();
        if (uint256(firstIndex) + size > type(uint64).max) revert AnchorRegistryLogOverflow(firstIndex, size);

        // Every batch holds at least one leaf, so batchCount <= size <= type(uint64).max: the
        // batch number cannot overflow either.
        batchNumber = head.batchCount;
        _batches[msg.sender][batchNumber] = Batch({
            root: root,
            firstIndex: firstIndex,
            size: size,
            blockNumber: uint64(block.number),
            timestamp: uint64(block.timestamp)
        });
        _logs[msg.sender] = LogHead({size: firstIndex + size, batchCount: batchNumber + 1});
        emit BatchAnchored(msg.sender, batchNumber, firstIndex, size, root);
    }

    /// @inheritdoc IAnchorRegistry
    function logSize(address anchorer) external view returns (uint64) {
        return _logs[anchorer].size;
    }

    /// @inheritdoc IAnchorRegistry
    function batchCount(address anchorer) external view returns (uint64) {
        return _logs[anchorer].batchCount;
    }

    /// @inheritdoc IAnchorRegistry
    function batch(address anchorer, uint64 batchNumber) public view returns (Batch memory) {
        if (batchNumber >= _logs[anchorer].batchCount) revert AnchorRegistryUnknownBatch(anchorer, batchNumber);
        return _batches[anchorer][batchNumber];
    }

    /// @inheritdoc IAnchorRegistry
    function hashLeaf(bytes calldata leafInput) external pure returns (bytes32) {
        return sha256(abi.encodePacked(bytes1(0x00), leafInput));
    }

    /// @inheritdoc IAnchorRegistry
    function verifyInclusion(bytes32 leafHash, uint256 index, uint256 treeSize, bytes32[] calldata path, bytes32 root)
        public
        pure
        returns (bool)
    {
        return _rootFromInclusionPath(leafHash, index, treeSize, path) == root;
    }

    /// @inheritdoc IAnchorRegistry
    function verifyBatchInclusion(
        address anchorer,
        uint64 batchNumber,
        bytes32 leafHash,
        uint64 logIndex,
        bytes32[] calldata path
    ) external view returns (bool) {
        Batch memory anchored = batch(anchorer, batchNumber);
        if (logIndex < anchored.firstIndex || logIndex - anchored.firstIndex >= anchored.size) {
            revert AnchorRegistryLeafNotInBatch(logIndex, anchored.firstIndex, anchored.size);
        }
        return verifyInclusion(leafHash, logIndex - anchored.firstIndex, anchored.size, path, anchored.root);
    }

    /// @dev RFC 9162 section 2.1.3.2, step by step: the root that `path` leads to from the
    /// leaf `leafHash` at `index` in a tree of `treeSize` leaves. `fn` is the index of the
    /// node reached so far, `sn` the index of the last node on its level.
    function _rootFromInclusionPath(bytes32 leafHash, uint256 index, uint256 treeSize, bytes32[] calldata path)
        private
        pure
        returns (bytes32 r)
    {
        // 1. the leaf index must be below the tree size
        if (index >= treeSize) revert AnchorRegistryIndexOutOfRange(index, treeSize);
        // 2., 3.
        uint256 fn = index;
        uint256 sn = treeSize - 1;
        r = leafHash;
        // 4.
        for (uint256 i = 0; i < path.length; ++i) {
            // a. the root is reached but the path goes on
            if (sn == 0) revert AnchorRegistryWrongPathLength(_inclusionPathLength(index, treeSize), path.length);
            // b. the node is a right child, or the last node of its level (promoted, no right sibling)
            if (fn & 1 == 1 || fn == sn) {
                r = _hashChildren(path[i], r);
                // climb past the levels where the node is promoted unchanged
                while (fn & 1 == 0 && fn != 0) {
                    fn >>= 1;
                    sn >>= 1;
                }
            } else {
                r = _hashChildren(r, path[i]);
            }
            // c.
            fn >>= 1;
            sn >>= 1;
        }
        // 5. the path must end at the root (the comparison with the root is the caller's)
        if (sn != 0) revert AnchorRegistryWrongPathLength(_inclusionPathLength(index, treeSize), path.length);
    }

    /// @dev RFC 9162 node hash: SHA-256(0x01 || left || right).
    function _hashChildren(bytes32 left, bytes32 right) private pure returns (bytes32) {
        return sha256(abi.encodePacked(bytes1(0x01), left, right));
    }

    /// @dev The length of every inclusion path for leaf `index` (< treeSize) of a tree of
    /// `treeSize` leaves: one sibling per level below the level where the paths to `index` and
    /// to the last leaf meet (the bit length of `index ^ (treeSize - 1)`), and above it one per
    /// level where the node, on the tree's right border, is a right child (a set bit of the
    /// index there); where it is a left child on the border it has no sibling and is promoted.
    /// Only used to say what was expected when a path's length is wrong.
    function _inclusionPathLength(uint256 index, uint256 treeSize) private pure returns (uint256 length) {
        uint256 diverging = index ^ (treeSize - 1);
        uint256 inner = 0;
        while (diverging != 0) {
            ++inner;
            diverging >>= 1;
        }
        length = inner;
        for (uint256 border = index >> inner; border != 0; border >>= 1) {
            length += border & 1;
        }
    }
}
