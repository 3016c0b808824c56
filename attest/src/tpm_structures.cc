// TPM structures as OpenSSL sees them: public areas as keys and SPKIs, TPM names, signatures.
// One implementation for the Tpm class (ReadPublic, SignDigest), for verifiers holding a TPM
// public area but no TPM (SpkiFromTpmPublic, TpmNameOfPublic), the verifier's quote checks and
// the CA's evidence check. All of it may parse outside data.
#include "vtm/tpm_structures.h"

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/param_build.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>
#include <tss2/tss2_mu.h>

#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <string>

#include "vtm/mutex.h"
#include "vtm/ossl_ptr.h"

namespace vtm {
namespace {

using ParamBldPtr = OsslPtr<OSSL_PARAM_BLD, OSSL_PARAM_BLD_free>;
using ParamPtr = OsslPtr<OSSL_PARAM, OSSL_PARAM_free>;
using PkeyCtxPtr = OsslPtr<EVP_PKEY_CTX, EVP_PKEY_CTX_free>;
using PkeyPtr = OsslPtr<EVP_PKEY, EVP_PKEY_free>;
using BnPtr = OsslPtr<BIGNUM, BN_free>;
using EcdsaSigPtr = OsslPtr<ECDSA_SIG, ECDSA_SIG_free>;

template <typename T, int (*I2d)(const T*, unsigned char**)>
Result<std::string> ToDer(const T* object, const char* what) {
  const int len = I2d(object, nullptr);
  if (len <= 0) return Error(ErrorCode::kInternal, std::string("encoding ") + what + " failed");
  std::string der(static_cast<size_t>(len), '\0');
  auto* out = reinterpret_cast<unsigned char*>(der.data());
  if (I2d(object, &out) != len) return Error(ErrorCode::kInternal, std::string("encoding ") + what + " failed");
  return der;
}

// Keys that passed BuildPublicKey, by the exact bytes they were built from (key type, curve or
// exponent, point or modulus). A verifier sees the same few AKs for every quote, and building
// an OpenSSL key with its public-key check (a scalar multiplication for EC) costs about as much
// as the signature check itself. Bounded: emptied when full (a cache, not a record). Only
// valid keys are kept, so the check is never skipped for bytes it has not passed. EVP_PKEYs are
// shared read-only across threads (OpenSSL 3 allows that once built); each holder has a reference.
class PublicKeyCache {
 public:
  static constexpr size_t kMaxKeys = 256;
  PkeyPtr Find(const std::string& key_bytes) EXCLUDES(mu_) {
    MutexLock lock(mu_);
    auto it = keys_.find(key_bytes);
    if (it == keys_.end() || EVP_PKEY_up_ref(it->second.get()) != 1) return nullptr;
    return PkeyPtr(it->second.get());
  }
  void Add(const std::string& key_bytes, EVP_PKEY* key) EXCLUDES(mu_) {
    if (EVP_PKEY_up_ref(key) != 1) return;
    PkeyPtr ref(key);
    MutexLock lock(mu_);
    if (keys_.size() >= kMaxKeys) keys_.clear();
    keys_.emplace(key_bytes, std::move(ref));
  }

