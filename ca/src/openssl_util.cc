// Error-queue conversion and small key/digest helpers shared by vtm_ca's sources.
#include "openssl_util.h"

#include <openssl/err.h>

namespace vtm::ca {

std::string Sha256(const std::string& data) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (EVP_Digest(data.data(), data.size(), md, &len, EVP_sha256(), nullptr) != 1) return {};
  return std::string(reinterpret_cast<char*>(md), len);
}

Result<EvpPkeyPtr> PublicKeyFromSpki(const std::string& spki_der, const char* what) {
  const unsigned char* p = reinterpret_cast<const unsigned char*>(spki_der.data());
  const unsigned char* end = p + spki_der.size();
  EvpPkeyPtr key(d2i_PUBKEY(nullptr, &p, static_cast<long>(spki_der.size())));
  if (!key) {
    return OpenSslError(ErrorCode::kInvalidArgument, std::string(what) + " is not a DER SubjectPublicKeyInfo");
  }
  if (p != end) {
    return Error(ErrorCode::kInvalidArgument,
                 std::string(what) + " has trailing bytes after its DER SubjectPublicKeyInfo");
  }
  return key;
}

}  // namespace vtm::ca
