// Zeroization and random key generation for SecretBytes.
#include "vtm/secret.h"

#include <openssl/crypto.h>
#include <openssl/rand.h>

namespace vtm {

void SecretBytes::Wipe() {
  if (!data_.empty()) OPENSSL_cleanse(data_.data(), data_.size());
}

Result<SecretBytes> RandomSecret(size_t n) {
  SecretBytes out(n);
  if (RAND_priv_bytes(out.data(), static_cast<int>(n)) != 1) {
    return Error(ErrorCode::kInternal, "the random number generator failed");
  }
  return out;
}

}  // namespace vtm
