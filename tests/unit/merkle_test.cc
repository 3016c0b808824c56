// RFC 6962 Merkle trees and the request leaves of batched attestation (vtm/merkle.h): the
// published Certificate Transparency test vectors, proofs for every leaf of every tree up to
// 40 leaves, and each way a proof from outside can be wrong.
#include "vtm/merkle.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "test_env.h"
#include "vtm/hex.h"

namespace vtm::attest {
namespace {


// The leaves of RFC 6962's reference tests (certificate-transparency merkle_tree_test).
std::vector<std::string> CtLeaves() {
  return {"",
          std::string(1, '\0'),
          "\x10",
          "\x20\x21",
          "\x30\x31",
          "\x40\x41\x42\x43",
          "\x50\x51\x52\x53\x54\x55\x56\x57",
          "\x60\x61\x62\x63\x64\x65\x66\x67\x68\x69\x6a\x6b\x6c\x6d\x6e\x6f"};
}

TEST(MerkleTest, RootsAreRfc6962ReferenceRoots) {
  const char* const kRoots[] = {
      "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
      "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
      "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
      "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
      "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
      "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
      "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
      "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"};
  const std::vector<std::string> all = CtLeaves();
  for (size_t n = 1; n <= all.size(); ++n) {
    auto root = MerkleRoot(std::vector<std::string>(all.begin(), all.begin() + static_cast<long>(n)));
    ASSERT_TRUE(root.ok()) << root.error().ToString();
    EXPECT_EQ(HexEncode(*root), kRoots[n - 1]) << n << " leaves";
  }
}

TEST(MerkleTest, EmptyBatchIsRefused) {
  auto root = MerkleRoot({});
  ASSERT_FALSE(root.ok());
  EXPECT_EQ(root.error().code(), ErrorCode::kInvalidArgument);
}

TEST(MerkleTest, EveryProofOfEveryTreeSizeLeadsToTheRoot) {
  for (uint64_t n = 1; n <= 40; ++n) {
    std::vector<std::string> leaves;
    for (uint64_t i = 0; i < n; ++i) leaves.push_back(HostLeaf("nonce " + std::to_string(i)));
    auto tree = MerkleTree::Build(leaves);
    ASSERT_TRUE(tree.ok());
    EXPECT_EQ(tree->size(), n);
    for (uint64_t i = 0; i < n; ++i) {
      auto proof = tree->Proof(i);
      ASSERT_TRUE(proof.ok());
      auto root = MerkleRootFromProof(leaves[i], *proof);
      ASSERT_TRUE(root.ok()) << "n=" << n << " i=" << i << ": " << root.error().ToString();
      EXPECT_EQ(*root, tree->Root()) << "n=" << n << " i=" << i;
      // Another request's leaf with this proof leads elsewhere (a proof for another request).
      auto other = MerkleRootFromProof(HostLeaf("someone else"), *proof);
      ASSERT_TRUE(other.ok());
      EXPECT_NE(*other, tree->Root());
    }
    EXPECT_FALSE(tree->Proof(n).ok());
  }
}

TEST(MerkleTest, MalformedProofsAreRefusedWithTheReason) {
  std::vector<std::string> leaves;
  for (int i = 0; i < 5; ++i) leaves.push_back(HostLeaf(std::to_string(i)));
  auto tree = MerkleTree::Build(leaves);
  ASSERT_TRUE(tree.ok());
  MerkleProof good = *tree->Proof(2);
  auto refused = [&](const MerkleProof& p) {
    auto r = MerkleRootFromProof(leaves[2], p);
    EXPECT_FALSE(r.ok());
    if (r.ok()) return std::string();
    EXPECT_EQ(r.error().code(), ErrorCode::kInvalidArgument);
    return r.error().message();
  };
  MerkleProof p = good;
  p.set_leaf_index(5);
  EXPECT_NE(refused(p).find("outside a tree of 5"), std::string::npos);
  p = good;
  p.set_tree_size(0);
  EXPECT_NE(refused(p).find("outside a tree of 0"), std::string::npos);
  p = good;
  p.mutable_path(0)->pop_back();
  EXPECT_NE(refused(p).find("31 bytes, not 32"), std::string::npos);
  p = good;
  p.add_path(std::string(32, 'x'));
  EXPECT_NE(refused(p).find("more path hashes"), std::string::npos);
  p = good;
  p.mutable_path()->RemoveLast();
  EXPECT_NE(refused(p).find("too few path hashes"), std::string::npos);
  p = good;
  for (int i = 0; i < 70; ++i) p.add_path(std::string(32, 'y'));
  EXPECT_NE(refused(p).find("at most 64"), std::string::npos);
  // A proof for another size of tree: well formed, but leads to another root.
  p = good;
  p.set_tree_size(4);
  auto other = MerkleRootFromProof(leaves[2], p);
  if (other.ok()) {
    EXPECT_NE(*other, tree->Root());
  }
}

TEST(MerkleTest, LeavesAreTheDocumentedLengthPrefixedHashes) {
  // Computed independently (Python hashlib/struct) from docs/attestation.md.
  EXPECT_EQ(HexEncode(HostLeaf("nonce-0123")), "e7ad3b3cfd6b21fb391c8c133b94e86369241a76f346cb65889aac38579923b9");
  EXPECT_EQ(HexEncode(DeepLeaf("nonce-0123", "11111111-2222-3333-4444-555555555555", std::string("\x00\x0b" "EK", 4),
                               std::string("\x00\x0b" "AK", 4), "guest-attest")),
            "3a7e7d12a2fae226f7f20c69bb9d57be9bbd31f99ad22e0a54824ffe09603b12");
  // Length prefixes keep field boundaries: moving a byte between fields changes the leaf.
  EXPECT_NE(DeepLeaf("ab", "c", "e", "a", "g"), DeepLeaf("a", "bc", "e", "a", "g"));
  EXPECT_NE(HostLeaf("x"), DeepLeaf("x", "", "", "", ""));
}

}  // namespace
}  // namespace vtm::attest
