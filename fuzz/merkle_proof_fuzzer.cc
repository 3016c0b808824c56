// libFuzzer target for batched-attestation Merkle proofs and quoted PCR values (both come in
// evidence): MerkleRootFromProof on a serialized MerkleProof, and ParsePcrValues on the raw
// bytes. Beyond "no crash": a proof the library makes for a tree of the input's size always
// leads back to that tree's root, and parsed PCR values marshal back to themselves.
// Link: vtm_attest.
#include <cstdint>
#include <string>
#include <vector>

#include "attestation.pb.h"
#include "vtm/merkle.h"
#include "vtm/quote.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string input(reinterpret_cast<const char*>(data), size);
  vtm::attest::MerkleProof proof;
  if (proof.ParseFromString(input)) (void)vtm::attest::MerkleRootFromProof("leaf", proof);
  auto pcrs = vtm::attest::ParsePcrValues(input);
  if (pcrs.ok()) {
    auto again = vtm::attest::MarshalPcrValues(pcrs->banks);
    if (again.ok() && !vtm::attest::ParsePcrValues(*again).ok()) __builtin_trap();
  }
  // Trees of 1..64 leaves from the input's bytes: every proof verifies.
  std::vector<std::string> leaves;
  for (size_t i = 0; i < size && leaves.size() < 64; ++i) leaves.push_back(std::string(1, input[i]));
  if (leaves.empty()) return 0;
  auto tree = vtm::attest::MerkleTree::Build(leaves);
  const uint64_t index = static_cast<uint64_t>(data[0]) % leaves.size();
  auto p = tree->Proof(index);
  auto root = vtm::attest::MerkleRootFromProof(leaves[index], *p);
  if (!root.ok() || *root != tree->Root()) __builtin_trap();
  return 0;
}
