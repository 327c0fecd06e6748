// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

import {ConsentRegistry} from "../src/ConsentRegistry.sol";
import {TestBase} from "./utils/TestBase.sol";

/// @notice Gas budgets of the consent registry's changes (execution gas of the call, without the
/// 21,000 of a transaction and its calldata): a change that makes one dearer fails here. A grant
/// of one resource type for the purpose "TREAT": the first (a fresh registry, a patient with
/// no grant and nonce 0 yet, so more fresh slots) and a later one.
contract ConsentRegistryGasTest is TestBase {
    ConsentRegistry internal registry;
    uint256 internal constant PATIENT_KEY = 0xA11CE;
    address internal patient;
    bytes32 internal constant GRANTEE = keccak256("client:smart-app");
    uint256 internal constant DEADLINE = 1_700_000_600;

    function setUp() public {
        registry = new ConsentRegistry();
        patient = vm.addr(PATIENT_KEY);
        vm.warp(1_700_000_000);
    }

    function _types() internal pure returns (string[] memory types) {
        types = new string[](1);
        types[0] = "Observation";
    }

    function _sign(bytes32 structHash) internal view returns (bytes memory) {
        bytes32 digest = keccak256(abi.encodePacked("\x19\x01", registry.DOMAIN_SEPARATOR(), structHash));
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(PATIENT_KEY, digest);
        return abi.encodePacked(r, s, v);
    }

    function _grantSignature(uint256 nonce) internal view returns (bytes memory) {
        bytes32[] memory typeHashes = new bytes32[](1);
        typeHashes[0] = keccak256("Observation");
        return _sign(
            keccak256(
                abi.encode(
                    keccak256(
                        "Grant(address patient,bytes32 grantee,string[] resourceTypes,string purpose,uint64 expiresAt,uint256 nonce,uint256 deadline)"
                    ),
                    patient,
                    GRANTEE,
                    keccak256(abi.encodePacked(typeHashes)),
                    keccak256("TREAT"),
                    uint64(0),
                    nonce,
                    DEADLINE
                )
            )
        );
    }

    function test_Gas_Grant() public {
        vm.prank(patient);
        registry.grant(GRANTEE, _types(), "TREAT", 0);
        vm.assertLe(vm.lastCallGas().gasTotalUsed, 209_200, "the first grant (of the patient and of the registry)");
        vm.prank(patient);
        registry.grant(GRANTEE, _types(), "TREAT", 0);
        vm.assertLe(vm.lastCallGas().gasTotalUsed, 143_600, "a later grant");
    }

    function test_Gas_GrantBySig() public {
        bytes memory first = _grantSignature(0);
        registry.grantBySig(patient, GRANTEE, _types(), "TREAT", 0, 0, DEADLINE, first);
        vm.assertLe(
            vm.lastCallGas().gasTotalUsed,
            240_200,
            "the first signed grant (of the patient and of the registry: the nonce slot is set too)"
        );
        bytes memory second = _grantSignature(1);
        registry.grantBySig(patient, GRANTEE, _types(), "TREAT", 0, 1, DEADLINE, second);
        vm.assertLe(vm.lastCallGas().gasTotalUsed, 150_100, "a later signed grant");
    }

    function test_Gas_RevokeBySig() public {
        vm.prank(patient);
        registry.grant(GRANTEE, _types(), "TREAT", 0);
        bytes memory signature = _sign(
            keccak256(
                abi.encode(
                    keccak256("Revoke(address patient,uint64 grantId,uint256 nonce,uint256 deadline)"),
                    patient,
                    uint64(1),
                    uint256(0),
                    DEADLINE
                )
            )
        );
        registry.revokeBySig(patient, 1, 0, DEADLINE, signature);
        vm.assertLe(vm.lastCallGas().gasTotalUsed, 30_600, "a signed revocation");
    }
}
