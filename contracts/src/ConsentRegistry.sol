// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {SignatureChecker} from "@openzeppelin/contracts/utils/cryptography/SignatureChecker.sol";
import {Nonces} from "@openzeppelin/contracts/utils/Nonces.sol";
import {IConsentRegistry} from "./IConsentRegistry.sol";

/// @title ConsentRegistry
/// @notice One registry serves every patient and every gateway on a chain (see
/// contracts/README.md for why). No owner, no roles, no upgrades: a grant is the patient's
/// alone to make and to revoke, and nobody can change the rules below.
/// @dev EIP-712 hashing and the domain (with ERC-5267 `eip712Domain`), signature checking
/// (ECDSA without malleable signatures, or ERC-1271) and the per-patient nonces are
/// OpenZeppelin's.
contract ConsentRegistry is IConsentRegistry, EIP712, Nonces {
    /// @dev The EIP-712 type of a signed grant; `string[]` is hashed as the keccak256 of the
    /// concatenated keccak256 of its elements, each `string` as the keccak256 of its bytes.
    bytes32 private constant GRANT_TYPEHASH = keccak256(
        "Grant(address patient,bytes32 grantee,string[] resourceTypes,string purpose,uint64 expiresAt,uint256 nonce,uint256 deadline)"
    );

    /// @dev The EIP-712 type of a signed revocation.
    bytes32 private constant REVOKE_TYPEHASH =
        keccak256("Revoke(address patient,uint64 grantId,uint256 nonce,uint256 deadline)");

    uint256 private constant MAX_PURPOSE_LENGTH = 32;
    uint256 private constant MAX_RESOURCE_TYPE_LENGTH = 64;
    uint256 private constant MAX_RESOURCE_TYPES = 64;

    /// @dev A grant as stored: the fields of `Grant` ordered so that the patient and the
    /// expiry share a slot, and both block numbers share another (a revocation rewrites a
    /// slot that is already set instead of setting a fresh one).
    struct StoredGrant {
        address patient;
        uint64 expiresAt;
        bytes32 grantee;
        uint64 grantedBlock;
        uint64 revokedBlock;
        string purpose;
        string[] resourceTypes;
    }

    uint64 private _grantCount;
    mapping(uint64 grantId => StoredGrant) private _grants;
    mapping(address patient => uint64[] grantIds) private _grantsOf;

    constructor() EIP712("ConsentRegistry", "1") {}

    // -------------------------------------------------------------------------------------
    // changes

    /// @inheritdoc IConsentRegistry
    function grant(bytes32 grantee, string[] calldata resourceTypes, string calldata purpose, uint64 expiresAt)
        external
        returns (uint64 grantId)
    {
        return _grant(msg.sender, grantee, resourceTypes, purpose, expiresAt);
    }

    /// @inheritdoc IConsentRegistry
    function grantBySig(
        address patient,
        bytes32 grantee,
        string[] calldata resourceTypes,
        string calldata purpose,
        uint64 expiresAt,
        uint256 nonce,
        uint256 deadline,
        bytes calldata signature
    ) external returns (uint64 grantId) {
        bytes32 structHash = keccak256(
            abi.encode(
                GRANT_TYPEHASH,
                patient,
                grantee,
                _hashStrings(resourceTypes),
                keccak256(bytes(purpose)),
                expiresAt,
                nonce,
                deadline
            )
        );
        _checkSigned(patient, structHash, nonce, deadline, signature);
        return _grant(patient, grantee, resourceTypes, purpose, expiresAt);
    }

    /// @inheritdoc IConsentRegistry
    function revoke(uint64 grantId) external {
        _revoke(msg.sender, grantId);
    }

    /// @inheritdoc IConsentRegistry
    function revokeBySig(address patient, uint64 grantId, uint256 nonce, uint256 deadline, bytes calldata signature)
        external
    {
        bytes32 structHash = keccak256(abi.encode(REVOKE_TYPEHASH, patient, grantId, nonce, deadline));
        _checkSigned(patient, structHash, nonce, deadline, signature);
        _revoke(patient, grantId);
    }

    // -------------------------------------------------------------------------------------
    // views

    /// @inheritdoc IConsentRegistry
    function nonces(address patient) public view override(IConsentRegistry, Nonces) returns (uint256) {
        return super.nonces(patient);
    }

    /// @inheritdoc IConsentRegistry
    function grantCount() external view returns (uint64) {
        return _grantCount;
    }

    /// @inheritdoc IConsentRegistry
    function getGrant(uint64 grantId) external view returns (Grant memory) {
        StoredGrant storage stored = _stored(grantId);
        return Grant({
            patient: stored.patient,
            grantee: stored.grantee,
            expiresAt: stored.expiresAt,
            grantedBlock: stored.grantedBlock,
            revokedBlock: stored.revokedBlock,
            purpose: stored.purpose,
            resourceTypes: stored.resourceTypes
        });
    }

    /// @inheritdoc IConsentRegistry
    function grantsOf(address patient) external view returns (uint64[] memory) {
        return _grantsOf[patient];
    }

    /// @inheritdoc IConsentRegistry
    function isActive(uint64 grantId) external view returns (bool) {
        return _isActive(_stored(grantId));
    }

    /// @inheritdoc IConsentRegistry
    function isAllowed(address patient, bytes32 grantee, string calldata resourceType, string calldata purpose)
        external
        view
        returns (bool allowed, uint64 grantId)
    {
        uint64[] storage ids = _grantsOf[patient];
        bytes32 purposeHash = keccak256(bytes(purpose));
        bytes32 typeHash = keccak256(bytes(resourceType));
        for (uint256 i = ids.length; i > 0; --i) {
            StoredGrant storage stored = _grants[ids[i - 1]];
            if (
                stored.grantee == grantee && _isActive(stored) && keccak256(bytes(stored.purpose)) == purposeHash
                    && _opens(stored.resourceTypes, typeHash)
            ) {
                return (true, ids[i - 1]);
            }
        }
        return (false, 0);
    }

    /// @inheritdoc IConsentRegistry
    function DOMAIN_SEPARATOR() external view returns (bytes32) {
        return _domainSeparatorV4();
    }

    /// @inheritdoc IConsentRegistry
    function granteeOfAccount(address account) external pure returns (bytes32) {
        return bytes32(uint256(uint160(account)));
    }

    /// @inheritdoc IConsentRegistry
    function granteeOfName(string calldata name) external pure returns (bytes32) {
        return keccak256(bytes(name));
    }

    // -------------------------------------------------------------------------------------
    // internals

    function _grant(
        address patient,
        bytes32 grantee,
        string[] calldata resourceTypes,
        string calldata purpose,
        uint64 expiresAt
    ) private returns (uint64 grantId) {
        if (grantee == bytes32(0)) revert ConsentRegistryZeroGrantee();
        if (bytes(purpose).length == 0 || bytes(purpose).length > MAX_PURPOSE_LENGTH) {
            revert ConsentRegistryInvalidPurpose();
        }
        _checkResourceTypes(resourceTypes);
        // forge-lint: disable-next-line(block-timestamp)
        if (expiresAt != 0 && expiresAt <= block.timestamp) revert ConsentRegistryAlreadyExpired(expiresAt);

        // ids are sequential from 1; 2^64 - 1 grants cannot be paid for
        grantId = ++_grantCount;
        StoredGrant storage stored = _grants[grantId];
        stored.patient = patient;
        stored.expiresAt = expiresAt;
        stored.grantee = grantee;
        stored.grantedBlock = uint64(block.number);
        stored.purpose = purpose;
        for (uint256 i = 0; i < resourceTypes.length; ++i) {
            stored.resourceTypes.push(resourceTypes[i]);
        }
        _grantsOf[patient].push(grantId);
        emit ConsentGranted(grantId, patient, grantee, resourceTypes, purpose, expiresAt);
    }

    function _revoke(address patient, uint64 grantId) private {
        StoredGrant storage stored = _stored(grantId);
        if (stored.patient != patient) revert ConsentRegistryNotGrantor(grantId, patient);
        if (stored.revokedBlock != 0) revert ConsentRegistryAlreadyRevoked(grantId);
        stored.revokedBlock = uint64(block.number);
        emit ConsentRevoked(grantId, patient, stored.grantee);
    }

    /// @dev Checks a signed request: the deadline, then the nonce (used up here; a later
    /// revert gives it back), then the signature over the typed data `structHash`.
    function _checkSigned(
        address patient,
        bytes32 structHash,
        uint256 nonce,
        uint256 deadline,
        bytes calldata signature
    ) private {
        // a validator's few seconds of leeway over the time do not matter for deadlines and expiries
        // forge-lint: disable-next-line(block-timestamp)
        if (block.timestamp > deadline) revert ConsentRegistryDeadlinePassed(deadline);
        uint256 expected = _useNonce(patient);
        if (nonce != expected) revert ConsentRegistryInvalidNonce(patient, expected);
        if (!SignatureChecker.isValidSignatureNow(patient, _hashTypedDataV4(structHash), signature)) {
            revert ConsentRegistryInvalidSignature(patient);
        }
    }

    /// @dev Each type 1 to 64 ASCII letters, at most 64 types.
    function _checkResourceTypes(string[] calldata resourceTypes) private pure {
        if (resourceTypes.length > MAX_RESOURCE_TYPES) revert ConsentRegistryInvalidResourceType(MAX_RESOURCE_TYPES);
        for (uint256 i = 0; i < resourceTypes.length; ++i) {
            bytes calldata name = bytes(resourceTypes[i]);
            if (name.length == 0 || name.length > MAX_RESOURCE_TYPE_LENGTH) {
                revert ConsentRegistryInvalidResourceType(i);
            }
            for (uint256 j = 0; j < name.length; ++j) {
                // ASCII letters: clearing bit 5 maps 'a'..'z' onto 'A'..'Z'
                bytes1 upper = name[j] & 0xDF;
                if (upper < "A" || upper > "Z") revert ConsentRegistryInvalidResourceType(i);
            }
        }
    }

    /// @dev EIP-712 `string[]`: keccak256 of the concatenated keccak256 of the elements.
    function _hashStrings(string[] calldata values) private pure returns (bytes32) {
        bytes32[] memory hashes = new bytes32[](values.length);
        for (uint256 i = 0; i < values.length; ++i) {
            hashes[i] = keccak256(bytes(values[i]));
        }
        return keccak256(abi.encodePacked(hashes));
    }

    function _stored(uint64 grantId) private view returns (StoredGrant storage stored) {
        stored = _grants[grantId];
        if (stored.patient == address(0)) revert ConsentRegistryUnknownGrant(grantId);
    }

    function _isActive(StoredGrant storage stored) private view returns (bool) {
        // forge-lint: disable-next-line(block-timestamp)
        return stored.revokedBlock == 0 && (stored.expiresAt == 0 || block.timestamp < stored.expiresAt);
    }

    /// @dev Whether a grant's types (empty: all) include the type whose keccak256 is `typeHash`.
    function _opens(string[] storage resourceTypes, bytes32 typeHash) private view returns (bool) {
        if (resourceTypes.length == 0) return true;
        for (uint256 i = 0; i < resourceTypes.length; ++i) {
            if (keccak256(bytes(resourceTypes[i])) == typeHash) return true;
        }
        return false;
    }
}
