// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

/// @notice A plain RFC 9162 Merkle tree, written from the recursive definitions (section 2.1.1
/// MTH, section 2.1.3.1 PATH) and independent of the registry's iterative verifier, so the tests
/// can compare the two. Slow and memory-hungry: for tests only.
library ReferenceMerkleTree {
    /// @dev SHA-256(0x00 || input)
    function leafHash(bytes memory input) internal pure returns (bytes32) {
        return sha256(bytes.concat(bytes1(0x00), input));
    }

    /// @dev SHA-256(0x01 || left || right); the RFC's node hash over any two byte strings
    function nodeHash(bytes memory left, bytes memory right) internal pure returns (bytes32) {
        return sha256(bytes.concat(bytes1(0x01), left, right));
    }

    /// @dev MTH over the given leaf hashes; the empty tree hashes to SHA-256 of the empty string.
    function root(bytes32[] memory leafHashes) internal pure returns (bytes32) {
        if (leafHashes.length == 0) return sha256("");
        return _mth(leafHashes, 0, leafHashes.length);
    }

    /// @dev PATH(m, D[n]): the inclusion path of leaf `m`, sibling hashes from the leaf upwards.
    function path(bytes32[] memory leafHashes, uint256 m) internal pure returns (bytes32[] memory) {
        require(m < leafHashes.length, "ReferenceMerkleTree: m >= n");
        return _path(leafHashes, m, 0, leafHashes.length);
    }

    /// @dev The number of hashes in PATH(m, D[n]), by the same recursion as `_path`, for tree
    /// sizes too large to build.
    function pathLength(uint256 m, uint256 n) internal pure returns (uint256 length) {
        require(m < n, "ReferenceMerkleTree: m >= n");
        while (n > 1) {
            uint256 k = _largestPowerOfTwoBelow(n);
            if (m < k) {
                n = k;
            } else {
                m -= k;
                n -= k;
            }
            ++length;
        }
    }

    function _mth(bytes32[] memory d, uint256 start, uint256 end) private pure returns (bytes32) {
        uint256 n = end - start;
        if (n == 1) return d[start];
        uint256 k = _largestPowerOfTwoBelow(n);
        return nodeHash(abi.encode(_mth(d, start, start + k)), abi.encode(_mth(d, start + k, end)));
    }

    function _path(bytes32[] memory d, uint256 m, uint256 start, uint256 end) private pure returns (bytes32[] memory) {
        uint256 n = end - start;
        if (n == 1) return new bytes32[](0);
        uint256 k = _largestPowerOfTwoBelow(n);
        if (m < k) return append(_path(d, m, start, start + k), _mth(d, start + k, end));
        return append(_path(d, m - k, start + k, end), _mth(d, start, start + k));
    }

    /// @dev the largest power of two strictly below n (n > 1)
    function _largestPowerOfTwoBelow(uint256 n) private pure returns (uint256 k) {
        k = 1;
        while (k < n - k) {
            k <<= 1;
        }
    }

    /// @dev a copy of `list` with `last` appended
    function append(bytes32[] memory list, bytes32 last) internal pure returns (bytes32[] memory longer) {
        longer = new bytes32[](list.length + 1);
        for (uint256 i = 0; i < list.length; ++i) {
            longer[i] = list[i];
        }
        longer[list.length] = last;
    }
}
