// SoftwareSigner: a P-256 key held in process memory, for the `sealed` CA residency mode,
// test manufacturer CAs and tests. The private key leaves only as DER inside SecretBytes.
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/objects.h>

#include "openssl_util.h"
#include "vtm/x509.h"

namespace vtm::ca {

struct SoftwareSigner::Impl {
  EvpPkeyPtr key;
};

SoftwareSigner::~SoftwareSigner() = default;

namespace {

Result<std::string> SpkiOf(EVP_PKEY* key) { return ToDer<EVP_PKEY, i2d_PUBKEY>(key, "the signer's public key"); }

bool IsP256(EVP_PKEY* key) {
  if (!EVP_PKEY_is_a(key, "EC")) return false;
  char group[64] = {};
  size_t len = 0;
  if (EVP_PKEY_get_group_name(key, group, sizeof group, &len) != 1) return false;
  return OBJ_sn2nid(group) == NID_X9_62_prime256v1 || EC_curve_nist2nid(group) == NID_X9_62_prime256v1;
}

}  // namespace

Result<std::unique_ptr<SoftwareSigner>> SoftwareSigner::Generate() {
  EvpPkeyPtr key(EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256"));
  if (!key) return OpenSslError(ErrorCode::kInternal, "generating a P-256 CA key");
  std::unique_ptr<SoftwareSigner> s(new SoftwareSigner());
  VTM_ASSIGN_OR_RETURN(s->spki_, SpkiOf(key.get()));
  s->impl_ = std::make_unique<Impl>();
  s->impl_->key = std::move(key);
  return s;
}

Result<std::unique_ptr<SoftwareSigner>> SoftwareSigner::FromPrivateKeyDer(const SecretBytes& der) {
  const unsigned char* p = der.data();
  // d2i_AutoPrivateKey recognises both PKCS#8 and the SEC1 ECPrivateKey that PrivateKeyDer writes.
  EvpPkeyPtr key(d2i_AutoPrivateKey(nullptr, &p, static_cast<long>(der.size())));
  if (!key) return OpenSslError(ErrorCode::kDataLoss, "the CA private key is not a DER PKCS#8 or EC private key");
  if (p != der.data() + der.size()) {
    return Error(ErrorCode::kDataLoss, "the CA private key has trailing bytes after its DER encoding");
  }
  if (!IsP256(key.get())) {
    return Error(ErrorCode::kInvalidArgument, "the CA private key is not an ECC NIST P-256 key");
  }
  std::unique_ptr<SoftwareSigner> s(new SoftwareSigner());
  VTM_ASSIGN_OR_RETURN(s->spki_, SpkiOf(key.get()));
  s->impl_ = std::make_unique<Impl>();
  s->impl_->key = std::move(key);
  return s;
}

SecretBytes SoftwareSigner::PrivateKeyDer() const {
  unsigned char* buf = nullptr;
  const int len = i2d_PrivateKey(impl_->key.get(), &buf);
  if (len <= 0) return SecretBytes();
  SecretBytes out(buf, static_cast<size_t>(len));
  OPENSSL_clear_free(buf, static_cast<size_t>(len));  // the intermediate copy is key material too
  return out;
}

Result<std::string> SoftwareSigner::SignDigest(const std::string& sha256_digest) {
  if (sha256_digest.size() != 32) {
    return Error(ErrorCode::kInvalidArgument,
                 "SignDigest needs a 32-byte SHA-256 digest, got " + std::to_string(sha256_digest.size()) + " bytes");
  }
  EvpPkeyCtxPtr ctx(EVP_PKEY_CTX_new_from_pkey(nullptr, impl_->key.get(), nullptr));
  if (!ctx || EVP_PKEY_sign_init(ctx.get()) != 1 || EVP_PKEY_CTX_set_signature_md(ctx.get(), EVP_sha256()) != 1) {
    return OpenSslError(ErrorCode::kInternal, "preparing an ECDSA signature");
  }
  const auto* tbs = reinterpret_cast<const unsigned char*>(sha256_digest.data());
  size_t len = 0;
  if (EVP_PKEY_sign(ctx.get(), nullptr, &len, tbs, sha256_digest.size()) != 1) {
    return OpenSslError(ErrorCode::kInternal, "sizing an ECDSA signature");
  }
  std::string sig(len, '\0');
  if (EVP_PKEY_sign(ctx.get(), reinterpret_cast<unsigned char*>(sig.data()), &len, tbs, sha256_digest.size()) != 1) {
    return OpenSslError(ErrorCode::kInternal, "making an ECDSA signature");
  }
  sig.resize(len);
  return sig;
}

}  // namespace vtm::ca
