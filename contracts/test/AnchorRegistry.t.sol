// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

import {AnchorRegistry} from "../src/AnchorRegistry.sol";
import {IAnchorRegistry} from "../src/IAnchorRegistry.sol";
import {ReferenceMerkleTree} from "./utils/ReferenceMerkleTree.sol";
import {TestBase} from "./utils/TestBase.sol";

contract AnchorRegistryTest is TestBase {
    AnchorRegistry internal registry;

    address internal constant GATEWAY = address(0x6A7E);
    address internal constant OTHER_GATEWAY = address(0x0B0B);
    // keccak256 of a literal is computed at compile time; sha256 would be a call to the
    // precompile wherever the constant is used, and vm.expectRevert would expect that call to revert
    bytes32 internal constant ROOT = keccak256("root of a batch");
    bytes32 internal constant OTHER_ROOT = keccak256("root of another batch");
    uint64 internal constant MAX_INDEX = type(uint64).max;

    function setUp() public {
        registry = new AnchorRegistry();
        vm.roll(1_000);
        vm.warp(1_700_000_000);
    }

    // ---------------------------------------------------------------------------------------
    // anchor

    function test_Anchor_FirstBatchStartsTheLog() public {
        vm.assertEq(registry.logSize(GATEWAY), 0, "an unknown anchorer's log is empty");
        vm.assertEq(registry.batchCount(GATEWAY), 0, "and has no batch");

        uint64 batchNumber = _anchor(GATEWAY, 0, 10, ROOT);

        vm.assertEq(batchNumber, 0, "the first batch is number 0");
        vm.assertEq(registry.logSize(GATEWAY), 10, "log size");
        vm.assertEq(registry.batchCount(GATEWAY), 1, "batch count");
    }

    function test_Anchor_RecordsWhatAnAuditorLooksUp() public {
        _anchor(GATEWAY, 0, 10, OTHER_ROOT);
        vm.roll(1_007);
        vm.warp(1_700_000_084);
        _anchor(GATEWAY, 10, 25, ROOT);

        IAnchorRegistry.Batch memory second = registry.batch(GATEWAY, 1);
        vm.assertEq(second.root, ROOT, "root");
        vm.assertEq(second.firstIndex, 10, "first index");
        vm.assertEq(second.size, 25, "size");
        vm.assertEq(second.blockNumber, 1_007, "block number");
        vm.assertEq(second.timestamp, 1_700_000_084, "timestamp");

        IAnchorRegistry.Batch memory first = registry.batch(GATEWAY, 0);
        vm.assertEq(first.root, OTHER_ROOT, "the first batch is kept");
        vm.assertEq(first.blockNumber, 1_000, "with its own block");
    }

    function test_Anchor_EmitsBatchAnchored() public {
        _anchor(GATEWAY, 0, 10, OTHER_ROOT);

        vm.expectEmit(address(registry));
        emit IAnchorRegistry.BatchAnchored(GATEWAY, 1, 10, 5, ROOT);
        _anchor(GATEWAY, 10, 5, ROOT);
    }

    function test_Anchor_LogsOfDifferentAnchorersAreIndependent() public {
        _anchor(GATEWAY, 0, 10, ROOT);
        _anchor(GATEWAY, 10, 10, ROOT);

        vm.assertEq(_anchor(OTHER_GATEWAY, 0, 3, OTHER_ROOT), 0, "another anchorer starts its own log at batch 0");
        vm.assertEq(registry.logSize(OTHER_GATEWAY), 3, "other log size");
        vm.assertEq(registry.logSize(GATEWAY), 20, "the first log is unchanged");
        vm.assertEq(registry.batchCount(GATEWAY), 2, "the first log's batches are unchanged");
        vm.assertEq(registry.batch(OTHER_GATEWAY, 0).root, OTHER_ROOT, "other root");
        vm.assertEq(registry.batch(GATEWAY, 0).root, ROOT, "first root");
    }

    function test_Anchor_TheLogMayFillEveryUint64Index() public {
        _anchor(GATEWAY, 0, MAX_INDEX - 1, ROOT);
        _anchor(GATEWAY, MAX_INDEX - 1, 1, ROOT);
        vm.assertEq(registry.logSize(GATEWAY), MAX_INDEX, "log size");
    }

    function test_RevertWhen_FirstBatchDoesNotStartAtZero() public {
        vm.expectRevert(abi.encodeWithSelector(IAnchorRegistry.AnchorRegistryNotContiguous.selector, 0, 1));
        _anchor(GATEWAY, 1, 10, ROOT);
    }

    function test_RevertWhen_BatchLeavesAGap() public {
        _anchor(GATEWAY, 0, 10, ROOT);
        vm.expectRevert(abi.encodeWithSelector(IAnchorRegistry.AnchorRegistryNotContiguous.selector, 10, 11));
        _anchor(GATEWAY, 11, 10, ROOT);
    }

    function test_RevertWhen_BatchOverlapsTheLog() public {
        _anchor(GATEWAY, 0, 10, ROOT);
        vm.expectRevert(abi.encodeWithSelector(IAnchorRegistry.AnchorRegistryNotContiguous.selector, 10, 9));
        _anchor(GATEWAY, 9, 10, ROOT);
    }

    function test_RevertWhen_BatchIsAnchoredTwice() public {
        _anchor(GATEWAY, 0, 10, ROOT);
        vm.expectRevert(abi.encodeWithSelector(IAnchorRegistry.AnchorRegistryNotContiguous.selector, 10, 0));
        _anchor(GATEWAY, 0, 10, ROOT);
    }

    function test_RevertWhen_BatchContinuesAnotherAnchorersLog() public {
        _anchor(GATEWAY, 0, 10, ROOT);
        vm.expectRevert(abi.encodeWithSelector(IAnchorRegistry.AnchorRegistryNotContiguous.selector, 0, 10));
        _anchor(OTHER_GATEWAY, 10, 10, ROOT);
    }

    function test_RevertWhen_BatchIsEmpty() public {
        vm.expectRevert(IAnchorRegistry.AnchorRegistryEmptyBatch.selector);
        _anchor(GATEWAY, 0, 0, ROOT);
    }

    function test_RevertWhen_RootIsZero() public {
        vm.expectRevert(IAnchorRegistry.AnchorRegistryZeroRoot.selector);
        _anchor(GATEWAY, 0, 10, bytes32(0));
    }

    function test_RevertWhen_LogWouldOverflow() public {
        _anchor(GATEWAY, 0, MAX_INDEX - 1, ROOT);
        vm.expectRevert(abi.encodeWithSelector(IAnchorRegistry.AnchorRegistryLogOverflow.selector, MAX_INDEX - 1, 2));
        _anchor(GATEWAY, MAX_INDEX - 1, 2, ROOT);
    }

    function test_RevertWhen_FullLogTakesAnotherBatch() public {
        _anchor(GATEWAY, 0, MAX_INDEX, ROOT);
        vm.expectRevert(abi.encodeWithSelector(IAnchorRegistry.AnchorRegistryLogOverflow.selector, MAX_INDEX, 1));
        _anchor(GATEWAY, MAX_INDEX, 1, ROOT);
    }

    function test_RevertWhen_RefusedBatchChangedNothing() public {
        _anchor(GATEWAY, 0, 10, ROOT);
        vm.expectRevert(abi.encodeWithSelector(IAnchorRegistry.AnchorRegistryNotContiguous.selector, 10, 20));
        _anchor(GATEWAY, 20, 10, OTHER_ROOT);
        vm.assertEq(registry.logSize(GATEWAY), 10, "log size after a refused batch");
        vm.assertEq(registry.batchCount(GATEWAY), 1, "batch count after a refused batch");
    }

    function testFuzz_Anchor_RefusesEveryFirstIndexButTheLogSize(uint64 size, uint64 firstIndex) public {
        size = uint64(_bound(size, 1, MAX_INDEX - 1));
        _anchor(GATEWAY, 0, size, ROOT);
        vm.assume(firstIndex != size);
        vm.expectRevert(abi.encodeWithSelector(IAnchorRegistry.AnchorRegistryNotContiguous.selector, size, firstIndex));
        _anchor(GATEWAY, firstIndex, 1, ROOT);
    }

    function testFuzz_Anchor_KeepsEveryBatch(uint32[] calldata sizes, bytes32 seed) public {
        vm.assume(sizes.length <= 32);
        uint64 logSize = 0;
        for (uint256 i = 0; i < sizes.length; ++i) {
            uint64 size = uint64(_bound(sizes[i], 1, type(uint32).max));
            vm.roll(1_000 + i);
            vm.warp(1_700_000_000 + 12 * i);
            vm.assertEq(_anchor(GATEWAY, logSize, size, _root(seed, i)), i, "batch number");
            logSize += size;
        }
        vm.assertEq(registry.logSize(GATEWAY), logSize, "log size");
        vm.assertEq(registry.batchCount(GATEWAY), sizes.length, "batch count");
        uint64 firstIndex = 0;
        for (uint64 i = 0; i < sizes.length; ++i) {
            IAnchorRegistry.Batch memory anchored = registry.batch(GATEWAY, i);
            vm.assertEq(anchored.root, _root(seed, i), "root");
            vm.assertEq(anchored.firstIndex, firstIndex, "first index");
            vm.assertEq(anchored.size, _bound(sizes[i], 1, type(uint32).max), "size");
            vm.assertEq(anchored.blockNumber, 1_000 + i, "block number");
            vm.assertEq(anchored.timestamp, 1_700_000_000 + 12 * i, "timestamp");
            firstIndex += anchored.size;
        }
    }

    // ---------------------------------------------------------------------------------------
    // batch

    function test_RevertWhen_BatchOfAnEmptyLogIsLookedUp() public {
        vm.expectRevert(abi.encodeWithSelector(IAnchorRegistry.AnchorRegistryUnknownBatch.selector, GATEWAY, 0));
        registry.batch(GATEWAY, 0);
    }

    function test_RevertWhen_BatchBeyondTheLastIsLookedUp() public {
        _anchor(GATEWAY, 0, 10, ROOT);
        _anchor(GATEWAY, 10, 10, ROOT);
        vm.expectRevert(abi.encodeWithSelector(IAnchorRegistry.AnchorRegistryUnknownBatch.selector, GATEWAY, 2));
        registry.batch(GATEWAY, 2);
    }

    function test_RevertWhen_BatchOfAnotherAnchorerIsLookedUp() public {
        _anchor(GATEWAY, 0, 10, ROOT);
        vm.expectRevert(abi.encodeWithSelector(IAnchorRegistry.AnchorRegistryUnknownBatch.selector, OTHER_GATEWAY, 0));
        registry.batch(OTHER_GATEWAY, 0);
    }

    // ---------------------------------------------------------------------------------------
    // verifyInclusion

    function test_VerifyInclusion_SingleLeafTreeHasAnEmptyPath() public view {
        bytes32 leaf = registry.hashLeaf("the only leaf");
        vm.assertTrue(
            registry.verifyInclusion(leaf, 0, 1, new bytes32[](0), leaf), "a one-leaf tree's root is its leaf"
        );
        vm.assertFalse(registry.verifyInclusion(leaf, 0, 1, new bytes32[](0), ROOT), "against another root");
    }

    function test_RevertWhen_InclusionIndexEqualsTreeSize() public {
        vm.expectRevert(abi.encodeWithSelector(IAnchorRegistry.AnchorRegistryIndexOutOfRange.selector, 5, 5));
        registry.verifyInclusion(ROOT, 5, 5, new bytes32[](3), ROOT);
    }

    function test_RevertWhen_InclusionTreeIsEmpty() public {
        vm.expectRevert(abi.encodeWithSelector(IAnchorRegistry.AnchorRegistryIndexOutOfRange.selector, 0, 0));
        registry.verifyInclusion(ROOT, 0, 0, new bytes32[](0), ROOT);
    }

    function test_RevertWhen_InclusionPathIsTooLong() public {
        (bytes32[] memory leaves, bytes32 root) = _tree(keccak256("long"), 6);
        bytes32[] memory path = ReferenceMerkleTree.append(ReferenceMerkleTree.path(leaves, 4), ROOT);
        vm.expectRevert(abi.encodeWithSelector(IAnchorRegistry.AnchorRegistryWrongPathLength.selector, 2, 3));
        registry.verifyInclusion(leaves[4], 4, 6, path, root);
    }

    function test_RevertWhen_InclusionPathIsTooShort() public {
        (bytes32[] memory leaves, bytes32 root) = _tree(keccak256("short"), 6);
        bytes32[] memory path = ReferenceMerkleTree.path(leaves, 1);
        vm.assertEq(path.length, 3, "leaf 1 of 6 has three siblings");
        assembly ("memory-safe") {
            mstore(path, 2)
        }
        vm.expectRevert(abi.encodeWithSelector(IAnchorRegistry.AnchorRegistryWrongPathLength.selector, 3, 2));
        registry.verifyInclusion(leaves[1], 1, 6, path, root);
    }

    function test_RevertWhen_SingleLeafTreeHasAPath() public {
        vm.expectRevert(abi.encodeWithSelector(IAnchorRegistry.AnchorRegistryWrongPathLength.selector, 0, 1));
        registry.verifyInclusion(ROOT, 0, 1, new bytes32[](1), ROOT);
    }

    /// @dev Every leaf of random trees of 1 to 300 leaves: the registry accepts the reference path.
    function testFuzz_VerifyInclusion_AcceptsTheReferencePath(bytes32 seed, uint256 size, uint256 index) public view {
        size = _bound(size, 1, 300);
        index = _bound(index, 0, size - 1);
        (bytes32[] memory leaves, bytes32 root) = _tree(seed, size);
        bytes32[] memory path = ReferenceMerkleTree.path(leaves, index);
        vm.assertTrue(registry.verifyInclusion(leaves[index], index, size, path, root), "reference path");
    }

    /// @dev Changing the leaf, one bit of one path hash, or the index never verifies: it returns
    /// false, or reverts for an index whose path has another length. (The tree size is not
    /// changed here: trees of different sizes can share a leaf's path and root, e.g. leaf 0 of
    /// 3 and of 4 leaves; a proof binds the size only together with the root of that size,
    /// which `verifyBatchInclusion` reads from the chain.)
    function testFuzz_VerifyInclusion_RefusesAnyChange(
        bytes32 seed,
        uint256 size,
        uint256 index,
        uint256 change,
        uint256 changed
    ) public view {
        size = _bound(size, 1, 300);
        index = _bound(index, 0, size - 1);
        (bytes32[] memory leaves, bytes32 root) = _tree(seed, size);
        bytes32[] memory path = ReferenceMerkleTree.path(leaves, index);
        bytes32 leaf = leaves[index];
        change = change % 3;
        if (change == 0) {
            leaf ^= bytes32(_bound(changed, 1, type(uint256).max));
        } else if (change == 1) {
            vm.assume(path.length > 0);
            path[changed % path.length] ^= bytes32(uint256(1) << (changed % 256));
        } else {
            uint256 otherIndex = _bound(changed, 0, size - 1);
            vm.assume(otherIndex != index);
            index = otherIndex;
        }
        try registry.verifyInclusion(leaf, index, size, path, root) returns (bool verified) {
            vm.assertFalse(verified, "a changed proof verified");
        } catch (bytes memory reason) {
            bytes memory wrongLength = abi.encodeWithSelector(
                IAnchorRegistry.AnchorRegistryWrongPathLength.selector,
                ReferenceMerkleTree.pathLength(index, size),
                path.length
            );
            vm.assertEq(keccak256(reason), keccak256(wrongLength), "a changed proof may only be refused for its length");
        }
    }

    /// @dev For any index and tree size (up to 2^256 - 1 leaves), a path of exactly the length
    /// RFC 9162's PATH recursion gives is well-formed, and one hash more or less is refused.
    function testFuzz_VerifyInclusion_PathLengthIsExact(uint256 index, uint256 treeSize, bytes32 seed) public {
        treeSize = _bound(treeSize, 1, type(uint256).max);
        index = _bound(index, 0, treeSize - 1);
        uint256 length = ReferenceMerkleTree.pathLength(index, treeSize);

        bytes32[] memory path = new bytes32[](length + 1);
        for (uint256 i = 0; i < path.length; ++i) {
            path[i] = keccak256(abi.encode(seed, i));
        }
        vm.expectRevert(
            abi.encodeWithSelector(IAnchorRegistry.AnchorRegistryWrongPathLength.selector, length, length + 1)
        );
        registry.verifyInclusion(seed, index, treeSize, path, seed);

        assembly ("memory-safe") {
            mstore(path, length)
        }
        registry.verifyInclusion(seed, index, treeSize, path, seed);

        if (length > 0) {
            assembly ("memory-safe") {
                mstore(path, sub(length, 1))
            }
            vm.expectRevert(
                abi.encodeWithSelector(IAnchorRegistry.AnchorRegistryWrongPathLength.selector, length, length - 1)
            );
            registry.verifyInclusion(seed, index, treeSize, path, seed);
        }
    }

    function testFuzz_RevertWhen_InclusionIndexIsNotBelowTreeSize(uint256 index, uint256 treeSize) public {
        index = _bound(index, treeSize, type(uint256).max);
        vm.expectRevert(abi.encodeWithSelector(IAnchorRegistry.AnchorRegistryIndexOutOfRange.selector, index, treeSize));
        registry.verifyInclusion(ROOT, index, treeSize, new bytes32[](0), ROOT);
    }

    // ---------------------------------------------------------------------------------------
    // verifyBatchInclusion

    /// @dev A batch of 13 leaves after a batch of 5: every leaf, by its log index.
    function test_VerifyBatchInclusion_EveryLeafOfAnAnchoredBatch() public {
        _anchor(GATEWAY, 0, 5, OTHER_ROOT);
        (bytes32[] memory leaves, bytes32 root) = _tree(keccak256("batch 1"), 13);
        _anchor(GATEWAY, 5, 13, root);

        for (uint64 i = 0; i < 13; ++i) {
            bytes32[] memory path = ReferenceMerkleTree.path(leaves, i);
            vm.assertTrue(registry.verifyBatchInclusion(GATEWAY, 1, leaves[i], 5 + i, path), "leaf of the batch");
            vm.assertFalse(registry.verifyBatchInclusion(GATEWAY, 1, ROOT, 5 + i, path), "another leaf");
            uint64 other = (i + 8) % 13;
            vm.assertFalse(
                registry.verifyBatchInclusion(
                    GATEWAY, 1, leaves[i], 5 + other, ReferenceMerkleTree.path(leaves, other)
                ),
                "the leaf at another log index, with that index's path"
            );
        }
    }

    function test_RevertWhen_BatchInclusionIndexPrecedesTheBatch() public {
        _anchor(GATEWAY, 0, 5, OTHER_ROOT);
        _anchor(GATEWAY, 5, 13, ROOT);
        vm.expectRevert(abi.encodeWithSelector(IAnchorRegistry.AnchorRegistryLeafNotInBatch.selector, 4, 5, 13));
        registry.verifyBatchInclusion(GATEWAY, 1, ROOT, 4, new bytes32[](0));
    }

    function test_RevertWhen_BatchInclusionIndexFollowsTheBatch() public {
        _anchor(GATEWAY, 0, 5, OTHER_ROOT);
        _anchor(GATEWAY, 5, 13, ROOT);
        vm.expectRevert(abi.encodeWithSelector(IAnchorRegistry.AnchorRegistryLeafNotInBatch.selector, 18, 5, 13));
        registry.verifyBatchInclusion(GATEWAY, 1, ROOT, 18, new bytes32[](0));
    }

    function test_RevertWhen_BatchInclusionBatchIsUnknown() public {
        _anchor(GATEWAY, 0, 5, ROOT);
        vm.expectRevert(abi.encodeWithSelector(IAnchorRegistry.AnchorRegistryUnknownBatch.selector, GATEWAY, 1));
        registry.verifyBatchInclusion(GATEWAY, 1, ROOT, 5, new bytes32[](0));
    }

    function test_RevertWhen_BatchInclusionPathHasTheWrongLength() public {
        (bytes32[] memory leaves, bytes32 root) = _tree(keccak256("batch 0"), 4);
        _anchor(GATEWAY, 0, 4, root);
        bytes32[] memory path = ReferenceMerkleTree.append(ReferenceMerkleTree.path(leaves, 3), ROOT);
        vm.expectRevert(abi.encodeWithSelector(IAnchorRegistry.AnchorRegistryWrongPathLength.selector, 2, 3));
        registry.verifyBatchInclusion(GATEWAY, 0, leaves[3], 3, path);
    }

    function testFuzz_RevertWhen_BatchInclusionIndexIsOutsideTheBatch(uint64 before, uint64 size, uint64 logIndex)
        public
    {
        before = uint64(_bound(before, 1, type(uint32).max));
        size = uint64(_bound(size, 1, type(uint32).max));
        _anchor(GATEWAY, 0, before, OTHER_ROOT);
        _anchor(GATEWAY, before, size, ROOT);
        vm.assume(logIndex < before || logIndex >= before + size);
        vm.expectRevert(
            abi.encodeWithSelector(IAnchorRegistry.AnchorRegistryLeafNotInBatch.selector, logIndex, before, size)
        );
        registry.verifyBatchInclusion(GATEWAY, 1, ROOT, logIndex, new bytes32[](0));
    }

    // ---------------------------------------------------------------------------------------

    function _anchor(address anchorer, uint64 firstIndex, uint64 size, bytes32 root) internal returns (uint64) {
        vm.prank(anchorer);
        return registry.anchor(firstIndex, size, root);
    }

    function _root(bytes32 seed, uint256 i) internal pure returns (bytes32) {
        return sha256(abi.encode(seed, i));
    }

    /// @dev a tree of `size` leaves whose inputs derive from `seed`, and its root
    function _tree(bytes32 seed, uint256 size) internal pure returns (bytes32[] memory leaves, bytes32 root) {
        leaves = new bytes32[](size);
        for (uint256 i = 0; i < size; ++i) {
            leaves[i] = ReferenceMerkleTree.leafHash(abi.encode(seed, i));
        }
        root = ReferenceMerkleTree.root(leaves);
    }
}