 private:
  Mutex mu_;
  std::map<std::string, PkeyPtr> keys_ GUARDED_BY(mu_);
};

PublicKeyCache& KeyCache() {
  static auto* cache = new PublicKeyCache();  // never destroyed: used until the process exits
  return *cache;
}

// A public area as an OpenSSL key. The public-key check matters for verification: an
// invalid key must not be used to decide whether a signature holds.
Result<PkeyPtr> PublicKeyOf(const TPMT_PUBLIC& area) {
  ParamBldPtr bld(OSSL_PARAM_BLD_new());
  if (!bld) return Error(ErrorCode::kInternal, "OSSL_PARAM_BLD_new failed");
  const char* key_type = nullptr;
  std::string point;
  BnPtr n, e;
  if (area.type == TPM2_ALG_ECC) {
    const char* group = nullptr;
    size_t field = 0;
    switch (area.parameters.eccDetail.curveID) {
      case TPM2_ECC_NIST_P256:
        group = "P-256";
        field = 32;
        break;
      case TPM2_ECC_NIST_P384:
        group = "P-384";
        field = 48;
        break;
      case TPM2_ECC_NIST_P521:
        group = "P-521";
        field = 66;
        break;
      default:
        return Error(ErrorCode::kInvalidArgument, "TPM ECC key on curve " + TpmConstantHex(area.parameters.eccDetail.curveID) +
                                                      " (only NIST P-256, P-384 and P-521 are supported)");
    }
    const TPMS_ECC_POINT& p = area.unique.ecc;
    if (p.x.size == 0 || p.x.size > field || p.y.size == 0 || p.y.size > field) {
      return Error(ErrorCode::kDataLoss, "TPM ECC public point has coordinates of " + std::to_string(p.x.size) +
                                             " and " + std::to_string(p.y.size) + " bytes");
    }
    // Uncompressed SEC1 point; the TPM may drop leading zero bytes, so pad to the field size.
    point.assign(1 + 2 * field, '\0');
    point[0] = 0x04;
    std::memcpy(point.data() + 1 + field - p.x.size, p.x.buffer, p.x.size);
    std::memcpy(point.data() + 1 + 2 * field - p.y.size, p.y.buffer, p.y.size);
    key_type = "EC";
    if (OSSL_PARAM_BLD_push_utf8_string(bld.get(), OSSL_PKEY_PARAM_GROUP_NAME, group, 0) != 1 ||
        OSSL_PARAM_BLD_push_octet_string(bld.get(), OSSL_PKEY_PARAM_PUB_KEY, point.data(), point.size()) != 1) {
      return Error(ErrorCode::kInternal, "building OpenSSL EC key parameters failed");
    }
  } else if (area.type == TPM2_ALG_RSA) {
    const TPM2B_PUBLIC_KEY_RSA& modulus = area.unique.rsa;
    if (modulus.size == 0) return Error(ErrorCode::kDataLoss, "TPM RSA public key has an empty modulus");
    n.reset(BN_bin2bn(modulus.buffer, modulus.size, nullptr));
    // An exponent of 0 in a TPM public area means the default, 2^16 + 1.
    UINT32 exponent = area.parameters.rsaDetail.exponent == 0 ? 65537 : area.parameters.rsaDetail.exponent;
    e.reset(BN_new());
    if (!n || !e || BN_set_word(e.get(), exponent) != 1) return Error(ErrorCode::kInternal, "BIGNUM allocation failed");
    key_type = "RSA";
    if (OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_RSA_N, n.get()) != 1 ||
        OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_RSA_E, e.get()) != 1) {
      return Error(ErrorCode::kInternal, "building OpenSSL RSA key parameters failed");
    }
  } else {
    return Error(ErrorCode::kInvalidArgument,
                 "TPM key of type " + TpmConstantHex(area.type) + " has no X.509 public key form (ECC or RSA only)");
  }
  // What the key is made of, exactly: the cache key.
  std::string cache_key(key_type);
  cache_key += '\0';
  if (area.type == TPM2_ALG_ECC) {
    cache_key += std::to_string(area.parameters.eccDetail.curveID) + '\0' + point;
  } else {
    cache_key += std::to_string(area.parameters.rsaDetail.exponent) + '\0';
    cache_key.append(reinterpret_cast<const char*>(area.unique.rsa.buffer), area.unique.rsa.size);
  }
  if (PkeyPtr cached = KeyCache().Find(cache_key)) return cached;
  ParamPtr params(OSSL_PARAM_BLD_to_param(bld.get()));
  PkeyCtxPtr ctx(EVP_PKEY_CTX_new_from_name(nullptr, key_type, nullptr));
  if (!params || !ctx || EVP_PKEY_fromdata_init(ctx.get()) != 1) {
    ERR_clear_error();
    return Error(ErrorCode::kInternal, "setting up an OpenSSL " + std::string(key_type) + " key failed");
  }
  EVP_PKEY* raw = nullptr;
  const bool built = EVP_PKEY_fromdata(ctx.get(), &raw, EVP_PKEY_PUBLIC_KEY, params.get()) == 1;
  PkeyPtr key(raw);
  PkeyCtxPtr check(built ? EVP_PKEY_CTX_new_from_pkey(nullptr, key.get(), nullptr) : nullptr);
  if (!built || !check || EVP_PKEY_public_check(check.get()) != 1) {
    ERR_clear_error();
    return Error(ErrorCode::kDataLoss, "the TPM's " + std::string(key_type) +
                                           " public key is not a valid key (e.g. a point not on the curve)");
  }
  KeyCache().Add(cache_key, key.get());
  return key;
}

}  // namespace

const EVP_MD* DigestForTpmAlg(TPM2_ALG_ID alg) {
  // Fetched once: OpenSSL 3 looks a legacy EVP_sha256() up in its provider store (locks,
  // hash tables) at every EVP_DigestInit, which costs more than hashing a PCR extend. Kept
  // for the process's lifetime (fetched objects are thread-safe to use).
  static const EVP_MD* const kSha1 = EVP_MD_fetch(nullptr, "SHA1", nullptr);
  static const EVP_MD* const kSha256 = EVP_MD_fetch(nullptr, "SHA2-256", nullptr);
  static const EVP_MD* const kSha384 = EVP_MD_fetch(nullptr, "SHA2-384", nullptr);
  static const EVP_MD* const kSha512 = EVP_MD_fetch(nullptr, "SHA2-512", nullptr);
  switch (alg) {
    case TPM2_ALG_SHA1:
      return kSha1;
    case TPM2_ALG_SHA256:
      return kSha256;
    case TPM2_ALG_SHA384:
      return kSha384;
    case TPM2_ALG_SHA512:
      return kSha512;
    default:
      return nullptr;
  }
}

