// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

import {AnchorRegistry} from "../src/AnchorRegistry.sol";
import {ReferenceMerkleTree} from "./utils/ReferenceMerkleTree.sol";
import {TestBase} from "./utils/TestBase.sol";

/// @notice The published RFC 6962 / RFC 9162 SHA-256 vectors (test/data/rfc6962.json, values
/// from transparency-dev/merkle), checked against the registry's `hashLeaf` and
/// `verifyInclusion` on the EVM, with the SHA-256 precompile.
contract Rfc6962VectorsTest is TestBase {
    AnchorRegistry internal registry;
    string internal json;
    bytes32[] internal leafHashes;

    function setUp() public {
        registry = new AnchorRegistry();
        json = vm.readFile(string.concat(vm.projectRoot(), "/test/data/rfc6962.json"));
        string[] memory inputs = vm.parseJsonStringArray(json, ".leaf_inputs_hex");
        for (uint256 i = 0; i < inputs.length; ++i) {
            leafHashes.push(registry.hashLeaf(_hex(inputs[i])));
        }
    }

    function test_LeafHashVector() public view {
        bytes memory input = bytes(vm.parseJsonString(json, ".hash_vectors[0].input_ascii"));
        bytes32 expected = _hex32(vm.parseJsonString(json, ".hash_vectors[0].hash_hex"));
        vm.assertEq(registry.hashLeaf(input), expected, "hashLeaf(L123456)");
    }

    /// @dev The node vector hashes two 4-byte strings, which the registry (hashing 32-byte
    /// nodes only) cannot take: it checks the reference tree the root vectors are built with.
    function test_NodeHashVector() public view {
        bytes memory left = bytes(vm.parseJsonString(json, ".hash_vectors[1].left_ascii"));
        bytes memory right = bytes(vm.parseJsonString(json, ".hash_vectors[1].right_ascii"));
        bytes32 expected = _hex32(vm.parseJsonString(json, ".hash_vectors[1].hash_hex"));
        vm.assertEq(ReferenceMerkleTree.nodeHash(left, right), expected, "node(N123, N456)");
    }

    /// @dev Every published root (sizes 0 to 8) from the registry's leaf hashes, and every
    /// leaf of every one of those trees verified against the published root by the registry.
    function test_RootsAndEveryInclusionPath() public view {
        for (uint256 size = 0; size <= leafHashes.length; ++size) {
            bytes32 publishedRoot =
                _hex32(vm.parseJsonString(json, string.concat(".root_by_tree_size_hex[", vm.toString(size), "]")));
            bytes32[] memory leaves = _firstLeaves(size);
            vm.assertEq(
                ReferenceMerkleTree.root(leaves), publishedRoot, string.concat("root of size ", vm.toString(size))
            );
            for (uint256 index = 0; index < size; ++index) {
                bytes32[] memory path = ReferenceMerkleTree.path(leaves, index);
                vm.assertTrue(
                    registry.verifyInclusion(leaves[index], index, size, path, publishedRoot),
                    string.concat("leaf ", vm.toString(index), " of size ", vm.toString(size))
                );
            }
        }
    }

    /// @dev The published inclusion proofs: accepted as published, equal to the reference
    /// tree's paths, and refused when any one of their hashes is changed.
    function test_PublishedInclusionProofs() public view {
        uint256 checked = 0;
        for (uint256 p = 0; vm.keyExistsJson(json, _proofKey(p, "")); ++p) {
            uint256 index = vm.parseJsonUint(json, _proofKey(p, ".leaf_index"));
            uint256 size = vm.parseJsonUint(json, _proofKey(p, ".tree_size"));
            string[] memory hexPath = vm.parseJsonStringArray(json, _proofKey(p, ".proof_hex"));
            bytes32[] memory path = new bytes32[](hexPath.length);
            for (uint256 i = 0; i < path.length; ++i) {
                path[i] = _hex32(hexPath[i]);
            }
            bytes32 root =
                _hex32(vm.parseJsonString(json, string.concat(".root_by_tree_size_hex[", vm.toString(size), "]")));
            string memory name = string.concat("proof ", vm.toString(p));

            vm.assertTrue(registry.verifyInclusion(leafHashes[index], index, size, path, root), name);
            bytes32[] memory referencePath = ReferenceMerkleTree.path(_firstLeaves(size), index);
            vm.assertEq(referencePath.length, path.length, string.concat(name, ": reference path length"));
            for (uint256 i = 0; i < path.length; ++i) {
                vm.assertEq(referencePath[i], path[i], string.concat(name, ": reference path element"));
                path[i] ^= bytes32(uint256(1));
                vm.assertFalse(
                    registry.verifyInclusion(leafHashes[index], index, size, path, root),
                    string.concat(name, " with one hash changed")
                );
                path[i] ^= bytes32(uint256(1));
            }
            ++checked;
        }
        vm.assertEq(checked, 4, "the vectors hold four inclusion proofs");
    }

    function _firstLeaves(uint256 size) internal view returns (bytes32[] memory leaves) {
        leaves = new bytes32[](size);
        for (uint256 i = 0; i < size; ++i) {
            leaves[i] = leafHashes[i];
        }
    }

    function _proofKey(uint256 p, string memory member) internal pure returns (string memory) {
        return string.concat(".inclusion_proofs[", vm.toString(p), "]", member);
    }

    /// @dev the vectors write hex without the 0x prefix that the cheatcodes expect
    function _hex(string memory digits) internal pure returns (bytes memory) {
        return vm.parseBytes(string.concat("0x", digits));
    }

    function _hex32(string memory digits) internal pure returns (bytes32) {
        return vm.parseBytes32(string.concat("0x", digits));
    }
}
