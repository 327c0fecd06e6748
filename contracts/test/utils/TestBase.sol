// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

import {Vm} from "./Vm.sol";

/// @notice What every test contract here shares: the cheatcodes, `_bound` for fuzz inputs, and
/// the invariant targets forge asks a test contract for (`targetContracts`).
abstract contract TestBase {
    Vm internal constant vm = Vm(address(uint160(uint256(keccak256("hevm cheat code")))));

    address[] private _targetContracts;

    /// @notice Contracts whose functions forge calls at random in invariant tests; when it is
    /// empty, forge calls every contract deployed in `setUp`.
    function targetContracts() public view returns (address[] memory) {
        return _targetContracts;
    }

    function _targetContract(address target) internal {
        _targetContracts.push(target);
    }

    /// @dev `value` mapped into [min, max] (inclusive): a value already in range is kept, others
    /// wrap around from `min`, so the fuzzer's edge cases (0, 1, max) still reach the range's edges.
    function _bound(uint256 value, uint256 min, uint256 max) internal pure returns (uint256) {
        require(min <= max, "_bound: min > max");
        if (value >= min && value <= max) return value;
        uint256 width = max - min;
        if (width == type(uint256).max) return value;
        return min + value % (width + 1);
    }
}
