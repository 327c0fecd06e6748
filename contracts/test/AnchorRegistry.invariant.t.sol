// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

import {AnchorRegistry} from "../src/AnchorRegistry.sol";
import {IAnchorRegistry} from "../src/IAnchorRegistry.sol";
import {TestBase} from "./utils/TestBase.sol";
import {Vm} from "./utils/Vm.sol";

/// @notice What forge calls at random: three anchorers appending batches, trying batches that
/// must be refused, and time passing. It remembers every batch it saw accepted (the ghost log)
/// and checks on every call that a refused batch changed nothing.
contract AnchorRegistryHandler {
    Vm internal constant vm = Vm(address(uint160(uint256(keccak256("hevm cheat code")))));

    struct Accepted {
        bytes32 root;
        uint64 size;
        uint64 blockNumber;
        uint64 timestamp;
    }

    AnchorRegistry public immutable registry;
    address[] public anchorers;
    mapping(address anchorer => Accepted[]) internal _accepted;
    uint256 public refused;

    constructor(AnchorRegistry registry_) {
        registry = registry_;
        anchorers.push(address(0xA11CE));
        anchorers.push(address(0xB0B));
        anchorers.push(address(0xCA401));
    }

    function anchorerCount() external view returns (uint256) {
        return anchorers.length;
    }

    function accepted(address anchorer) external view returns (Accepted[] memory) {
        return _accepted[anchorer];
    }

    /// @dev a well-formed batch continuing the anchorer's log
    function anchorNext(uint256 anchorerSeed, uint64 size, bytes32 root) external {
        address anchorer = _anchorer(anchorerSeed);
        uint64 logSize = registry.logSize(anchorer);
        uint64 room = type(uint64).max - logSize;
        if (room == 0) return;
        size = uint64(1 + size % (room < 100_000 ? room : 100_000));
        if (root == bytes32(0)) root = keccak256(abi.encode(anchorer, logSize));

        vm.prank(anchorer);
        uint64 batchNumber = registry.anchor(logSize, size, root);

        vm.assertEq(batchNumber, _accepted[anchorer].length, "batch number");
        vm.assertEq(registry.logSize(anchorer), uint256(logSize) + size, "the log grew by the batch");
        _accepted[anchorer].push(Accepted(root, size, uint64(block.number), uint64(block.timestamp)));
    }

    /// @dev a batch that does not continue the log, is empty, or has a zero root
    function anchorWrong(uint256 anchorerSeed, uint64 firstIndex, uint64 size, bytes32 root, uint8 fault) external {
        address anchorer = _anchorer(anchorerSeed);
        uint64 logSize = registry.logSize(anchorer);
        uint64 batchCount = registry.batchCount(anchorer);
        fault %= 3;
        if (fault == 0) {
            if (firstIndex == logSize) firstIndex = logSize == 0 ? 1 : logSize - 1;
            if (size == 0) size = 1;
            if (root == bytes32(0)) root = keccak256("a root");
        } else if (fault == 1) {
            firstIndex = logSize;
            size = 0;
        } else {
            firstIndex = logSize;
            if (size == 0) size = 1;
            root = bytes32(0);
        }

        vm.prank(anchorer);
        try registry.anchor(firstIndex, size, root) {
            vm.assertTrue(false, "a wrong batch was accepted");
        } catch {
            ++refused;
        }
        vm.assertEq(registry.logSize(anchorer), logSize, "a refused batch changed the log size");
        vm.assertEq(registry.batchCount(anchorer), batchCount, "a refused batch changed the batch count");
    }

    function advanceTime(uint8 blocks, uint16 secondsPerBlock) external {
        vm.roll(block.number + blocks);
        vm.warp(block.timestamp + uint256(blocks) * secondsPerBlock);
    }

    function _anchorer(uint256 seed) internal view returns (address) {
        return anchorers[seed % anchorers.length];
    }
}

contract AnchorRegistryInvariantTest is TestBase {
    AnchorRegistry internal registry;
    AnchorRegistryHandler internal handler;

    function setUp() public {
        registry = new AnchorRegistry();
        handler = new AnchorRegistryHandler(registry);
        _targetContract(address(handler));
    }

    /// @dev The log only grows: its size is the sum of the sizes of the batches accepted so
    /// far (the handler's record of them only grows), and each call checks that an accepted
    /// batch grew the log by its size and a refused one changed nothing.
    function invariant_LogOnlyGrows() public view {
        for (uint256 a = 0; a < handler.anchorerCount(); ++a) {
            address anchorer = handler.anchorers(a);
            uint64 logSize = registry.logSize(anchorer);
            AnchorRegistryHandler.Accepted[] memory accepted = handler.accepted(anchorer);
            uint256 total = 0;
            for (uint256 i = 0; i < accepted.length; ++i) {
                total += accepted[i].size;
            }
            vm.assertEq(logSize, total, "log size is the sum of the accepted batches");
            vm.assertEq(registry.batchCount(anchorer), accepted.length, "batch count");
        }
    }

    /// @dev Batches are contiguous: batch 0 starts at 0, each next one where the previous ended,
    /// the last ends at the log size; every batch is kept as it was accepted, in block order.
    function invariant_BatchesAreContiguousAndKept() public view {
        for (uint256 a = 0; a < handler.anchorerCount(); ++a) {
            address anchorer = handler.anchorers(a);
            AnchorRegistryHandler.Accepted[] memory accepted = handler.accepted(anchorer);
            uint256 end = 0;
            uint256 lastBlock = 0;
            for (uint64 i = 0; i < accepted.length; ++i) {
                IAnchorRegistry.Batch memory anchored = registry.batch(anchorer, i);
                vm.assertEq(anchored.firstIndex, end, "batch starts where the previous one ended");
                vm.assertEq(anchored.size, accepted[i].size, "size");
                vm.assertEq(anchored.root, accepted[i].root, "root");
                vm.assertEq(anchored.blockNumber, accepted[i].blockNumber, "block number");
                vm.assertEq(anchored.timestamp, accepted[i].timestamp, "timestamp");
                vm.assertLe(lastBlock, anchored.blockNumber, "batches are in block order");
                end = anchored.firstIndex + anchored.size;
                lastBlock = anchored.blockNumber;
            }
            vm.assertEq(end, registry.logSize(anchorer), "the last batch ends at the log size");
        }
    }
}
