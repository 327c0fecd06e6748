// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

/// @title The consent registry: which grantee may read which parts of a patient's record, for what purpose
/// @notice A patient (the account that holds the patient's wallet key) grants a grantee access to
/// some or all FHIR resource types of the patient's record, for one purpose of use, until an
/// expiry or until revoked. Gateways enforce what the registry says; the registry only records it.
/// The patient acts directly (`grant`, `revoke`) or signs EIP-712 typed data that anyone may relay
/// (`grantBySig`, `revokeBySig`), so a patient needs no ether. Smart-contract wallets sign through
/// ERC-1271.
///
/// Nothing stored here is patient data: the patient is a pseudonymous address, and the grantee a
/// 32-byte identifier by this convention (UTF-8 bytes, no separator beyond the prefix):
/// - a person with a wallet: `granteeOfAccount(wallet)`, the address zero-extended to 32 bytes;
/// - an app or an organization's system registered at a gateway: `keccak256("client:" || clientId)`;
/// - a gateway user without a wallet (a practitioner): `keccak256("user:" || userId)`.
/// `granteeOfName` computes the two hashes from the prefixed name.
interface IConsentRegistry {
    /// @notice One grant as the registry keeps it.
    /// @param patient the granting patient's account
    /// @param grantee who may read (see the convention above)
    /// @param expiresAt unix time (seconds) from which the grant no longer holds; 0: until revoked
    /// @param grantedBlock the number of the block that recorded the grant
    /// @param revokedBlock the number of the block that revoked it; 0 while it is not revoked
    /// @param purpose the purpose of use, e.g. "TREAT" (1 to 32 bytes)
    /// @param resourceTypes the FHIR resource types the grant opens (e.g. "Observation"); empty: every type
    struct Grant {
        address patient;
        bytes32 grantee;
        uint64 expiresAt;
        uint64 grantedBlock;
        uint64 revokedBlock;
        string purpose;
        string[] resourceTypes;
    }

    /// @notice A patient granted access.
    /// @param grantId the new grant's id (sequential from 1)
    /// @param patient the granting patient's account
    /// @param grantee who may read
    /// @param resourceTypes the resource types the grant opens; empty: every type
    /// @param purpose the purpose of use
    /// @param expiresAt unix time from which the grant no longer holds; 0: until revoked
    event ConsentGranted(
        uint64 indexed grantId,
        address indexed patient,
        bytes32 indexed grantee,
        string[] resourceTypes,
        string purpose,
        uint64 expiresAt
    );

    /// @notice A patient revoked a grant.
    /// @param grantId the revoked grant
    /// @param patient the patient who had granted it
    /// @param grantee who may no longer read under it
    event ConsentRevoked(uint64 indexed grantId, address indexed patient, bytes32 indexed grantee);

    /// @notice The signed request's deadline (unix time) has passed.
    error ConsentRegistryDeadlinePassed(uint256 deadline);

    /// @notice The signature is not the patient's (no ECDSA signature by the account, and no
    /// ERC-1271 approval by the contract at that address).
    error ConsentRegistryInvalidSignature(address patient);

    /// @notice The signed nonce is not the patient's current one: a replay, or a request
    /// signed before another one was relayed.
    /// @param patient the patient
    /// @param expected the nonce the next signed request of the patient must carry
    error ConsentRegistryInvalidNonce(address patient, uint256 expected);

    /// @notice There is no grant with this id.
    error ConsentRegistryUnknownGrant(uint64 grantId);

    /// @notice Only the patient who granted may revoke.
    /// @param grantId the grant
    /// @param account the account that tried to revoke it
    error ConsentRegistryNotGrantor(uint64 grantId, address account);

    /// @notice The grant is revoked already.
    error ConsentRegistryAlreadyRevoked(uint64 grantId);

    /// @notice A new grant must expire in the future (or never, with 0).
    error ConsentRegistryAlreadyExpired(uint64 expiresAt);

    /// @notice The grantee must not be zero.
    error ConsentRegistryZeroGrantee();

    /// @notice The purpose must hold 1 to 32 bytes.
    error ConsentRegistryInvalidPurpose();

    /// @notice Resource type number `index` is not 1 to 64 ASCII letters, or the list holds
    /// more than 64 types (then `index` is 64).
    error ConsentRegistryInvalidResourceType(uint256 index);

