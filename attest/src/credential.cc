// Software TPM2_MakeCredential: seed by ECDH (KDFe) or RSA-OAEP, then KDFa for the storage and
// integrity keys, AES-CFB over the TPM2B_DIGEST of the secret and the outer HMAC.
#include "vtm/credential.h"

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>
#include <tss2/tss2_mu.h>

#include "vtm/ossl_ptr.h"
#include "vtm/secret.h"
#include "vtm/tpm_structures.h"

namespace vtm::attest {
namespace {

using PkeyPtr = OsslPtr<EVP_PKEY, EVP_PKEY_free>;
using PkeyCtxPtr = OsslPtr<EVP_PKEY_CTX, EVP_PKEY_CTX_free>;
using CipherCtxPtr = OsslPtr<EVP_CIPHER_CTX, EVP_CIPHER_CTX_free>;

void PutBe16(std::string& out, size_t v) {
  out += static_cast<char>((v >> 8) & 0xff);
  out += static_cast<char>(v & 0xff);
}
void PutBe32(std::string& out, uint32_t v) {
  for (int i = 3; i >= 0; --i) out += static_cast<char>((v >> (8 * i)) & 0xff);
}
std::string Sized(std::string_view bytes) {
  std::string out;
  PutBe16(out, bytes.size());
  out.append(bytes);
  return out;
}

// KDFa (Part 1, 11.4.10.2): HMAC_hash(key, counter || label || 0 || context_u || context_v || bits).
Result<std::string> KdfA(const EVP_MD* md, std::string_view key, const char* label, std::string_view context_u,
                         std::string_view context_v, uint32_t bits) {
  std::string out;
  for (uint32_t counter = 1; out.size() * 8 < bits; ++counter) {
    std::string data;
    PutBe32(data, counter);
    data.append(label).push_back('\0');
    data.append(context_u).append(context_v);
    PutBe32(data, bits);
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    if (HMAC(md, key.data(), static_cast<int>(key.size()), reinterpret_cast<const unsigned char*>(data.data()),
             data.size(), mac, &len) == nullptr) {
      return Error(ErrorCode::kInternal, "KDFa: HMAC failed");
    }
    out.append(reinterpret_cast<const char*>(mac), len);
  }
  out.resize(bits / 8);
  return out;
}

// KDFe (Part 1, 11.4.10.3): hash(counter || Z || label || 0 || party_u || party_v).
Result<std::string> KdfE(TPM2_ALG_ID alg, std::string_view z, const char* label, std::string_view party_u,
                         std::string_view party_v, size_t bytes) {
  std::string out;
  for (uint32_t counter = 1; out.size() < bytes; ++counter) {
    std::string data;
    PutBe32(data, counter);
    data.append(z).append(label).push_back('\0');
    data.append(party_u).append(party_v);
    VTM_ASSIGN_OR_RETURN(std::string h, TpmDigest(alg, data));
    out += h;
  }
  out.resize(bytes);
  return out;
}

Result<std::string> BigNumParam(EVP_PKEY* key, const char* name, size_t bytes) {
  BIGNUM* bn = nullptr;
  if (EVP_PKEY_get_bn_param(key, name, &bn) != 1) return OpenSslError(ErrorCode::kInternal, "reading a key coordinate");
  std::string out(bytes, '\0');
  const int ok = BN_bn2binpad(bn, reinterpret_cast<unsigned char*>(out.data()), static_cast<int>(bytes));
  BN_free(bn);
  if (ok < 0) return Error(ErrorCode::kInternal, "a key coordinate is larger than its curve");
  return out;
}

struct Seed {
  SecretBytes seed;
  std::string encrypted;  // the TPM2B_ENCRYPTED_SECRET's buffer
};

// ECC: an ephemeral key on the EK's curve; seed = KDFe(Z, "IDENTITY", Qe.x, Qek.x).
Result<Seed> EccSeed(EVP_PKEY* ek, TPM2_ALG_ID name_alg, size_t seed_bytes) {
  const size_t coord = static_cast<size_t>((EVP_PKEY_get_bits(ek) + 7) / 8);
  PkeyCtxPtr gen(EVP_PKEY_CTX_new_from_pkey(nullptr, ek, nullptr));
  EVP_PKEY* eph_raw = nullptr;
  if (!gen || EVP_PKEY_keygen_init(gen.get()) != 1 || EVP_PKEY_keygen(gen.get(), &eph_raw) != 1) {
    return OpenSslError(ErrorCode::kInternal, "generating the ephemeral ECC key");
  }
  PkeyPtr eph(eph_raw);
  PkeyCtxPtr derive(EVP_PKEY_CTX_new_from_pkey(nullptr, eph.get(), nullptr));
  size_t z_len = 0;
  if (!derive || EVP_PKEY_derive_init(derive.get()) != 1 || EVP_PKEY_derive_set_peer(derive.get(), ek) != 1 ||
      EVP_PKEY_derive(derive.get(), nullptr, &z_len) != 1) {
    return OpenSslError(ErrorCode::kInvalidArgument, "ECDH with the EK");
  }
  SecretBytes z(z_len);
  if (EVP_PKEY_derive(derive.get(), z.data(), &z_len) != 1) return OpenSslError(ErrorCode::kInternal, "ECDH");
  VTM_ASSIGN_OR_RETURN(std::string eph_x, BigNumParam(eph.get(), OSSL_PKEY_PARAM_EC_PUB_X, coord));
  VTM_ASSIGN_OR_RETURN(std::string eph_y, BigNumParam(eph.get(), OSSL_PKEY_PARAM_EC_PUB_Y, coord));
  VTM_ASSIGN_OR_RETURN(std::string ek_x, BigNumParam(ek, OSSL_PKEY_PARAM_EC_PUB_X, coord));
  VTM_ASSIGN_OR_RETURN(std::string seed,
                       KdfE(name_alg, std::string_view(reinterpret_cast<const char*>(z.data()), z_len), "IDENTITY",
                            eph_x, ek_x, seed_bytes));
  Seed out{SecretBytes(reinterpret_cast<const uint8_t*>(seed.data()), seed.size()), Sized(eph_x) + Sized(eph_y)};
  OPENSSL_cleanse(seed.data(), seed.size());
  return out;
}

// RSA: a random seed, RSA-OAEP with the nameAlg and the label "IDENTITY\0".
Result<Seed> RsaSeed(EVP_PKEY* ek, const EVP_MD* md, size_t seed_bytes) {
  Seed out{SecretBytes(seed_bytes), ""};
  if (RAND_bytes(out.seed.data(), static_cast<int>(seed_bytes)) != 1) return Error(ErrorCode::kInternal, "RAND_bytes failed");
  PkeyCtxPtr ctx(EVP_PKEY_CTX_new_from_pkey(nullptr, ek, nullptr));
  static const char kLabel[] = "IDENTITY";
  // The context takes ownership of the label.
  void* label = OPENSSL_memdup(kLabel, sizeof kLabel);
  size_t len = 0;
  if (!ctx || label == nullptr || EVP_PKEY_encrypt_init(ctx.get()) != 1 ||
      EVP_PKEY_CTX_set_rsa_padding(ctx.get(), RSA_PKCS1_OAEP_PADDING) != 1 ||
      EVP_PKEY_CTX_set_rsa_oaep_md(ctx.get(), md) != 1 || EVP_PKEY_CTX_set_rsa_mgf1_md(ctx.get(), md) != 1 ||
      EVP_PKEY_CTX_set0_rsa_oaep_label(ctx.get(), label, sizeof kLabel) != 1) {
    OPENSSL_free(label);
    return OpenSslError(ErrorCode::kInternal, "setting up RSA-OAEP");
  }
  if (EVP_PKEY_encrypt(ctx.get(), nullptr, &len, out.seed.data(), seed_bytes) != 1) {
    return OpenSslError(ErrorCode::kInvalidArgument, "RSA-OAEP with the EK");
  }
  out.encrypted.resize(len);
  if (EVP_PKEY_encrypt(ctx.get(), reinterpret_cast<unsigned char*>(out.encrypted.data()), &len, out.seed.data(),
                       seed_bytes) != 1) {
    return OpenSslError(ErrorCode::kInternal, "RSA-OAEP");
  }
  out.encrypted.resize(len);
  return out;
}

}  // namespace

Result<MadeCredential> MakeCredential(std::string_view ek_tpm2b_public, std::string_view secret,
                                      std::string_view object_name) {
  VTM_ASSIGN_OR_RETURN(TPM2B_PUBLIC ek, ParseTpm2bPublic(ek_tpm2b_public, "the EK public area"));
  const TPMT_PUBLIC& area = ek.publicArea;
  const EVP_MD* md = DigestForTpmAlg(area.nameAlg);
  if (md == nullptr) return Error(ErrorCode::kInvalidArgument, "the EK's name algorithm is not a known hash");
  const bool ecc = area.type == TPM2_ALG_ECC;
  if ((!ecc && area.type != TPM2_ALG_RSA) || !(area.objectAttributes & TPMA_OBJECT_RESTRICTED) ||
      !(area.objectAttributes & TPMA_OBJECT_DECRYPT)) {
    return Error(ErrorCode::kInvalidArgument, "the EK is not a restricted ECC or RSA decryption key");
  }
  const TPMT_SYM_DEF_OBJECT& sym = ecc ? area.parameters.eccDetail.symmetric : area.parameters.rsaDetail.symmetric;
  if (sym.algorithm != TPM2_ALG_AES || sym.mode.aes != TPM2_ALG_CFB ||
      (sym.keyBits.aes != 128 && sym.keyBits.aes != 256)) {
    return Error(ErrorCode::kInvalidArgument, "the EK's symmetric definition is not AES-128/256-CFB");
  }
  const size_t digest_size = static_cast<size_t>(EVP_MD_get_size(md));
  if (secret.empty() || secret.size() > digest_size) {
    return Error(ErrorCode::kInvalidArgument, "the credential secret must be 1.." + std::to_string(digest_size) + " bytes");
  }
  if (object_name.size() < 2 + 20 || object_name.size() > 2 + 64) {
    return Error(ErrorCode::kInvalidArgument, "the object name is not nameAlg || digest");
  }
  VTM_ASSIGN_OR_RETURN(std::string spki, SpkiFromTpmPublic(ek_tpm2b_public));
  const auto* p = reinterpret_cast<const unsigned char*>(spki.data());
  PkeyPtr key(d2i_PUBKEY(nullptr, &p, static_cast<long>(spki.size())));
  if (!key) return OpenSslError(ErrorCode::kInvalidArgument, "the EK's public key");

  VTM_ASSIGN_OR_RETURN(Seed seed, ecc ? EccSeed(key.get(), area.nameAlg, digest_size) : RsaSeed(key.get(), md, digest_size));
  const std::string_view seed_view(reinterpret_cast<const char*>(seed.seed.data()), seed.seed.size());
  VTM_ASSIGN_OR_RETURN(std::string sym_key, KdfA(md, seed_view, "STORAGE", object_name, "", sym.keyBits.aes));
  VTM_ASSIGN_OR_RETURN(std::string hmac_key, KdfA(md, seed_view, "INTEGRITY", "", "", static_cast<uint32_t>(8 * digest_size)));

  // encIdentity = AES-CFB(symKey, IV 0) over the TPM2B_DIGEST of the secret.
  const std::string plain = Sized(secret);
  std::string enc_identity(plain.size(), '\0');
  CipherCtxPtr cipher(EVP_CIPHER_CTX_new());
  const unsigned char iv[16] = {};
  int len = 0, tail = 0;
  if (!cipher ||
      EVP_EncryptInit_ex(cipher.get(), sym.keyBits.aes == 128 ? EVP_aes_128_cfb128() : EVP_aes_256_cfb128(), nullptr,
                         reinterpret_cast<const unsigned char*>(sym_key.data()), iv) != 1 ||
      EVP_EncryptUpdate(cipher.get(), reinterpret_cast<unsigned char*>(enc_identity.data()), &len,
                        reinterpret_cast<const unsigned char*>(plain.data()), static_cast<int>(plain.size())) != 1 ||
      EVP_EncryptFinal_ex(cipher.get(), reinterpret_cast<unsigned char*>(enc_identity.data()) + len, &tail) != 1) {
    OPENSSL_cleanse(sym_key.data(), sym_key.size());
    OPENSSL_cleanse(hmac_key.data(), hmac_key.size());
    return OpenSslError(ErrorCode::kInternal, "AES-CFB");
  }
  OPENSSL_cleanse(sym_key.data(), sym_key.size());
  OPENSSL_cleanse(const_cast<char*>(plain.data()), plain.size());
  // outerHMAC = HMAC(hmacKey, encIdentity || name).
  std::string mac_input = enc_identity;
  mac_input.append(object_name);
  unsigned char mac[EVP_MAX_MD_SIZE];
  unsigned int mac_len = 0;
  const bool mac_ok = HMAC(md, hmac_key.data(), static_cast<int>(hmac_key.size()),
                           reinterpret_cast<const unsigned char*>(mac_input.data()), mac_input.size(), mac, &mac_len) != nullptr;
  OPENSSL_cleanse(hmac_key.data(), hmac_key.size());
  if (!mac_ok) return Error(ErrorCode::kInternal, "the credential's HMAC failed");

  MadeCredential out;
  out.id_object = Sized(Sized(std::string_view(reinterpret_cast<const char*>(mac), mac_len)) + enc_identity);
  out.encrypted_secret = Sized(seed.encrypted);
  return out;
}

Result<SecretBytes> ActivateCredentialInSoftware(EVP_PKEY* private_key, std::string_view key_tpm2b_public,
                                                 std::string_view id_object, std::string_view encrypted_secret,
                                                 std::string_view object_name) {
  VTM_ASSIGN_OR_RETURN(TPM2B_PUBLIC key, ParseTpm2bPublic(key_tpm2b_public, "the key's public area"));
  const TPMT_PUBLIC& area = key.publicArea;
  const EVP_MD* md = DigestForTpmAlg(area.nameAlg);
  const TPMT_SYM_DEF_OBJECT& sym = area.parameters.eccDetail.symmetric;
  if (area.type != TPM2_ALG_ECC || md == nullptr || sym.algorithm != TPM2_ALG_AES || sym.mode.aes != TPM2_ALG_CFB ||
      (sym.keyBits.aes != 128 && sym.keyBits.aes != 256)) {
    return Error(ErrorCode::kInvalidArgument, "software activation takes an ECC key with AES-CFB and a known nameAlg");
  }
  VTM_ASSIGN_OR_RETURN(TPM2B_ID_OBJECT id, (ParseTpmStructure<TPM2B_ID_OBJECT, Tss2_MU_TPM2B_ID_OBJECT_Unmarshal>(
                                               id_object, "the credential's TPM2B_ID_OBJECT")));
  VTM_ASSIGN_OR_RETURN(TPM2B_ENCRYPTED_SECRET enc,
                       (ParseTpmStructure<TPM2B_ENCRYPTED_SECRET, Tss2_MU_TPM2B_ENCRYPTED_SECRET_Unmarshal>(
                           encrypted_secret, "the credential's TPM2B_ENCRYPTED_SECRET")));
  // The ephemeral point (a TPMS_ECC_POINT) as a public key on the same curve.
  TPMT_PUBLIC ephemeral = area;
  VTM_ASSIGN_OR_RETURN(
      ephemeral.unique.ecc,
      (ParseTpmStructure<TPMS_ECC_POINT, Tss2_MU_TPMS_ECC_POINT_Unmarshal>(
          std::string_view(reinterpret_cast<const char*>(enc.secret), enc.size), "the credential's ephemeral point")));
  VTM_ASSIGN_OR_RETURN(std::string eph_spki, SpkiFromTpmt(ephemeral));
  const auto* p = reinterpret_cast<const unsigned char*>(eph_spki.data());
  PkeyPtr eph(d2i_PUBKEY(nullptr, &p, static_cast<long>(eph_spki.size())));
  PkeyCtxPtr derive(EVP_PKEY_CTX_new_from_pkey(nullptr, private_key, nullptr));
  size_t z_len = 0;
  if (!eph || !derive || EVP_PKEY_derive_init(derive.get()) != 1 ||
      EVP_PKEY_derive_set_peer(derive.get(), eph.get()) != 1 || EVP_PKEY_derive(derive.get(), nullptr, &z_len) != 1) {
    return OpenSslError(ErrorCode::kInvalidArgument, "ECDH with the credential's ephemeral point");
  }
  SecretBytes z(z_len);
  if (EVP_PKEY_derive(derive.get(), z.data(), &z_len) != 1) return OpenSslError(ErrorCode::kInternal, "ECDH");
  const size_t digest_size = static_cast<size_t>(EVP_MD_get_size(md));
  const std::string_view eph_x(reinterpret_cast<const char*>(ephemeral.unique.ecc.x.buffer), ephemeral.unique.ecc.x.size);
  const std::string_view key_x(reinterpret_cast<const char*>(area.unique.ecc.x.buffer), area.unique.ecc.x.size);
  VTM_ASSIGN_OR_RETURN(std::string seed, KdfE(area.nameAlg, std::string_view(reinterpret_cast<const char*>(z.data()), z_len),
                                              "IDENTITY", eph_x, key_x, digest_size));
  auto hmac_key = KdfA(md, seed, "INTEGRITY", "", "", static_cast<uint32_t>(8 * digest_size));
  auto sym_key = KdfA(md, seed, "STORAGE", object_name, "", sym.keyBits.aes);
  OPENSSL_cleanse(seed.data(), seed.size());
  if (!hmac_key.ok() || !sym_key.ok()) return Error(ErrorCode::kInternal, "KDFa failed");
  struct Wipe {
    std::string* a;
    std::string* b;
    ~Wipe() {
      OPENSSL_cleanse(a->data(), a->size());
      OPENSSL_cleanse(b->data(), b->size());
    }
  } wipe{&*hmac_key, &*sym_key};

  // idObject = TPM2B(outerHMAC) || encIdentity; the HMAC covers encIdentity || name.
  const std::string_view blob(reinterpret_cast<const char*>(id.credential), id.size);
  if (blob.size() < 2) return Error(ErrorCode::kInvalidArgument, "the credential's TPM2B_ID_OBJECT is too short");
  const size_t mac_size = (static_cast<uint8_t>(blob[0]) << 8) | static_cast<uint8_t>(blob[1]);
  if (mac_size != digest_size || blob.size() < 2 + mac_size + 2) {
    return Error(ErrorCode::kInvalidArgument, "the credential's integrity HMAC is not one digest of the nameAlg");
  }
  const std::string_view mac = blob.substr(2, mac_size);
  const std::string_view enc_identity = blob.substr(2 + mac_size);
  std::string mac_input(enc_identity);
  mac_input.append(object_name);
  unsigned char expected[EVP_MAX_MD_SIZE];
  unsigned int expected_len = 0;
  if (HMAC(md, hmac_key->data(), static_cast<int>(hmac_key->size()),
           reinterpret_cast<const unsigned char*>(mac_input.data()), mac_input.size(), expected, &expected_len) ==
      nullptr) {
    return Error(ErrorCode::kInternal, "the credential's HMAC failed");
  }
  if (expected_len != mac.size() || CRYPTO_memcmp(expected, mac.data(), mac.size()) != 0) {
    return Error(ErrorCode::kDataLoss,
                 "the credential fails its integrity check: it was made to another key or name, or altered");
  }
  SecretBytes plain(enc_identity.size());
  CipherCtxPtr cipher(EVP_CIPHER_CTX_new());
  const unsigned char iv[16] = {};
  int len = 0, tail = 0;
  if (!cipher ||
      EVP_DecryptInit_ex(cipher.get(), sym.keyBits.aes == 128 ? EVP_aes_128_cfb128() : EVP_aes_256_cfb128(), nullptr,
                         reinterpret_cast<const unsigned char*>(sym_key->data()), iv) != 1 ||
      EVP_DecryptUpdate(cipher.get(), plain.data(), &len, reinterpret_cast<const unsigned char*>(enc_identity.data()),
                        static_cast<int>(enc_identity.size())) != 1 ||
      EVP_DecryptFinal_ex(cipher.get(), plain.data() + len, &tail) != 1) {
    return OpenSslError(ErrorCode::kInternal, "AES-CFB");
  }
  // The plaintext is a TPM2B_DIGEST: the secret with its size.
  const size_t secret_size = (size_t{plain.data()[0]} << 8) | plain.data()[1];
  if (secret_size == 0 || secret_size != plain.size() - 2) {
    return Error(ErrorCode::kDataLoss, "the credential's decrypted secret is not one TPM2B_DIGEST");
  }
  return SecretBytes(plain.data() + 2, secret_size);
}

}  // namespace vtm::attest
