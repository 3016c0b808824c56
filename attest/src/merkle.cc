// RFC 6962 Merkle trees and the request leaves of batched attestation (see merkle.h). Proofs
// come from outside (evidence), so MerkleRootFromProof bounds every index and length.
#include "vtm/merkle.h"

#include <openssl/evp.h>

#include <cstdlib>
#include <utility>

#include "vtm/ossl_ptr.h"
#include "vtm/tpm_structures.h"

namespace vtm::attest {
namespace {

// One SHA-256 over the concatenation of parts.
std::string Sha256Of(std::initializer_list<std::string_view> parts) {
  OsslPtr<EVP_MD_CTX, EVP_MD_CTX_free> ctx(EVP_MD_CTX_new());
  std::string out(kMerkleHashSize, '\0');
  bool ok = ctx && EVP_DigestInit_ex(ctx.get(), DigestForTpmAlg(TPM2_ALG_SHA256), nullptr) == 1;
  for (std::string_view p : parts) ok = ok && EVP_DigestUpdate(ctx.get(), p.data(), p.size()) == 1;
  ok = ok && EVP_DigestFinal_ex(ctx.get(), reinterpret_cast<unsigned char*>(out.data()), nullptr) == 1;
  // SHA-256 in the default provider fails only when memory runs out; no hash is safer than a
  // wrong one.
  if (!ok) std::abort();
  return out;
}

void AppendField(std::string& out, std::string_view field) {
  const auto n = static_cast<uint32_t>(field.size());
  out += static_cast<char>(n >> 24);
  out += static_cast<char>((n >> 16) & 0xff);
  out += static_cast<char>((n >> 8) & 0xff);
  out += static_cast<char>(n & 0xff);
  out.append(field);
}

std::string LabelledLeaf(std::string_view label, std::initializer_list<std::string_view> fields) {
  std::string preimage(label);
  for (std::string_view f : fields) AppendField(preimage, f);
  return Sha256Of({preimage});
}

}  // namespace

std::string HostLeaf(std::string_view nonce) { return LabelledLeaf("vtm-host-v1", {nonce}); }

std::string DeepLeaf(std::string_view nonce, std::string_view vm_uuid, std::string_view ek_name,
                     std::string_view ak_name, std::string_view guest_attest) {
  const std::string attest_digest = Sha256Of({guest_attest});
  return LabelledLeaf("vtm-deep-v1", {nonce, vm_uuid, ek_name, ak_name, attest_digest});
}

std::string MerkleLeafHash(std::string_view leaf) { return Sha256Of({std::string_view("\0", 1), leaf}); }

std::string MerkleNodeHash(std::string_view left, std::string_view right) {
  return Sha256Of({std::string_view("\1", 1), left, right});
}

Result<MerkleTree> MerkleTree::Build(const std::vector<std::string>& leaves) {
  if (leaves.empty()) return Error(ErrorCode::kInvalidArgument, "a Merkle tree needs at least one leaf");
  MerkleTree tree;
  std::vector<std::string> level;
  level.reserve(leaves.size());
  for (const std::string& leaf : leaves) level.push_back(MerkleLeafHash(leaf));
  tree.levels_.push_back(std::move(level));
  while (tree.levels_.back().size() > 1) {
    const std::vector<std::string>& below = tree.levels_.back();
    std::vector<std::string> above;
    above.reserve((below.size() + 1) / 2);
    for (size_t i = 0; i + 1 < below.size(); i += 2) above.push_back(MerkleNodeHash(below[i], below[i + 1]));
    if (below.size() % 2 == 1) above.push_back(below.back());
    tree.levels_.push_back(std::move(above));
  }
  return tree;
}

Result<MerkleProof> MerkleTree::Proof(uint64_t index) const {
  if (index >= size()) {
    return Error(ErrorCode::kInvalidArgument,
                 "leaf " + std::to_string(index) + " is outside a tree of " + std::to_string(size()) + " leaves");
  }
  MerkleProof proof;
  proof.set_leaf_index(index);
  proof.set_tree_size(size());
  uint64_t i = index;
  for (size_t l = 0; l + 1 < levels_.size(); ++l) {
    const std::vector<std::string>& level = levels_[l];
    const uint64_t sibling = i ^ 1;
    if (sibling < level.size()) proof.add_path(level[sibling]);  // else: promoted unchanged
    i /= 2;
  }
  return proof;
}

Result<std::string> MerkleRoot(const std::vector<std::string>& leaves) {
  VTM_ASSIGN_OR_RETURN(MerkleTree tree, MerkleTree::Build(leaves));
  return tree.Root();
}

Result<std::string> MerkleRootFromProof(std::string_view leaf, const MerkleProof& proof) {
  const uint64_t size = proof.tree_size();
  if (size == 0 || proof.leaf_index() >= size) {
    return Error(ErrorCode::kInvalidArgument, "Merkle proof: leaf index " + std::to_string(proof.leaf_index()) +
                                                  " is outside a tree of " + std::to_string(size) + " leaves");
  }
  if (static_cast<size_t>(proof.path_size()) > kMaxMerkleProofDepth) {
    return Error(ErrorCode::kInvalidArgument,
                 "Merkle proof: " + std::to_string(proof.path_size()) + " path hashes (at most 64)");
  }
  // RFC 9162 2.1.3.2: fn walks the leaf's index up, sn the last index of the tree; a right
  // edge where the leaf's subtree has no sibling skips levels without consuming a hash.
  uint64_t fn = proof.leaf_index();
  uint64_t sn = size - 1;
  std::string r = MerkleLeafHash(leaf);
  for (int k = 0; k < proof.path_size(); ++k) {
    const std::string& p = proof.path(k);
    if (p.size() != kMerkleHashSize) {
      return Error(ErrorCode::kInvalidArgument, "Merkle proof: path hash " + std::to_string(k) + " has " +
                                                    std::to_string(p.size()) + " bytes, not 32");
    }
    if (sn == 0) {
      return Error(ErrorCode::kInvalidArgument, "Merkle proof: more path hashes than a tree of " +
                                                    std::to_string(size) + " leaves has levels");
    }
    if ((fn & 1) != 0 || fn == sn) {
      r = MerkleNodeHash(p, r);
      while ((fn & 1) == 0 && fn != 0) {
        fn >>= 1;
        sn >>= 1;
      }
    } else {
      r = MerkleNodeHash(r, p);
    }
    fn >>= 1;
    sn >>= 1;
  }
  if (sn != 0) {
    return Error(ErrorCode::kInvalidArgument,
                 "Merkle proof: too few path hashes for leaf " + std::to_string(proof.leaf_index()) + " of " +
                     std::to_string(size));
  }
  return r;
}

}  // namespace vtm::attest
