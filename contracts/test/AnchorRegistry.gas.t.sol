// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

import {AnchorRegistry} from "../src/AnchorRegistry.sol";
import {TestBase} from "./utils/TestBase.sol";

/// @notice Budgets for the execution gas of `anchor`: they fail when a change makes anchoring
/// dearer (a third storage slot per batch would add 22,100). Execution gas excludes the
/// transaction's 21,000 and its calldata; contracts/scripts/measure-gas.sh measures whole
/// transactions on anvil (the figures in contracts/README.md and BENCHMARKS.md).
contract AnchorRegistryGasTest is TestBase {
    AnchorRegistry internal registry;

    function setUp() public {
        registry = new AnchorRegistry();
    }

    /// @dev two new batch slots and the new log head slot (3 x 22,100), the event
    function test_Gas_AnchorFirstBatchOfALog() public {
        registry.anchor(0, 1_000, keccak256("batch 0"));
        vm.assertLe(vm.lastCallGas().gasTotalUsed, 70_600, "first batch of a log");
    }

    /// @dev two new batch slots (2 x 22,100), the log head rewritten, the event; the head is
    /// warm here (same transaction as the first batch), 2,100 more in a transaction of its own
    function test_Gas_AnchorNextBatch() public {
        registry.anchor(0, 1_000, keccak256("batch 0"));
        registry.anchor(1_000, 1_000, keccak256("batch 1"));
        vm.assertLe(vm.lastCallGas().gasTotalUsed, 48_700, "next batch");
    }
}
