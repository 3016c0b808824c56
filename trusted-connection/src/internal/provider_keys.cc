// Library context with the tpm2 provider and key loading by URI; see provider_keys.h.
#include "internal/provider_keys.h"

#include <openssl/err.h>
#include <openssl/store.h>

#include <cstdlib>
#include <mutex>

namespace vtm::tc::internal {

bool IsTpmKeyUri(const std::string& uri) { return uri.rfind("handle:", 0) == 0 || uri.rfind("object:", 0) == 0; }

Result<std::shared_ptr<ProviderContext>> ProviderContext::Create(bool with_tpm, const std::string& tcti) {
  std::shared_ptr<ProviderContext> ctx(new ProviderContext());
  ctx->libctx_ = OSSL_LIB_CTX_new();
  if (ctx->libctx_ == nullptr) return OpenSslError(ErrorCode::kInternal, "OSSL_LIB_CTX_new");
  ctx->default_ = OSSL_PROVIDER_load(ctx->libctx_, "default");
  if (ctx->default_ == nullptr) return OpenSslError(ErrorCode::kInternal, "loading OpenSSL's default provider");
  if (with_tpm) {
    // tpm2-openssl 1.1.1 takes its TCTI from TPM2OPENSSL_TCTI when it initialises (OpenSSL 3.0
    // has no API to pass provider parameters other than a config file); set it only around the
    // load, under a lock, so two contexts for different TPMs do not mix.
    static std::mutex mu;
    std::lock_guard<std::mutex> lock(mu);
    const char* before = std::getenv("TPM2OPENSSL_TCTI");
    std::string saved = before != nullptr ? before : "";
    if (!tcti.empty()) setenv("TPM2OPENSSL_TCTI", tcti.c_str(), 1);
    ctx->tpm2_ = OSSL_PROVIDER_load(ctx->libctx_, "tpm2");
    if (!tcti.empty()) {
      if (before != nullptr) {
        setenv("TPM2OPENSSL_TCTI", saved.c_str(), 1);
      } else {
        unsetenv("TPM2OPENSSL_TCTI");
      }
    }
    if (ctx->tpm2_ == nullptr) {
      return OpenSslError(ErrorCode::kUnavailable,
                          "loading the tpm2 OpenSSL provider (TCTI '" + tcti +
                              "'): is tpm2-openssl installed and the TPM reachable?");
    }
  }
  return ctx;
}

ProviderContext::~ProviderContext() {
  if (tpm2_ != nullptr) OSSL_PROVIDER_unload(tpm2_);
  if (default_ != nullptr) OSSL_PROVIDER_unload(default_);
  if (libctx_ != nullptr) OSSL_LIB_CTX_free(libctx_);
}

Result<PkeyPtr> ProviderContext::LoadPrivateKey(const std::string& uri) const {
  std::string store_uri = uri;
  if (!IsTpmKeyUri(uri) && uri.find(':') == std::string::npos) store_uri = "file:" + uri;
  OSSL_STORE_CTX* store =
      OSSL_STORE_open_ex(store_uri.c_str(), libctx_, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr);
  if (store == nullptr) {
    return OpenSslError(ErrorCode::kNotFound, "cannot open the device key '" + uri + "'" +
                                                  (IsTpmKeyUri(uri) ? " in the device TPM" : ""));
  }
  PkeyPtr key;
  (void)OSSL_STORE_expect(store, OSSL_STORE_INFO_PKEY);
  while (!key && OSSL_STORE_eof(store) == 0) {
    OSSL_STORE_INFO* info = OSSL_STORE_load(store);
    if (info == nullptr) break;
    if (OSSL_STORE_INFO_get_type(info) == OSSL_STORE_INFO_PKEY) key.reset(OSSL_STORE_INFO_get1_PKEY(info));
    OSSL_STORE_INFO_free(info);
  }
  OSSL_STORE_close(store);
  if (!key) return OpenSslError(ErrorCode::kNotFound, "'" + uri + "' holds no private key");
  ERR_clear_error();
  return key;
}

}  // namespace vtm::tc::internal
