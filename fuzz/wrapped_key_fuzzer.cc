// libFuzzer target for the wrapped-key format read back from the registry: MasterKey::Unwrap
// must refuse every input it did not produce (kDataLoss), never crash or over-read.
#include <cstdint>
#include <string>

#include "master_key.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const vtm::MasterKey* key = [] {
    vtm::SecretBytes k(32);
    for (size_t i = 0; i < k.size(); ++i) k.data()[i] = static_cast<uint8_t>(i);
    return new vtm::MasterKey(vtm::MasterKey::FromBytes(std::move(k)));
  }();
  auto r = key->Unwrap(std::string(reinterpret_cast<const char*>(data), size), "vtm:vm:fuzz:state-key");
  // A forged tag succeeding would mean the AEAD check is broken.
  if (r.ok() || r.error().code() != vtm::ErrorCode::kDataLoss) __builtin_trap();
  return 0;
}
