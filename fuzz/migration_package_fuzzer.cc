// libFuzzer target for what a destination vtmd reads from a source: SealedPackage::Parse (the
// package off the wire) and ParseKeyTransfer (the plaintext inside, reached only after AES-GCM
// authentication, but parsed strictly anyway). Beyond "no crash": rejections are
// kInvalidArgument (package) or kDataLoss (plaintext); whatever parses re-encodes to the very
// same bytes (both formats are canonical, so no two encodings mean one thing); and a parsed
// package never opens under a transport key that did not seal it.
// Link: vtm_migration.
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>

#include "vtm/migration_package.h"

extern "C" int LLVMFuzzerInitialize(int* /*argc*/, char*** /*argv*/) {
  setenv("TSS2_LOG", "all+none", /*overwrite=*/0);  // tss2-mu logs every malformed input
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using vtm::ErrorCode;
  using vtm::migration::KeyTransfer;
  using vtm::migration::SealedPackage;
  const std::string input(reinterpret_cast<const char*>(data), size);

  auto package = SealedPackage::Parse(input);
  if (package.ok()) {
    if (package->Serialize() != input) __builtin_trap();
    auto opened = vtm::migration::OpenSealedPackage(*package, package->header, [](const vtm::TpmCredential&) {
      vtm::SecretBytes key(32);
      std::memset(key.data(), 0x5a, key.size());
      return vtm::Result<vtm::SecretBytes>(std::move(key));
    });
    if (opened.ok() || opened.error().code() != ErrorCode::kDataLoss) __builtin_trap();
  } else if (package.error().code() != ErrorCode::kInvalidArgument) {
    __builtin_trap();
  }

  auto transfer = vtm::migration::ParseKeyTransfer(vtm::SecretBytes(data, size));
  if (transfer.ok()) {
    auto again = vtm::migration::SerializeKeyTransfer(*transfer);
    if (!again.ok() || again->size() != size || std::memcmp(again->data(), data, size) != 0) __builtin_trap();
  } else if (transfer.error().code() != ErrorCode::kDataLoss) {
    __builtin_trap();
  }
  return 0;
}
