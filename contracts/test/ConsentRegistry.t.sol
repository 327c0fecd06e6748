// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

import {ConsentRegistry} from "../src/ConsentRegistry.sol";
import {IConsentRegistry} from "../src/IConsentRegistry.sol";
import {TestBase} from "./utils/TestBase.sol";

/// @notice A smart-contract wallet as far as ERC-1271 goes: it approves a hash signed by its
/// owner's key (ECDSA, 65 bytes r || s || v) and nothing else.
contract OwnedWallet {
    bytes4 internal constant MAGIC = 0x1626ba7e; // bytes4(keccak256("isValidSignature(bytes32,bytes)"))
    address internal immutable owner;

    constructor(address owner_) {
        owner = owner_;
    }

    function isValidSignature(bytes32 hash, bytes calldata signature) external view returns (bytes4) {
        if (signature.length != 65) return 0xffffffff;
        bytes32 r = bytes32(signature[0:32]);
        bytes32 s = bytes32(signature[32:64]);
        uint8 v = uint8(signature[64]);
        return ecrecover(hash, v, r, s) == owner ? MAGIC : bytes4(0xffffffff);
    }

    /// @notice Lets the owner act as the wallet (a direct revoke by a smart-wallet patient).
    function call(address target, bytes calldata data) external returns (bytes memory) {
        require(msg.sender == owner, "not the owner");
        (bool ok, bytes memory result) = target.call(data);
        if (!ok) {
            assembly {
                revert(add(result, 0x20), mload(result))
            }
        }
        return result;
    }
}