    /// @notice Records a grant of the caller (the patient) to `grantee`.
    /// @dev Refuses a zero grantee, an invalid purpose or resource type, and an `expiresAt`
    /// that is neither 0 nor in the future. Emits `ConsentGranted`.
    /// @param grantee who may read (see the convention above)
    /// @param resourceTypes the FHIR resource types opened (1 to 64 ASCII letters each, at most 64 types); empty: every type
    /// @param purpose the purpose of use (1 to 32 bytes)
    /// @param expiresAt unix time from which the grant no longer holds; 0: until revoked
    /// @return grantId the new grant's id
    function grant(bytes32 grantee, string[] calldata resourceTypes, string calldata purpose, uint64 expiresAt)
        external
        returns (uint64 grantId);

    /// @notice Records a grant that `patient` signed as EIP-712 typed data
    /// `Grant(address patient,bytes32 grantee,string[] resourceTypes,string purpose,uint64 expiresAt,uint256 nonce,uint256 deadline)`
    /// in the domain {name "ConsentRegistry", version "1", chainId, verifyingContract}; anyone may send it.
    /// @dev Checks, in this order: the deadline (`block.timestamp <= deadline`), the nonce
    /// (`nonces(patient)`, then used up), the signature (ECDSA, or ERC-1271 if `patient` holds
    /// code), then the grant like `grant`.
    /// @return grantId the new grant's id
    function grantBySig(
        address patient,
        bytes32 grantee,
        string[] calldata resourceTypes,
        string calldata purpose,
        uint64 expiresAt,
        uint256 nonce,
        uint256 deadline,
        bytes calldata signature
    ) external returns (uint64 grantId);

    /// @notice Revokes grant `grantId`; only its patient may. Emits `ConsentRevoked`.
    /// @dev An expired grant may be revoked too; a revoked one may not be revoked again.
    function revoke(uint64 grantId) external;

    /// @notice Revokes grant `grantId` of `patient`, who signed EIP-712 typed data
    /// `Revoke(address patient,uint64 grantId,uint256 nonce,uint256 deadline)`; anyone may send it.
    /// @dev Checks the deadline, the nonce and the signature like `grantBySig`, then revokes
    /// like `revoke` with `patient` as the caller.
    function revokeBySig(address patient, uint64 grantId, uint256 nonce, uint256 deadline, bytes calldata signature)
        external;

    /// @notice The nonce the next signed request of `patient` must carry (0 at first).
    function nonces(address patient) external view returns (uint256);

    /// @notice The id of the last grant (0 before the first); ids run from 1 to this.
    function grantCount() external view returns (uint64);

    /// @notice Grant `grantId`; reverts with `ConsentRegistryUnknownGrant` if there is none.
    function getGrant(uint64 grantId) external view returns (Grant memory);

    /// @notice The ids of every grant `patient` made, revoked and expired ones included, oldest first.
    function grantsOf(address patient) external view returns (uint64[] memory);

    /// @notice Whether grant `grantId` holds now: not revoked, and not expired at `block.timestamp`.
    /// @dev Reverts with `ConsentRegistryUnknownGrant` for an unknown id.
    function isActive(uint64 grantId) external view returns (bool);

    /// @notice Whether `patient` lets `grantee` read resources of type `resourceType` for
    /// `purpose` now: an active grant of that patient to that grantee with exactly that
    /// purpose whose resource types are empty or contain `resourceType`.
    /// @dev Looks through every grant of the patient, newest first; meant for off-chain calls
    /// and for contracts that check one decision (gateways keep an index of the events).
    /// @return allowed whether such a grant exists
    /// @return grantId the newest such grant, 0 if none
    function isAllowed(address patient, bytes32 grantee, string calldata resourceType, string calldata purpose)
        external
        view
        returns (bool allowed, uint64 grantId);

    /// @notice The EIP-712 domain separator of this registry on this chain.
    // solhint-disable-next-line func-name-mixedcase
    function DOMAIN_SEPARATOR() external view returns (bytes32);

    /// @notice The grantee of a person with a wallet: the address zero-extended to 32 bytes.
    function granteeOfAccount(address account) external pure returns (bytes32);

    /// @notice The grantee named `name`: `keccak256(bytes(name))`, for `"client:" || clientId`
    /// (an app or an organization's system) and `"user:" || userId` (a gateway user without a wallet).
    function granteeOfName(string calldata name) external pure returns (bytes32);
}
