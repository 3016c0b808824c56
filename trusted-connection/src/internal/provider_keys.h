// An OpenSSL library context with the default provider and, when a TPM is involved, the tpm2
// provider (tpm2-openssl), and private keys loaded through it by OSSL_STORE URI: a key in a TPM
// ("handle:0x81000010") stays there, OpenSSL only holds a reference to it.
// Thread safety: a ProviderContext may be shared; its OSSL_LIB_CTX is thread-safe.
#pragma once

#include <openssl/evp.h>
#include <openssl/provider.h>

#include <memory>
#include <string>

#include "vtm/error.h"
#include "vtm/ossl_ptr.h"

namespace vtm::tc::internal {

using PkeyPtr = OsslPtr<EVP_PKEY, EVP_PKEY_free>;

class ProviderContext {
 public:
  // with_tpm: load the tpm2 provider, reaching the TPM at `tcti` (empty: TPM2OPENSSL_TCTI or
  // the provider's default). The TCTI names a device, it is no secret.
  static Result<std::shared_ptr<ProviderContext>> Create(bool with_tpm, const std::string& tcti);
  ~ProviderContext();
  ProviderContext(const ProviderContext&) = delete;
  ProviderContext& operator=(const ProviderContext&) = delete;

  OSSL_LIB_CTX* libctx() const { return libctx_; }
  // A private key by OSSL_STORE URI or PEM file path.
  Result<PkeyPtr> LoadPrivateKey(const std::string& uri) const;

 private:
  ProviderContext() = default;
  OSSL_LIB_CTX* libctx_ = nullptr;
  OSSL_PROVIDER* default_ = nullptr;
  OSSL_PROVIDER* tpm2_ = nullptr;
};

// True for a URI the tpm2 provider serves ("handle:...", "object:...").
bool IsTpmKeyUri(const std::string& uri);

}  // namespace vtm::tc::internal
