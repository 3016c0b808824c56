// Internal to vtm_migration. Canonical byte strings that are hashed or authenticated (the import
// key's qualifying data, a package header as AES-GCM associated data): a label, then fields each
// length-prefixed (u32 big-endian) or fixed-size, so no two field lists give the same bytes. And
// the import key's attribute check, which the source makes when it verifies the key and again
// when it seals to it.
#pragma once

#include <tss2/tss2_tpm2_types.h>

#include <cstdint>
#include <string>
#include <string_view>

#include "vtm/error.h"

namespace vtm::migration::internal {

// kPermissionDenied unless key is a restricted decryption key (not signing) that is
// fixedTPM|fixedParent|sensitiveDataOrigin.
Status CheckImportKeyAttributes(const TPMT_PUBLIC& key);

inline void AppendU32(std::string& out, uint32_t v) {
  for (int i = 3; i >= 0; --i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}
inline void AppendU64(std::string& out, uint64_t v) {
  for (int i = 7; i >= 0; --i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}
inline void AppendLengthPrefixed(std::string& out, std::string_view field) {
  AppendU32(out, static_cast<uint32_t>(field.size()));
  out.append(field);
}
// A label with its NUL, so a label is never a prefix of another label plus data.
inline std::string Labelled(std::string_view label) {
  std::string out(label);
  out.push_back('\0');
  return out;
}

}  // namespace vtm::migration::internal
