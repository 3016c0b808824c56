// Zeroization and random key generation for SecretBytes.
#include "vtm/secret.h"

#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <sys/prctl.h>
#include <sys/resource.h>

#include <cerrno>
#include <cstring>

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

Status KeepSecretsOutOfCoreDumps() {
  const rlimit none{0, 0};
  if (setrlimit(RLIMIT_CORE, &none) != 0) {
    return Error(ErrorCode::kInternal, std::string("cannot set the core size limit to 0: ") + std::strerror(errno));
  }
  if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0) {
    return Error(ErrorCode::kInternal, std::string("cannot mark the process not dumpable: ") + std::strerror(errno));
  }
  return OkStatus();
}

}  // namespace vtm