Result<std::string> TpmDigest(TPM2_ALG_ID alg, std::string_view data) {
  const EVP_MD* md = DigestForTpmAlg(alg);
  if (md == nullptr) return Error(ErrorCode::kInvalidArgument, "unsupported hash algorithm " + TpmConstantHex(alg));
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (EVP_Digest(data.data(), data.size(), digest, &len, md, nullptr) != 1) {
    ERR_clear_error();
    return Error(ErrorCode::kInternal, "hashing failed");
  }
  return std::string(reinterpret_cast<const char*>(digest), len);
}

Result<std::string> TpmNameOf(TPM2_ALG_ID name_alg, std::string_view marshalled_tpmt_public) {
  auto digest = TpmDigest(name_alg, marshalled_tpmt_public);
  if (!digest.ok()) return std::move(digest).error().Context("the name algorithm");
  std::string name;
  name += static_cast<char>(name_alg >> 8);
  name += static_cast<char>(name_alg & 0xff);
  return name + *digest;
}

Result<std::string> SpkiFromTpmt(const TPMT_PUBLIC& area) {
  VTM_ASSIGN_OR_RETURN(PkeyPtr key, PublicKeyOf(area));
  return ToDer<EVP_PKEY, i2d_PUBKEY>(key.get(), "a SubjectPublicKeyInfo");
}

Result<std::string> EcdsaSignatureDer(const TPMS_SIGNATURE_ECDSA& signature) {
  EcdsaSigPtr der_sig(ECDSA_SIG_new());
  BIGNUM* r = BN_bin2bn(signature.signatureR.buffer, signature.signatureR.size, nullptr);
  BIGNUM* s = BN_bin2bn(signature.signatureS.buffer, signature.signatureS.size, nullptr);
  if (!der_sig || r == nullptr || s == nullptr || ECDSA_SIG_set0(der_sig.get(), r, s) != 1) {
    BN_free(r);
    BN_free(s);
    return Error(ErrorCode::kInternal, "building an ECDSA signature failed");
  }
  return ToDer<ECDSA_SIG, i2d_ECDSA_SIG>(der_sig.get(), "an ECDSA signature");
}

Result<bool> VerifyTpmSignature(const TPMT_PUBLIC& key_area, const TPMT_SIGNATURE& signature,
                                std::string_view signed_data) {
  VTM_ASSIGN_OR_RETURN(PkeyPtr key, PublicKeyOf(key_area));
  TPMI_ALG_HASH hash_alg = 0;
  std::string sig_der;
  int padding = 0;
  switch (signature.sigAlg) {
    case TPM2_ALG_ECDSA: {
      hash_alg = signature.signature.ecdsa.hash;
      VTM_ASSIGN_OR_RETURN(sig_der, EcdsaSignatureDer(signature.signature.ecdsa));
      if (!EVP_PKEY_is_a(key.get(), "EC")) return false;
      break;
    }
    case TPM2_ALG_RSASSA:
    case TPM2_ALG_RSAPSS: {
      const TPMS_SIGNATURE_RSA& rsa =
          signature.sigAlg == TPM2_ALG_RSASSA ? signature.signature.rsassa : signature.signature.rsapss;
      hash_alg = rsa.hash;
      sig_der.assign(reinterpret_cast<const char*>(rsa.sig.buffer), rsa.sig.size);
      padding = signature.sigAlg == TPM2_ALG_RSASSA ? RSA_PKCS1_PADDING : RSA_PKCS1_PSS_PADDING;
      if (!EVP_PKEY_is_a(key.get(), "RSA")) return false;
      break;
    }
    default:
      return Error(ErrorCode::kInvalidArgument,
                   "unsupported signature scheme " + TpmConstantHex(signature.sigAlg) + " (expected ECDSA, RSASSA or RSAPSS)");
  }
  const EVP_MD* md = DigestForTpmAlg(hash_alg);
  if (md == nullptr) {
    return Error(ErrorCode::kInvalidArgument, "unsupported hash algorithm " + TpmConstantHex(hash_alg) + " in the signature");
  }
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int digest_len = 0;
  if (EVP_Digest(signed_data.data(), signed_data.size(), digest, &digest_len, md, nullptr) != 1) {
    ERR_clear_error();
    return Error(ErrorCode::kInternal, "hashing the signed data failed");
  }
  PkeyCtxPtr ctx(EVP_PKEY_CTX_new_from_pkey(nullptr, key.get(), nullptr));
  if (!ctx || EVP_PKEY_verify_init(ctx.get()) != 1 || EVP_PKEY_CTX_set_signature_md(ctx.get(), md) != 1) {
    ERR_clear_error();
    return Error(ErrorCode::kInternal, "preparing a signature check failed");
  }
  if (padding != 0) {
    // TPMs differ in the PSS salt length they use (digest size or maximum): accept either.
    if (EVP_PKEY_CTX_set_rsa_padding(ctx.get(), padding) != 1 ||
        (padding == RSA_PKCS1_PSS_PADDING && EVP_PKEY_CTX_set_rsa_pss_saltlen(ctx.get(), RSA_PSS_SALTLEN_AUTO) != 1)) {
      ERR_clear_error();
      return Error(ErrorCode::kInternal, "setting the RSA padding of a signature check failed");
    }
  }
  const int rc = EVP_PKEY_verify(ctx.get(), reinterpret_cast<const unsigned char*>(sig_der.data()), sig_der.size(),
                                 digest, digest_len);
  ERR_clear_error();
  return rc == 1;
}