contract ConsentRegistryTest is TestBase {
    ConsentRegistry internal registry;

    uint256 internal constant PATIENT_KEY = 0xA11CE;
    uint256 internal constant OTHER_KEY = 0xB0B;
    // secp256k1's group order: private keys are 1 .. N - 1
    uint256 internal constant SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141;
    address internal patient;
    address internal other;
    address internal constant RELAYER = address(0x6A7E);

    bytes32 internal constant GRANTEE = keccak256("client:smart-app");
    bytes32 internal constant OTHER_GRANTEE = keccak256("user:practitioner-7");
    uint64 internal constant NOW = 1_700_000_000;
    uint256 internal constant DEADLINE = NOW + 600;

    bytes32 internal constant DOMAIN_TYPEHASH =
        keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)");
    bytes32 internal constant GRANT_TYPEHASH = keccak256(
        "Grant(address patient,bytes32 grantee,string[] resourceTypes,string purpose,uint64 expiresAt,uint256 nonce,uint256 deadline)"
    );
    bytes32 internal constant REVOKE_TYPEHASH =
        keccak256("Revoke(address patient,uint64 grantId,uint256 nonce,uint256 deadline)");

    function setUp() public {
        registry = new ConsentRegistry();
        patient = vm.addr(PATIENT_KEY);
        other = vm.addr(OTHER_KEY);
        vm.roll(1_000);
        vm.warp(NOW);
    }

    // ---------------------------------------------------------------------------------------
    // helpers: the EIP-712 digests written from the EIP's definitions, independently of the contract

    function _domainSeparator() internal view returns (bytes32) {
        return keccak256(
            abi.encode(DOMAIN_TYPEHASH, keccak256("ConsentRegistry"), keccak256("1"), block.chainid, address(registry))
        );
    }

    function _hashStrings(string[] memory values) internal pure returns (bytes32) {
        bytes memory concatenated;
        for (uint256 i = 0; i < values.length; ++i) {
            concatenated = bytes.concat(concatenated, keccak256(bytes(values[i])));
        }
        return keccak256(concatenated);
    }

    function _grantDigest(
        address signer,
        bytes32 grantee,
        string[] memory types,
        string memory purpose,
        uint64 expiresAt,
        uint256 nonce,
        uint256 deadline
    ) internal view returns (bytes32) {
        bytes32 structHash = keccak256(
            abi.encode(
                GRANT_TYPEHASH,
                signer,
                grantee,
                _hashStrings(types),
                keccak256(bytes(purpose)),
                expiresAt,
                nonce,
                deadline
            )
        );
        return keccak256(abi.encodePacked("\x19\x01", _domainSeparator(), structHash));
    }

    function _revokeDigest(address signer, uint64 grantId, uint256 nonce, uint256 deadline)
        internal
        view
        returns (bytes32)
    {
        bytes32 structHash = keccak256(abi.encode(REVOKE_TYPEHASH, signer, grantId, nonce, deadline));
        return keccak256(abi.encodePacked("\x19\x01", _domainSeparator(), structHash));
    }

    function _sign(uint256 key, bytes32 digest) internal pure returns (bytes memory) {
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(key, digest);
        return abi.encodePacked(r, s, v);
    }

    function _types() internal pure returns (string[] memory types) {
        types = new string[](0);
    }

    function _types(string memory a) internal pure returns (string[] memory types) {
        types = new string[](1);
        types[0] = a;
    }

    function _types(string memory a, string memory b) internal pure returns (string[] memory types) {
        types = new string[](2);
        types[0] = a;
        types[1] = b;
    }

    function _grantAs(address who, bytes32 grantee, string[] memory types, string memory purpose, uint64 expiresAt)
        internal
        returns (uint64)
    {
        vm.prank(who);
        return registry.grant(grantee, types, purpose, expiresAt);
    }

    /// @dev A grant of `patient` signed with `key` and relayed by RELAYER.
    function _grantBySig(uint256 key, bytes32 grantee, string[] memory types, uint64 expiresAt)
        internal
        returns (uint64)
    {
        uint256 nonce = registry.nonces(patient);
        bytes memory signature = _sign(key, _grantDigest(patient, grantee, types, "TREAT", expiresAt, nonce, DEADLINE));
        vm.prank(RELAYER);
        return registry.grantBySig(patient, grantee, types, "TREAT", expiresAt, nonce, DEADLINE, signature);
    }

    function _assertGrant(
        uint64 grantId,
        address grantor,
        bytes32 grantee,
        string[] memory types,
        string memory purpose,
        uint64 expiresAt
    ) internal view {
        IConsentRegistry.Grant memory stored = registry.getGrant(grantId);
        vm.assertEq(stored.patient, grantor, "patient");
        vm.assertEq(stored.grantee, grantee, "grantee");
        vm.assertEq(stored.expiresAt, expiresAt, "expiresAt");
        vm.assertEq(stored.grantedBlock, block.number, "grantedBlock");
        vm.assertEq(stored.revokedBlock, 0, "not revoked");
        vm.assertEq(stored.purpose, purpose, "purpose");
        vm.assertEq(stored.resourceTypes.length, types.length, "number of resource types");
        for (uint256 i = 0; i < types.length; ++i) {
            vm.assertEq(stored.resourceTypes[i], types[i], "resource type");
        }
    }

    // ---------------------------------------------------------------------------------------
    // grant

    function test_Grant_RecordsTheGrantOfTheCaller() public {
        vm.assertEq(registry.grantCount(), 0, "no grant yet");
        uint64 grantId = _grantAs(patient, GRANTEE, _types("Observation", "Condition"), "TREAT", NOW + 3600);

        vm.assertEq(grantId, 1, "ids start at 1");
        vm.assertEq(registry.grantCount(), 1, "grant count");
        _assertGrant(grantId, patient, GRANTEE, _types("Observation", "Condition"), "TREAT", NOW + 3600);
        uint64[] memory ids = registry.grantsOf(patient);
        vm.assertEq(ids.length, 1, "one grant of the patient");
        vm.assertEq(ids[0], 1, "its id");
        vm.assertTrue(registry.isActive(grantId), "active");
        vm.assertEq(registry.nonces(patient), 0, "a direct grant uses no nonce");
    }

    function test_Grant_EmitsConsentGranted() public {
        _grantAs(other, GRANTEE, _types(), "TREAT", 0);

        vm.expectEmit(address(registry));
        emit IConsentRegistry.ConsentGranted(2, patient, GRANTEE, _types("Observation"), "HPAYMT", NOW + 1);
        _grantAs(patient, GRANTEE, _types("Observation"), "HPAYMT", NOW + 1);
    }

    function test_Grant_IdsAreSequentialAcrossPatients() public {
        vm.assertEq(_grantAs(patient, GRANTEE, _types(), "TREAT", 0), 1, "first");
        vm.assertEq(_grantAs(other, GRANTEE, _types(), "TREAT", 0), 2, "second, another patient");
        vm.assertEq(_grantAs(patient, OTHER_GRANTEE, _types(), "TREAT", 0), 3, "third");
        vm.assertEq(registry.grantCount(), 3, "grant count");
        uint64[] memory mine = registry.grantsOf(patient);
        vm.assertEq(mine.length, 2, "the patient's grants");
        vm.assertEq(mine[0], 1, "oldest first");
        vm.assertEq(mine[1], 3, "then the newer");
        vm.assertEq(registry.grantsOf(other).length, 1, "the other patient's");
        vm.assertEq(registry.grantsOf(RELAYER).length, 0, "nobody else's");
    }

    function test_Grant_AcceptsTheLimits() public {
        string[] memory types = new string[](64);
        for (uint256 i = 0; i < 64; ++i) {
            types[i] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijkl";
        }
        uint64 grantId = _grantAs(patient, GRANTEE, types, "ABCDEFGHIJKLMNOPQRSTUVWXYZ-01234", NOW + 1);
        _assertGrant(grantId, patient, GRANTEE, types, "ABCDEFGHIJKLMNOPQRSTUVWXYZ-01234", NOW + 1);
    }

    function test_RevertWhen_GranteeIsZero() public {
        vm.expectRevert(abi.encodeWithSelector(IConsentRegistry.ConsentRegistryZeroGrantee.selector));
        _grantAs(patient, bytes32(0), _types(), "TREAT", 0);
    }

    function test_RevertWhen_PurposeIsEmpty() public {
        vm.expectRevert(abi.encodeWithSelector(IConsentRegistry.ConsentRegistryInvalidPurpose.selector));
        _grantAs(patient, GRANTEE, _types(), "", 0);
    }

    function test_RevertWhen_PurposeIsLongerThan32Bytes() public {
        vm.expectRevert(abi.encodeWithSelector(IConsentRegistry.ConsentRegistryInvalidPurpose.selector));
        _grantAs(patient, GRANTEE, _types(), "ABCDEFGHIJKLMNOPQRSTUVWXYZ-012345", 0);
    }

    function test_RevertWhen_ResourceTypeIsEmpty() public {
        vm.expectRevert(abi.encodeWithSelector(IConsentRegistry.ConsentRegistryInvalidResourceType.selector, 1));
        _grantAs(patient, GRANTEE, _types("Observation", ""), "TREAT", 0);
    }

    function test_RevertWhen_ResourceTypeIsLongerThan64Letters() public {
        vm.expectRevert(abi.encodeWithSelector(IConsentRegistry.ConsentRegistryInvalidResourceType.selector, 0));
        _grantAs(
            patient, GRANTEE, _types("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklm"), "TREAT", 0
        );
    }

    function test_RevertWhen_ResourceTypeHoldsOtherThanLetters() public {
        string[6] memory bad =
            [string("Observation "), "Obs-ervation", "Observation1", "Observ@tion", "Observ[tion", unicode"Ob\u00e9"];
        for (uint256 i = 0; i < bad.length; ++i) {
            vm.expectRevert(abi.encodeWithSelector(IConsentRegistry.ConsentRegistryInvalidResourceType.selector, 1));
            _grantAs(patient, GRANTEE, _types("Patient", bad[i]), "TREAT", 0);
        }
    }

    function test_RevertWhen_MoreThan64ResourceTypes() public {
        string[] memory types = new string[](65);
        for (uint256 i = 0; i < 65; ++i) {
            types[i] = "Observation";
        }
        vm.expectRevert(abi.encodeWithSelector(IConsentRegistry.ConsentRegistryInvalidResourceType.selector, 64));
        _grantAs(patient, GRANTEE, types, "TREAT", 0);
    }

    function test_RevertWhen_GrantExpiresNowOrEarlier() public {
        vm.expectRevert(abi.encodeWithSelector(IConsentRegistry.ConsentRegistryAlreadyExpired.selector, NOW));
        _grantAs(patient, GRANTEE, _types(), "TREAT", NOW);
        vm.expectRevert(abi.encodeWithSelector(IConsentRegistry.ConsentRegistryAlreadyExpired.selector, 1));
        _grantAs(patient, GRANTEE, _types(), "TREAT", 1);
        vm.assertEq(registry.grantCount(), 0, "nothing recorded");
    }

    // ---------------------------------------------------------------------------------------
    // revoke

    function test_Revoke_RecordsTheBlockAndEmitsConsentRevoked() public {
        uint64 grantId = _grantAs(patient, GRANTEE, _types(), "TREAT", 0);
        vm.roll(1_005);

        vm.expectEmit(address(registry));
        emit IConsentRegistry.ConsentRevoked(grantId, patient, GRANTEE);
        vm.prank(patient);
        registry.revoke(grantId);

        IConsentRegistry.Grant memory stored = registry.getGrant(grantId);
        vm.assertEq(stored.revokedBlock, 1_005, "revoked block");
        vm.assertEq(stored.grantedBlock, 1_000, "granted block kept");
        vm.assertFalse(registry.isActive(grantId), "no longer active");
        (bool allowed,) = registry.isAllowed(patient, GRANTEE, "Observation", "TREAT");
        vm.assertFalse(allowed, "no longer allowed");
    }

    function test_Revoke_AnExpiredGrant() public {
        uint64 grantId = _grantAs(patient, GRANTEE, _types(), "TREAT", NOW + 10);
        vm.warp(NOW + 100);
        vm.prank(patient);
        registry.revoke(grantId);
        vm.assertEq(registry.getGrant(grantId).revokedBlock, 1_000, "revoked");
    }

    function test_RevertWhen_RevokedTwice() public {
        uint64 grantId = _grantAs(patient, GRANTEE, _types(), "TREAT", 0);
        vm.prank(patient);
        registry.revoke(grantId);
        vm.roll(1_001);
        vm.expectRevert(abi.encodeWithSelector(IConsentRegistry.ConsentRegistryAlreadyRevoked.selector, grantId));
        vm.prank(patient);
        registry.revoke(grantId);
        vm.assertEq(registry.getGrant(grantId).revokedBlock, 1_000, "the first revocation stands");
    }

    function test_RevertWhen_RevokedByAnotherAccount() public {
        uint64 grantId = _grantAs(patient, GRANTEE, _types(), "TREAT", 0);
        vm.expectRevert(
            abi.encodeWithSelector(IConsentRegistry.ConsentRegistryNotGrantor.selector, grantId, address(uint160(1)))
        );
        vm.prank(address(uint160(1)));
        registry.revoke(grantId);
        // not even the grantee's own account
        address granteeAccount = address(0xCAFE);
        uint64 toAccount = _grantAs(patient, registry.granteeOfAccount(granteeAccount), _types(), "TREAT", 0);
        vm.expectRevert(
            abi.encodeWithSelector(IConsentRegistry.ConsentRegistryNotGrantor.selector, toAccount, granteeAccount)
        );
        vm.prank(granteeAccount);
        registry.revoke(toAccount);
        vm.assertTrue(registry.isActive(grantId) && registry.isActive(toAccount), "both still active");
    }

    function test_RevertWhen_UnknownGrantIsUsed() public {
        _grantAs(patient, GRANTEE, _types(), "TREAT", 0);
        for (uint64 id = 0; id < 4; id += 2) {
            vm.expectRevert(abi.encodeWithSelector(IConsentRegistry.ConsentRegistryUnknownGrant.selector, id));
            vm.prank(patient);
            registry.revoke(id);
            vm.expectRevert(abi.encodeWithSelector(IConsentRegistry.ConsentRegistryUnknownGrant.selector, id));
            registry.getGrant(id);
            vm.expectRevert(abi.encodeWithSelector(IConsentRegistry.ConsentRegistryUnknownGrant.selector, id));
            registry.isActive(id);
        }
    }

    // ---------------------------------------------------------------------------------------
    // grantBySig and revokeBySig

    function test_GrantBySig_RecordsTheSignedGrantOfThePatient() public {
        string[] memory types = _types("Observation");
        bytes memory signature = _sign(PATIENT_KEY, _grantDigest(patient, GRANTEE, types, "TREAT", 0, 0, DEADLINE));

        vm.expectEmit(address(registry));
        emit IConsentRegistry.ConsentGranted(1, patient, GRANTEE, types, "TREAT", 0);
        vm.prank(RELAYER);
        uint64 grantId = registry.grantBySig(patient, GRANTEE, types, "TREAT", 0, 0, DEADLINE, signature);

        vm.assertEq(grantId, 1, "grant id");
        _assertGrant(grantId, patient, GRANTEE, types, "TREAT", 0);
        vm.assertEq(registry.nonces(patient), 1, "the nonce is used up");
        vm.assertEq(registry.grantsOf(RELAYER).length, 0, "the relayer granted nothing");
    }

    function test_GrantBySig_AcceptsTheDeadlineItself() public {
        bytes memory signature = _sign(PATIENT_KEY, _grantDigest(patient, GRANTEE, _types(), "TREAT", 0, 0, NOW));
        registry.grantBySig(patient, GRANTEE, _types(), "TREAT", 0, 0, NOW, signature);
        vm.assertEq(registry.grantCount(), 1, "granted at the deadline");
    }

    function test_RevertWhen_GrantBySigIsReplayed() public {
        bytes memory signature = _sign(PATIENT_KEY, _grantDigest(patient, GRANTEE, _types(), "TREAT", 0, 0, DEADLINE));
        registry.grantBySig(patient, GRANTEE, _types(), "TREAT", 0, 0, DEADLINE, signature);

        vm.expectRevert(abi.encodeWithSelector(IConsentRegistry.ConsentRegistryInvalidNonce.selector, patient, 1));
        vm.prank(RELAYER);
        registry.grantBySig(patient, GRANTEE, _types(), "TREAT", 0, 0, DEADLINE, signature);
        vm.assertEq(registry.grantCount(), 1, "granted once");
    }

    function test_RevertWhen_GrantBySigSkipsANonce() public {
        bytes memory signature = _sign(PATIENT_KEY, _grantDigest(patient, GRANTEE, _types(), "TREAT", 0, 1, DEADLINE));
        vm.expectRevert(abi.encodeWithSelector(IConsentRegistry.ConsentRegistryInvalidNonce.selector, patient, 0));
        registry.grantBySig(patient, GRANTEE, _types(), "TREAT", 0, 1, DEADLINE, signature);
    }

    function test_RevertWhen_GrantBySigIsSignedByAnotherKey() public {
        bytes memory signature = _sign(OTHER_KEY, _grantDigest(patient, GRANTEE, _types(), "TREAT", 0, 0, DEADLINE));
        vm.expectRevert(abi.encodeWithSelector(IConsentRegistry.ConsentRegistryInvalidSignature.selector, patient));
        registry.grantBySig(patient, GRANTEE, _types(), "TREAT", 0, 0, DEADLINE, signature);
        vm.assertEq(registry.nonces(patient), 0, "a refused request uses no nonce");
        vm.assertEq(registry.grantCount(), 0, "nothing granted");
    }

    function test_RevertWhen_GrantBySigDiffersFromWhatWasSigned() public {
        bytes memory signature =
            _sign(PATIENT_KEY, _grantDigest(patient, GRANTEE, _types("Observation"), "TREAT", 0, 0, DEADLINE));
        bytes memory refused =
            abi.encodeWithSelector(IConsentRegistry.ConsentRegistryInvalidSignature.selector, patient);
        vm.expectRevert(refused);
        registry.grantBySig(patient, GRANTEE, _types("Condition"), "TREAT", 0, 0, DEADLINE, signature);
        vm.expectRevert(refused);
        registry.grantBySig(patient, GRANTEE, _types(), "TREAT", 0, 0, DEADLINE, signature);
        vm.expectRevert(refused);
        registry.grantBySig(patient, OTHER_GRANTEE, _types("Observation"), "TREAT", 0, 0, DEADLINE, signature);
        vm.expectRevert(refused);
        registry.grantBySig(patient, GRANTEE, _types("Observation"), "ETREAT", 0, 0, DEADLINE, signature);
        vm.expectRevert(refused);
        registry.grantBySig(patient, GRANTEE, _types("Observation"), "TREAT", NOW + 1, 0, DEADLINE, signature);
        vm.expectRevert(refused);
        registry.grantBySig(patient, GRANTEE, _types("Observation"), "TREAT", 0, 0, DEADLINE + 1, signature);
        // the same signature claimed for another patient: that patient's signature is missing
        vm.expectRevert(abi.encodeWithSelector(IConsentRegistry.ConsentRegistryInvalidSignature.selector, other));
        registry.grantBySig(other, GRANTEE, _types("Observation"), "TREAT", 0, 0, DEADLINE, signature);
    }

    function test_RevertWhen_GrantBySigIsSignedForAnotherRegistry() public {
        ConsentRegistry elsewhere = new ConsentRegistry();
        bytes memory signature = _sign(PATIENT_KEY, _grantDigest(patient, GRANTEE, _types(), "TREAT", 0, 0, DEADLINE));
        vm.expectRevert(abi.encodeWithSelector(IConsentRegistry.ConsentRegistryInvalidSignature.selector, patient));
        elsewhere.grantBySig(patient, GRANTEE, _types(), "TREAT", 0, 0, DEADLINE, signature);
    }

    function test_RevertWhen_GrantBySigDeadlinePassed() public {
        bytes memory signature = _sign(PATIENT_KEY, _grantDigest(patient, GRANTEE, _types(), "TREAT", 0, 0, DEADLINE));
        vm.warp(DEADLINE + 1);
        vm.expectRevert(abi.encodeWithSelector(IConsentRegistry.ConsentRegistryDeadlinePassed.selector, DEADLINE));
        registry.grantBySig(patient, GRANTEE, _types(), "TREAT", 0, 0, DEADLINE, signature);
    }

    function test_RevertWhen_GrantBySigIsInvalidAsAGrant() public {
        bytes memory signature = _sign(PATIENT_KEY, _grantDigest(patient, GRANTEE, _types(), "TREAT", NOW, 0, DEADLINE));
        vm.expectRevert(abi.encodeWithSelector(IConsentRegistry.ConsentRegistryAlreadyExpired.selector, NOW));
        registry.grantBySig(patient, GRANTEE, _types(), "TREAT", NOW, 0, DEADLINE, signature);
        vm.assertEq(registry.nonces(patient), 0, "the refused grant gave its nonce back");
    }

    function test_RevokeBySig_RevokesTheSignedGrant() public {
        uint64 grantId = _grantBySig(PATIENT_KEY, GRANTEE, _types(), 0);
        bytes memory signature = _sign(PATIENT_KEY, _revokeDigest(patient, grantId, 1, DEADLINE));
        vm.roll(1_003);

        vm.expectEmit(address(registry));
        emit IConsentRegistry.ConsentRevoked(grantId, patient, GRANTEE);
        vm.prank(RELAYER);
        registry.revokeBySig(patient, grantId, 1, DEADLINE, signature);

        vm.assertEq(registry.getGrant(grantId).revokedBlock, 1_003, "revoked block");
        vm.assertEq(registry.nonces(patient), 2, "grants and revocations share the nonce");
    }

    function test_RevertWhen_RevokeBySigIsReplayed() public {
        uint64 grantId = _grantAs(patient, GRANTEE, _types(), "TREAT", 0);
        bytes memory signature = _sign(PATIENT_KEY, _revokeDigest(patient, grantId, 0, DEADLINE));
        registry.revokeBySig(patient, grantId, 0, DEADLINE, signature);
        vm.expectRevert(abi.encodeWithSelector(IConsentRegistry.ConsentRegistryInvalidNonce.selector, patient, 1));
        registry.revokeBySig(patient, grantId, 0, DEADLINE, signature);
    }

    function test_RevertWhen_RevokeBySigOfARevokedGrant() public {
        uint64 grantId = _grantAs(patient, GRANTEE, _types(), "TREAT", 0);
        vm.prank(patient);
        registry.revoke(grantId);
        bytes memory signature = _sign(PATIENT_KEY, _revokeDigest(patient, grantId, 0, DEADLINE));
        vm.expectRevert(abi.encodeWithSelector(IConsentRegistry.ConsentRegistryAlreadyRevoked.selector, grantId));
        registry.revokeBySig(patient, grantId, 0, DEADLINE, signature);
        vm.assertEq(registry.nonces(patient), 0, "the refused revocation gave its nonce back");
    }

    function test_RevertWhen_RevokeBySigOfAnotherPatientsGrant() public {
        uint64 grantId = _grantAs(other, GRANTEE, _types(), "TREAT", 0);
        bytes memory signature = _sign(PATIENT_KEY, _revokeDigest(patient, grantId, 0, DEADLINE));
        vm.expectRevert(abi.encodeWithSelector(IConsentRegistry.ConsentRegistryNotGrantor.selector, grantId, patient));
        registry.revokeBySig(patient, grantId, 0, DEADLINE, signature);
    }

    function test_RevertWhen_RevokeBySigIsSignedByAnotherKey() public {
        uint64 grantId = _grantAs(patient, GRANTEE, _types(), "TREAT", 0);
        bytes memory signature = _sign(OTHER_KEY, _revokeDigest(patient, grantId, 0, DEADLINE));
        vm.expectRevert(abi.encodeWithSelector(IConsentRegistry.ConsentRegistryInvalidSignature.selector, patient));
        registry.revokeBySig(patient, grantId, 0, DEADLINE, signature);
        // a grant signature is no revocation signature (another type, another hash)
        bytes memory grantSignature =
            _sign(PATIENT_KEY, _grantDigest(patient, GRANTEE, _types(), "TREAT", 0, 0, DEADLINE));
        vm.expectRevert(abi.encodeWithSelector(IConsentRegistry.ConsentRegistryInvalidSignature.selector, patient));
        registry.revokeBySig(patient, grantId, 0, DEADLINE, grantSignature);
        vm.assertTrue(registry.isActive(grantId), "still active");
    }

    function test_RevertWhen_RevokeBySigDeadlinePassed() public {
        uint64 grantId = _grantAs(patient, GRANTEE, _types(), "TREAT", 0);
        bytes memory signature = _sign(PATIENT_KEY, _revokeDigest(patient, grantId, 0, NOW - 1));
        vm.expectRevert(abi.encodeWithSelector(IConsentRegistry.ConsentRegistryDeadlinePassed.selector, NOW - 1));
        registry.revokeBySig(patient, grantId, 0, NOW - 1, signature);
    }

    // ---------------------------------------------------------------------------------------
    // ERC-1271: a patient whose account is a smart-contract wallet

    function test_GrantBySig_AcceptsASmartWalletsApproval() public {
        OwnedWallet wallet = new OwnedWallet(patient);
        address account = address(wallet);
        bytes memory signature = _sign(PATIENT_KEY, _grantDigest(account, GRANTEE, _types(), "TREAT", 0, 0, DEADLINE));
        uint64 grantId = registry.grantBySig(account, GRANTEE, _types(), "TREAT", 0, 0, DEADLINE, signature);
        _assertGrant(grantId, account, GRANTEE, _types(), "TREAT", 0);

        bytes memory revocation = _sign(PATIENT_KEY, _revokeDigest(account, grantId, 1, DEADLINE));
        registry.revokeBySig(account, grantId, 1, DEADLINE, revocation);
        vm.assertFalse(registry.isActive(grantId), "revoked through the wallet");
    }

    function test_RevertWhen_SmartWalletRefusesTheSignature() public {
        OwnedWallet wallet = new OwnedWallet(patient);
        address account = address(wallet);
        bytes memory signature = _sign(OTHER_KEY, _grantDigest(account, GRANTEE, _types(), "TREAT", 0, 0, DEADLINE));
        vm.expectRevert(abi.encodeWithSelector(IConsentRegistry.ConsentRegistryInvalidSignature.selector, account));
        registry.grantBySig(account, GRANTEE, _types(), "TREAT", 0, 0, DEADLINE, signature);
        // the owner's own ECDSA signature for the owner's address is not the wallet's
        bytes memory ownersOwn = _sign(PATIENT_KEY, _grantDigest(patient, GRANTEE, _types(), "TREAT", 0, 0, DEADLINE));
        vm.expectRevert(abi.encodeWithSelector(IConsentRegistry.ConsentRegistryInvalidSignature.selector, account));
        registry.grantBySig(account, GRANTEE, _types(), "TREAT", 0, 0, DEADLINE, ownersOwn);
    }

    function test_Revoke_DirectlyFromASmartWallet() public {
        OwnedWallet wallet = new OwnedWallet(patient);
        vm.prank(patient);
        wallet.call(address(registry), abi.encodeCall(registry.grant, (GRANTEE, _types(), "TREAT", 0)));
        vm.prank(patient);
        wallet.call(address(registry), abi.encodeCall(registry.revoke, (1)));
        vm.assertEq(registry.getGrant(1).patient, address(wallet), "the wallet granted");
        vm.assertFalse(registry.isActive(1), "and revoked");
    }

    // ---------------------------------------------------------------------------------------
    // isActive and isAllowed

    function test_IsActive_UntilTheExpiry() public {
        uint64 grantId = _grantAs(patient, GRANTEE, _types(), "TREAT", NOW + 60);
        uint64 forever = _grantAs(patient, GRANTEE, _types(), "TREAT", 0);
        vm.warp(NOW + 59);
        vm.assertTrue(registry.isActive(grantId), "active a second before the expiry");
        vm.warp(NOW + 60);
        vm.assertFalse(registry.isActive(grantId), "expired at expiresAt");
        vm.warp(type(uint64).max);
        vm.assertTrue(registry.isActive(forever), "0 never expires");
    }

    function test_IsAllowed_MatchesPatientGranteeTypeAndPurpose() public {
        uint64 observations = _grantAs(patient, GRANTEE, _types("Observation", "Condition"), "TREAT", NOW + 60);

        _assertAllowed(patient, GRANTEE, "Observation", "TREAT", observations);
        _assertAllowed(patient, GRANTEE, "Condition", "TREAT", observations);
        _assertAllowed(patient, GRANTEE, "Patient", "TREAT", 0);
        _assertAllowed(patient, GRANTEE, "observation", "TREAT", 0);
        _assertAllowed(patient, GRANTEE, "Observation", "HPAYMT", 0);
        _assertAllowed(patient, GRANTEE, "Observation", "TREA", 0);
        _assertAllowed(patient, OTHER_GRANTEE, "Observation", "TREAT", 0);
        _assertAllowed(other, GRANTEE, "Observation", "TREAT", 0);

        // a grant of every type, newer: found first
        uint64 all = _grantAs(patient, GRANTEE, _types(), "TREAT", 0);
        _assertAllowed(patient, GRANTEE, "Observation", "TREAT", all);
        _assertAllowed(patient, GRANTEE, "Patient", "TREAT", all);
        vm.prank(patient);
        registry.revoke(all);
        _assertAllowed(patient, GRANTEE, "Observation", "TREAT", observations);
        _assertAllowed(patient, GRANTEE, "Patient", "TREAT", 0);

        vm.warp(NOW + 60);
        _assertAllowed(patient, GRANTEE, "Observation", "TREAT", 0);
    }

    function _assertAllowed(
        address grantor,
        bytes32 grantee,
        string memory resourceType,
        string memory purpose,
        uint64 expected
    ) internal view {
        (bool allowed, uint64 grantId) = registry.isAllowed(grantor, grantee, resourceType, purpose);
        vm.assertEq(grantId, expected, "the allowing grant");
        vm.assertTrue(allowed == (expected != 0), "allowed iff a grant allows");
    }

    // ---------------------------------------------------------------------------------------
    // domain and grantee helpers

    function test_DomainSeparator_IsTheEip712DomainOfThisRegistry() public view {
        vm.assertEq(registry.DOMAIN_SEPARATOR(), _domainSeparator(), "domain separator");
        (
            bytes1 fields,
            string memory name,
            string memory version,
            uint256 chainId,
            address verifyingContract,
            bytes32 salt,
            uint256[] memory extensions
        ) = registry.eip712Domain();
        vm.assertEq(uint8(fields), 0x0f, "name, version, chainId, verifyingContract");
        vm.assertEq(name, "ConsentRegistry", "name");
        vm.assertEq(version, "1", "version");
        vm.assertEq(chainId, block.chainid, "chain id");
        vm.assertEq(verifyingContract, address(registry), "verifying contract");
        vm.assertEq(salt, bytes32(0), "no salt");
        vm.assertEq(extensions.length, 0, "no extensions");
    }

    function test_GranteeHelpers_FollowTheConvention() public view {
        vm.assertEq(
            registry.granteeOfAccount(0x00000000000000000000000000000000DeaDBeef),
            bytes32(uint256(0xDeaDBeef)),
            "an account, zero-extended"
        );
        vm.assertEq(registry.granteeOfName("client:smart-app"), GRANTEE, "a client");
        vm.assertEq(registry.granteeOfName("user:practitioner-7"), OTHER_GRANTEE, "a user");
        vm.assertEq(
            registry.granteeOfName(unicode"user:José"), keccak256(hex"757365723a4a6f73c3a9"), "UTF-8 bytes of the name"
        );
    }

    // ---------------------------------------------------------------------------------------
    // fuzzing

    /// @dev Any key signs a grant of any valid fields for its own account; it is stored exactly.
    function testFuzz_GrantBySig_AnySignerAnyGrant(
        uint256 key,
        bytes32 grantee,
        uint8 typeCount,
        uint256 typeSeed,
        uint8 purposeLength,
        uint64 expiresIn,
        uint256 deadlineIn
    ) public {
        key = _bound(key, 1, SECP256K1_N - 1);
        vm.assume(grantee != bytes32(0));
        address signer = vm.addr(key);
        string[] memory types = new string[](_bound(typeCount, 0, 8));
        for (uint256 i = 0; i < types.length; ++i) {
            types[i] = _letters(uint256(keccak256(abi.encode(typeSeed, i))), 1 + (typeSeed >> (i * 6)) % 64);
        }
        string memory purpose = _letters(typeSeed, _bound(purposeLength, 1, 32));
        uint64 expiresAt = expiresIn == 0 ? 0 : uint64(_bound(expiresIn, NOW + 1, type(uint64).max));
        uint256 deadline = _bound(deadlineIn, NOW, type(uint256).max);

        bytes memory signature = _sign(key, _grantDigest(signer, grantee, types, purpose, expiresAt, 0, deadline));
        vm.prank(RELAYER);
        uint64 grantId = registry.grantBySig(signer, grantee, types, purpose, expiresAt, 0, deadline, signature);
        _assertGrant(grantId, signer, grantee, types, purpose, expiresAt);
        vm.assertEq(registry.nonces(signer), 1, "nonce used");
        if (types.length > 0) {
            _assertAllowed(signer, grantee, types[types.length - 1], purpose, grantId);
        }
    }

    /// @dev A signature by any other key is refused, for grants and revocations.
    function testFuzz_BySig_RefusesEveryOtherSigner(uint256 key, uint256 otherKey, uint64 grantId) public {
        key = _bound(key, 1, SECP256K1_N - 1);
        otherKey = _bound(otherKey, 1, SECP256K1_N - 1);
        vm.assume(key != otherKey);
        address signer = vm.addr(key);
        bytes memory forged = _sign(otherKey, _grantDigest(signer, GRANTEE, _types(), "TREAT", 0, 0, DEADLINE));
        vm.expectRevert(abi.encodeWithSelector(IConsentRegistry.ConsentRegistryInvalidSignature.selector, signer));
        registry.grantBySig(signer, GRANTEE, _types(), "TREAT", 0, 0, DEADLINE, forged);

        _grantAs(signer, GRANTEE, _types(), "TREAT", 0);
        grantId = uint64(_bound(grantId, 0, 2));
        bytes memory forgedRevocation = _sign(otherKey, _revokeDigest(signer, grantId, 0, DEADLINE));
        vm.expectRevert(abi.encodeWithSelector(IConsentRegistry.ConsentRegistryInvalidSignature.selector, signer));
        registry.revokeBySig(signer, grantId, 0, DEADLINE, forgedRevocation);
    }

    /// @dev Any byte string is accepted as a resource type iff it is 1 to 64 ASCII letters.
    function testFuzz_Grant_ResourceTypeIsLettersOnly(bytes memory name) public {
        bool letters = name.length >= 1 && name.length <= 64;
        for (uint256 i = 0; i < name.length && letters; ++i) {
            letters = (name[i] >= "A" && name[i] <= "Z") || (name[i] >= "a" && name[i] <= "z");
        }
        if (!letters) {
            vm.expectRevert(abi.encodeWithSelector(IConsentRegistry.ConsentRegistryInvalidResourceType.selector, 0));
        }
        vm.prank(patient);
        registry.grant(GRANTEE, _types(string(name)), "TREAT", 0);
        vm.assertEq(registry.grantCount(), letters ? 1 : 0, "granted iff valid");
    }

    /// @dev A grant is active from its block until its expiry or its revocation, whichever comes first.
    function testFuzz_IsActive_FollowsExpiryAndRevocation(uint64 expiresIn, uint64 later, bool revoked) public {
        uint64 expiresAt = expiresIn == 0 ? 0 : uint64(_bound(expiresIn, NOW + 1, type(uint64).max));
        uint64 grantId = _grantAs(patient, GRANTEE, _types("Observation"), "TREAT", expiresAt);
        if (revoked) {
            vm.prank(patient);
            registry.revoke(grantId);
        }
        uint64 at = uint64(_bound(later, NOW, type(uint64).max));
        vm.warp(at);
        bool active = !revoked && (expiresAt == 0 || at < expiresAt);
        vm.assertTrue(registry.isActive(grantId) == active, "isActive");
        _assertAllowed(patient, GRANTEE, "Observation", "TREAT", active ? grantId : 0);
    }

    /// @dev `length` ASCII letters drawn from `seed`.
    function _letters(uint256 seed, uint256 length) internal pure returns (string memory) {
        bytes memory alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
        bytes memory out = new bytes(length);
        for (uint256 i = 0; i < length; ++i) {
            out[i] = alphabet[uint256(keccak256(abi.encode(seed, i))) % alphabet.length];
        }
        return string(out);
    }
}
