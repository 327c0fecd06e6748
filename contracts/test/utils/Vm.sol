// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

/// @notice The Foundry cheatcodes these tests use, declared from Foundry's cheatcode reference
/// (https://getfoundry.sh/reference/cheatcodes/overview). forge-std, which declares all of
/// them, is published by its authors through git only; this project's toolchain comes from npm
/// and builds offline, so the few it needs are declared here. forge executes calls to this interface at
/// `VM_ADDRESS`; a wrong signature fails the test that calls it ("unknown cheatcode").
interface Vm {
    // environment
    function prank(address msgSender) external;
    function startPrank(address msgSender) external;
    function stopPrank() external;
    function roll(uint256 newHeight) external;
    function warp(uint256 newTimestamp) external;

    // keys and signatures (secp256k1)
    function addr(uint256 privateKey) external pure returns (address keyAddr);
    function sign(uint256 privateKey, bytes32 digest) external pure returns (uint8 v, bytes32 r, bytes32 s);

    // expectations
    function expectRevert(bytes4 revertData) external;
    function expectRevert(bytes calldata revertData) external;
    function expectEmit(address emitter) external;
    function assume(bool condition) external pure;

    // assertions (revert with the message when they fail)
    function assertTrue(bool condition, string calldata message) external pure;
    function assertFalse(bool condition, string calldata message) external pure;
    function assertEq(uint256 left, uint256 right, string calldata message) external pure;
    function assertEq(bytes32 left, bytes32 right, string calldata message) external pure;
    function assertEq(address left, address right, string calldata message) external pure;
    function assertEq(string calldata left, string calldata right, string calldata message) external pure;
    function assertLe(uint256 left, uint256 right, string calldata message) external pure;

    // files and JSON
    function projectRoot() external view returns (string memory path);
    function readFile(string calldata path) external view returns (string memory data);
    function keyExistsJson(string calldata json, string calldata key) external view returns (bool);
    function parseJsonUint(string calldata json, string calldata key) external pure returns (uint256);
    function parseJsonString(string calldata json, string calldata key) external pure returns (string memory);
    function parseJsonStringArray(string calldata json, string calldata key) external pure returns (string[] memory);
    function parseBytes(string calldata stringifiedValue) external pure returns (bytes memory);
    function parseBytes32(string calldata stringifiedValue) external pure returns (bytes32);
    function toString(uint256 value) external pure returns (string memory);

    // gas
    struct Gas {
        uint64 gasLimit;
        uint64 gasTotalUsed;
        uint64 gasMemoryUsed;
        int64 gasRefunded;
        uint64 gasRemaining;
    }

    function lastCallGas() external view returns (Gas memory gas);
}