// ---- Marshalled forms ------------------------------------------------------------------

Error MalformedTpmStructure(const char* what, const UnmarshalOutcome& outcome) {
  if (outcome.rc != TSS2_RC_SUCCESS) {
    return Error(ErrorCode::kInvalidArgument, std::string(what) + " does not unmarshal (TSS2 rc " + TpmConstantHex(outcome.rc) +
                                                  "): truncated or not this structure");
  }
  return Error(ErrorCode::kInvalidArgument,
               std::string(what) + " has " + std::to_string(outcome.trailing) + " trailing bytes");
}

std::string TpmConstantHex(uint32_t value) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "0x%x", value);
  return buf;
}

Result<SignedAttest> ParseSignedAttest(std::string_view attest, std::string_view signature, TPMI_ST_ATTEST type,
                                       const char* context) {
  const std::string where(context);
  SignedAttest out;
  VTM_ASSIGN_OR_RETURN(out.attest, (ParseTpmStructure<TPMS_ATTEST, Tss2_MU_TPMS_ATTEST_Unmarshal>(
                                       attest, (where + ": the TPMS_ATTEST").c_str())));
  VTM_ASSIGN_OR_RETURN(out.signature, (ParseTpmStructure<TPMT_SIGNATURE, Tss2_MU_TPMT_SIGNATURE_Unmarshal>(
                                          signature, (where + ": the TPMT_SIGNATURE").c_str())));
  if (out.attest.magic != TPM2_GENERATED_VALUE) {
    return Error(ErrorCode::kInvalidArgument,
                 where + ": attest was not generated by a TPM (magic " + TpmConstantHex(out.attest.magic) + ")");
  }
  if (out.attest.type != type) {
    const char* command = type == TPM2_ST_ATTEST_QUOTE ? "TPM2_Quote" : type == TPM2_ST_ATTEST_CERTIFY ? "TPM2_Certify"
                                                                                                      : "TPM2";
    return Error(ErrorCode::kInvalidArgument, where + ": attest is not a " + command + " result (type " +
                                                  TpmConstantHex(out.attest.type) + ")");
  }
  return out;
}

Result<TPM2B_PUBLIC> ParseTpm2bPublic(std::string_view bytes, const char* what) {
  VTM_ASSIGN_OR_RETURN(TPM2B_PUBLIC pub, (ParseTpmStructure<TPM2B_PUBLIC, Tss2_MU_TPM2B_PUBLIC_Unmarshal>(bytes, what)));
  if (pub.size != bytes.size() - 2) {
    return Error(ErrorCode::kInvalidArgument, std::string(what) + ": the TPM2B size does not match its content");
  }
  return pub;
}

Result<std::string> SpkiFromTpmPublic(std::string_view tpm2b_public) {
  VTM_ASSIGN_OR_RETURN(TPM2B_PUBLIC pub, ParseTpm2bPublic(tpm2b_public, "TPM2B_PUBLIC"));
  return SpkiFromTpmt(pub.publicArea);
}

Result<std::string> TpmNameOfPublic(std::string_view tpm2b_public) {
  VTM_ASSIGN_OR_RETURN(TPM2B_PUBLIC pub, ParseTpm2bPublic(tpm2b_public, "TPM2B_PUBLIC"));
  // ParseTpm2bPublic checked that the size covers exactly the marshalled TPMT_PUBLIC after it.
  auto name = TpmNameOf(pub.publicArea.nameAlg, tpm2b_public.substr(2));
  if (!name.ok()) return std::move(name).error().Context("TPM public area");
  return name;
}

}  // namespace vtm
