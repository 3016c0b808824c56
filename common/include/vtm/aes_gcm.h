// AES-256-GCM, the one authenticated cipher of vtm's own formats (keys wrapped by the master
// key, sealed migration packages): a fresh random 96-bit IV per message, a 128-bit tag, and
// associated data that binds a ciphertext to its context. Plaintext lands only in SecretBytes.
// Stateless; thread-safe.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "vtm/error.h"
#include "vtm/secret.h"

namespace vtm {

inline constexpr size_t kAesGcmKeySize = 32;
inline constexpr size_t kAesGcmIvSize = 12;
inline constexpr size_t kAesGcmTagSize = 16;

struct AesGcmCiphertext {
  std::string iv;          // kAesGcmIvSize random bytes
  std::string ciphertext;  // as long as the plaintext
  std::string tag;         // kAesGcmTagSize bytes
};

// Encrypts size bytes at plaintext under key (kAesGcmKeySize bytes) with aad authenticated.
// kInvalidArgument for a key of another size or a message larger than 1 GiB.
Result<AesGcmCiphertext> AesGcmSeal(const SecretBytes& key, const uint8_t* plaintext, size_t size,
                                    std::string_view aad);
// Decrypts and authenticates. kDataLoss if the tag does not verify (altered ciphertext, IV,
// tag or aad, or another key), kInvalidArgument for wrong sizes. The plaintext is released only
// after the tag verified.
Result<SecretBytes> AesGcmOpen(const SecretBytes& key, std::string_view iv, std::string_view ciphertext,
                               std::string_view tag, std::string_view aad);

}  // namespace vtm
