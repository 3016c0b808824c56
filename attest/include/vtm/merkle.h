// RFC 6962 (Certificate Transparency) Merkle trees for batched attestation: vtmd collects the
// requests that arrive within a short window, quotes once over the tree's root (the host
// quote's extraData) and hands each requester its inclusion proof; the verifier recomputes the
// root from its own leaf and the proof. Hashing is SHA-256 with RFC 6962's domain separation:
// leaf hash = SHA-256(0x00 || leaf), interior node = SHA-256(0x01 || left || right), and the
// tree over n leaves splits at the largest power of two below n (any n >= 1, no padding).
// The leaves are the request commitments of proto/attestation.proto (HostLeaf, DeepLeaf).
// Byte-level description: docs/attestation.md. Stateless functions; a MerkleTree is immutable
// after construction, so it may be read from several threads.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "attestation.pb.h"
#include "vtm/error.h"

namespace vtm::attest {

inline constexpr size_t kMerkleHashSize = 32;     // SHA-256
inline constexpr size_t kMaxMerkleProofDepth = 64;  // a tree of 2^64 leaves

// Request commitments (the Merkle leaves, 32 bytes each). A leaf is SHA-256 over a domain
// label (ASCII, no terminator) followed by each field as a 4-byte big-endian length and the
// field's bytes; distinct labels keep a host leaf from ever equalling a deep leaf.
// Host attestation: SHA-256("vtm-host-v1" || len(nonce) || nonce).
std::string HostLeaf(std::string_view nonce);
// Deep attestation of one VM: SHA-256("vtm-deep-v1" || len||nonce || len||vm_uuid ||
// len||ek_name || len||ak_name || len||SHA-256(guest_attest)), with guest_attest the guest
// quote's marshalled TPMS_ATTEST as it was signed (hashed here; pass the attest bytes).
std::string DeepLeaf(std::string_view nonce, std::string_view vm_uuid, std::string_view ek_name,
                     std::string_view ak_name, std::string_view guest_attest);

// RFC 6962 hashes.
std::string MerkleLeafHash(std::string_view leaf);
std::string MerkleNodeHash(std::string_view left, std::string_view right);

// The tree over leaves (each hashed with MerkleLeafHash), built once; Root() and Proof(i) are
// then O(1) and O(log n). kInvalidArgument for an empty batch.
class MerkleTree {
 public:
  static Result<MerkleTree> Build(const std::vector<std::string>& leaves);

  const std::string& Root() const { return levels_.back().front(); }
  uint64_t size() const { return levels_.front().size(); }
  // The inclusion proof of leaf `index` (path from the leaf's sibling up to the root's child).
  // kInvalidArgument for an index outside the tree.
  Result<MerkleProof> Proof(uint64_t index) const;

 private:
  MerkleTree() = default;
  // levels_[0]: leaf hashes; each next level pairs neighbours, and an odd last node moves up
  // unchanged, which yields exactly RFC 6962's tree for any n.
  std::vector<std::vector<std::string>> levels_;
};

// RFC 6962 root over leaves (MerkleTree::Build(leaves).Root()).
Result<std::string> MerkleRoot(const std::vector<std::string>& leaves);

// The root that proof leads to from leaf (RFC 9162 2.1.3.2). kInvalidArgument for a proof that
// cannot belong to any tree of its size: index >= tree_size, a path element that is not 32
// bytes, a path too long or too short for the index and size.
Result<std::string> MerkleRootFromProof(std::string_view leaf, const MerkleProof& proof);

}  // namespace vtm::attest
