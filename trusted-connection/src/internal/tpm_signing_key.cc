// EC key whose signing goes to a TPM key; see tpm_signing_key.h. Uses the EC_KEY_METHOD
// interface, deprecated in OpenSSL 3.0 but the one way in 3.0 to give libssl a key that is
// signed with by another provider's key without that provider taking over verification.
#define OPENSSL_SUPPRESS_DEPRECATED
#include "internal/tpm_signing_key.h"

#include <openssl/ec.h>
#include <openssl/ecdsa.h>
#include <openssl/err.h>
#include <openssl/x509.h>

#include <mutex>

namespace vtm::tc::internal {
namespace {

// What the EC_KEY carries (ex_data): the TPM key and the providers that keep it usable.
struct Delegate {
  std::shared_ptr<ProviderContext> providers;
  PkeyPtr tpm_key;
};

int DelegateIndex() {
  static int index = EC_KEY_get_ex_new_index(
      0, nullptr, nullptr, nullptr,
      [](void* /*parent*/, void* ptr, CRYPTO_EX_DATA* /*ad*/, int /*idx*/, long /*argl*/, void* /*argp*/) {
        delete static_cast<Delegate*>(ptr);
      });
  return index;
}

int SignInTpm(int /*type*/, const unsigned char* dgst, int dlen, unsigned char* sig, unsigned int* siglen,
              const BIGNUM* /*kinv*/, const BIGNUM* /*r*/, EC_KEY* eckey) {
  auto* d = static_cast<Delegate*>(EC_KEY_get_ex_data(eckey, DelegateIndex()));
  if (d == nullptr) return 0;
  OsslPtr<EVP_PKEY_CTX, EVP_PKEY_CTX_free> ctx(
      EVP_PKEY_CTX_new_from_pkey(d->providers->libctx(), d->tpm_key.get(), "provider=tpm2"));
  size_t len = static_cast<size_t>(ECDSA_size(eckey));
  if (!ctx || EVP_PKEY_sign_init(ctx.get()) != 1 ||
      EVP_PKEY_sign(ctx.get(), sig, &len, dgst, static_cast<size_t>(dlen)) != 1) {
    return 0;
  }
  *siglen = static_cast<unsigned int>(len);
  return 1;
}

ECDSA_SIG* SignSigInTpm(const unsigned char* dgst, int dlen, const BIGNUM* kinv, const BIGNUM* r, EC_KEY* eckey) {
  unsigned char der[160];
  unsigned int len = 0;
  if (ECDSA_size(eckey) > static_cast<int>(sizeof der) || SignInTpm(0, dgst, dlen, der, &len, kinv, r, eckey) != 1) {
    return nullptr;
  }
  const unsigned char* p = der;
  return d2i_ECDSA_SIG(nullptr, &p, len);
}

const EC_KEY_METHOD* TpmMethod() {
  static EC_KEY_METHOD* method = [] {
    EC_KEY_METHOD* m = EC_KEY_METHOD_new(EC_KEY_OpenSSL());
    int (*sign_setup)(EC_KEY*, BN_CTX*, BIGNUM**, BIGNUM**) = nullptr;
    EC_KEY_METHOD_get_sign(EC_KEY_OpenSSL(), nullptr, &sign_setup, nullptr);
    EC_KEY_METHOD_set_sign(m, SignInTpm, sign_setup, SignSigInTpm);
    return m;
  }();
  return method;
}

}  // namespace

Result<PkeyPtr> MakeTpmDelegatingKey(const std::shared_ptr<ProviderContext>& providers, PkeyPtr tpm_key) {
  if (EVP_PKEY_get_base_id(tpm_key.get()) != EVP_PKEY_EC) {
    return Error(ErrorCode::kInvalidArgument, "the device key in the TPM is not an EC key (P-256 expected)");
  }
  // The public half, through SubjectPublicKeyInfo DER, as a software EC_KEY.
  unsigned char* spki = nullptr;
  int n = i2d_PUBKEY(tpm_key.get(), &spki);
  if (n <= 0) return OpenSslError(ErrorCode::kInternal, "exporting the device key's public half");
  const unsigned char* p = spki;
  EC_KEY* ec = d2i_EC_PUBKEY(nullptr, &p, n);
  OPENSSL_free(spki);
  if (ec == nullptr) return OpenSslError(ErrorCode::kInternal, "reading the device key's public half");
  auto* delegate = new Delegate{providers, std::move(tpm_key)};
  if (EC_KEY_set_method(ec, TpmMethod()) != 1 || EC_KEY_set_ex_data(ec, DelegateIndex(), delegate) != 1) {
    delete delegate;
    EC_KEY_free(ec);
    return OpenSslError(ErrorCode::kInternal, "attaching the TPM to the device key");
  }
  PkeyPtr key(EVP_PKEY_new());
  if (!key || EVP_PKEY_assign_EC_KEY(key.get(), ec) != 1) {
    EC_KEY_free(ec);
    return OpenSslError(ErrorCode::kInternal, "EVP_PKEY_assign_EC_KEY");
  }
  return key;
}

}  // namespace vtm::tc::internal
