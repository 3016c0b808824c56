// Creation and loading of the host AK and CA key, the CA certificate, CSR and installation.
#include "host_identity.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include <ctime>
#include <optional>
#include <utility>

#include "vtm/fs.h"
#include "vtm/log.h"

namespace vtm {
namespace {

constexpr uint32_t kEkCertEccIndex = 0x01C0000A;
constexpr uint32_t kEkCertRsaIndex = 0x01C00002;

// The file format of ak.blob, ca-key.blob and ca-key.quote: two u32-length-prefixed parts.
std::string EncodeTwoParts(const std::string& first, const std::string& second) {
  std::string out;
  for (const std::string* part : {&first, &second}) {
    uint32_t n = static_cast<uint32_t>(part->size());
    for (int i = 3; i >= 0; --i) out.push_back(static_cast<char>((n >> (8 * i)) & 0xff));
    out += *part;
  }
  return out;
}

Result<std::pair<std::string, std::string>> DecodeTwoParts(const std::string& s, const std::string& path) {
  std::pair<std::string, std::string> parts;
  size_t off = 0;
  for (std::string* part : {&parts.first, &parts.second}) {
    if (s.size() - off < 4) return Error(ErrorCode::kDataLoss, path + " is truncated");
    uint32_t n = 0;
    for (int i = 0; i < 4; ++i) n = (n << 8) | static_cast<uint8_t>(s[off + i]);
    off += 4;
    if (n > s.size() - off) return Error(ErrorCode::kDataLoss, path + " is truncated");
    *part = s.substr(off, n);
    off += n;
  }
  if (off != s.size()) return Error(ErrorCode::kDataLoss, path + " has trailing bytes");
  return parts;
}

}  // namespace

Result<TpmKeyBlob> ReadKeyBlob(const std::string& path) {
  VTM_ASSIGN_OR_RETURN(std::string bytes, ReadFile(path));
  return BlobFromString(bytes, path);
}

Result<TpmKeyBlob> BlobFromString(const std::string& s, const std::string& path) {
  VTM_ASSIGN_OR_RETURN(auto parts, DecodeTwoParts(s, path));
  return TpmKeyBlob{std::move(parts.first), std::move(parts.second)};
}

Result<std::string> TpmSigner::SignDigest(const std::string& digest) {
  std::optional<std::lock_guard<std::mutex>> lock;
  if (mu_ != nullptr) lock.emplace(*mu_);
  return tpm_.SignDigest(key_, digest);
}

namespace {

uint64_t RandomSerial() {
  uint64_t v = 0;
  RAND_bytes(reinterpret_cast<unsigned char*>(&v), sizeof v);
  return (v & 0x7fffffffffffffffULL) | 1;
}

Result<TpmKey> LoadOrCreateKey(Tpm& tpm, const TpmKey& srk, KeyRole role, const std::string& path, bool* created) {
  *created = false;
  if (PathExists(path)) {
    VTM_ASSIGN_OR_RETURN(std::string bytes, ReadFile(path));
    VTM_ASSIGN_OR_RETURN(TpmKeyBlob blob, BlobFromString(bytes, path));
    auto key = tpm.LoadKey(srk, blob);
    if (!key.ok()) return std::move(key).error().Context("loading " + path + " into the host TPM");
    return key;
  }
  VTM_ASSIGN_OR_RETURN(TpmKeyBlob blob, tpm.CreateKey(srk, role));
  VTM_RETURN_IF_ERROR(WriteFileAtomic(path, EncodeTwoParts(blob.tpm2b_public, blob.tpm2b_private), 0600));
  *created = true;
  return tpm.LoadKey(srk, blob);
}

}  // namespace

Result<CaResidency> ParseCaResidency(const std::string& text) {
  if (text == "tpm") return CaResidency::kTpm;
  if (text == "sealed") return CaResidency::kSealed;
  return Error(ErrorCode::kInvalidArgument, "CA residency must be 'tpm' or 'sealed', not '" + text + "'");
}

Result<std::unique_ptr<HostIdentity>> HostIdentity::LoadOrCreate(Tpm& tpm, const std::string& dir,
                                                                 const std::string& host_name, CaResidency residency,
                                                                 const MasterKey& master_key,
                                                                 const PcrSelection& quote_pcrs) {
  std::unique_ptr<HostIdentity> id(new HostIdentity());
  id->residency_ = residency;
  const bool has_tpm_key = PathExists(dir + "/ca-key.blob"), has_sealed_key = PathExists(dir + "/ca-key.sealed");
  if ((residency == CaResidency::kTpm && has_sealed_key) || (residency == CaResidency::kSealed && has_tpm_key)) {
    return Error(ErrorCode::kFailedPrecondition,
                 std::string("this host's CA key was created in the '") + (has_tpm_key ? "tpm" : "sealed") +
                     "' residency; a CA key cannot change residency (start vtmd with --ca-residency " +
                     (has_tpm_key ? "tpm" : "sealed") + ")");
  }
  id->tpm_ = &tpm;
  id->dir_ = dir;
  id->host_name_ = host_name;
  VTM_RETURN_IF_ERROR(MakeDir(dir, 0700));

  // TPMs have as few as three transient object slots and no resource manager stands between
  // a TCTI and swtpm, so every object is loaded only for as long as it is needed: the AK and
  // the CA key stay loaded, everything else is flushed at the end of its scope.
  {
    VTM_ASSIGN_OR_RETURN(TpmKey ek, tpm.CreateEk(KeyAlg::kEccP256));
    VTM_ASSIGN_OR_RETURN(id->ek_public_, tpm.ReadPublic(ek));
  }
  // The host EK's manufacturer certificate (ECC first, where most tools look).
  auto cert = tpm.ReadNv(kEkCertEccIndex);
  if (!cert.ok()) cert = tpm.ReadNv(kEkCertRsaIndex);
  if (cert.ok()) {
    id->ek_cert_der_ = *cert;
  } else {
    LOG_WARNING << "the host TPM has no EK certificate at 0x01C0000A or 0x01C00002; verifiers cannot tie "
                   "this host's AK to a TPM manufacturer";
  }

  bool ak_created = false, ca_created = false;
  {
    VTM_ASSIGN_OR_RETURN(TpmKey srk, tpm.CreateSrk());
    VTM_ASSIGN_OR_RETURN(id->ak_, LoadOrCreateKey(tpm, srk, KeyRole::kAttestation, dir + "/ak.blob", &ak_created));
    if (residency == CaResidency::kTpm) {
      VTM_ASSIGN_OR_RETURN(id->ca_key_,
                           LoadOrCreateKey(tpm, srk, KeyRole::kSigning, dir + "/ca-key.blob", &ca_created));
    }
  }
  VTM_ASSIGN_OR_RETURN(id->ak_public_, tpm.ReadPublic(id->ak_));
  if (ak_created) {
    // Prove, once, that the new AK sits in the TPM of this EK: only that TPM can activate a
    // credential made for the AK's name with the EK's public key.
    VTM_ASSIGN_OR_RETURN(SecretBytes challenge, RandomSecret(32));
    std::string secret(reinterpret_cast<const char*>(challenge.data()), challenge.size());
    TpmCredential cred;
    {
      VTM_ASSIGN_OR_RETURN(TpmKey ek_pub, tpm.LoadExternalPublic(id->ek_public_.tpm2b_public));
      VTM_ASSIGN_OR_RETURN(cred, tpm.MakeCredential(ek_pub, secret, id->ak_public_.name));
    }
    VTM_ASSIGN_OR_RETURN(TpmKey ek, tpm.CreateEk(KeyAlg::kEccP256));
    VTM_ASSIGN_OR_RETURN(SecretBytes got, tpm.ActivateCredential(id->ak_, ek, cred));
    if (got.size() != challenge.size() || CRYPTO_memcmp(got.data(), challenge.data(), got.size()) != 0) {
      (void)RemoveTree(dir + "/ak.blob");
      return Error(ErrorCode::kTpm, "host AK failed credential activation with the host EK");
    }
    LOG_INFO << "created host AK, bound to the host EK by credential activation";
  }
  if (residency == CaResidency::kTpm) {
    VTM_ASSIGN_OR_RETURN(id->ca_public_, tpm.ReadPublic(id->ca_key_));
    id->signer_ = std::make_unique<TpmSigner>(tpm, id->ca_key_, id->ca_public_.spki_der, &id->mu_);
  } else {
    VTM_RETURN_IF_ERROR(id->LoadOrCreateSealedCaKey(master_key, quote_pcrs));
  }

  const std::string cert_path = dir + "/ca.pem";
  if (PathExists(cert_path)) {
    VTM_ASSIGN_OR_RETURN(std::string pem, ReadFile(cert_path));
    auto der = ca::CertificateToDer(pem);
    if (!der.ok()) return std::move(der).error().Context("reading the host CA certificate " + cert_path);
    auto info = ca::ParseCertificate(*der);
    if (!info.ok()) return std::move(info).error().Context(cert_path);
    if (info->spki_der != id->ca_public_.spki_der) {
      return Error(ErrorCode::kDataLoss, cert_path + " is not a certificate for this host's CA key");
    }
    // The TPM2_Certify evidence in the certificate must be about this key and by this host's
    // AK; a fleet CA may have dropped the extension, which only costs verifiers that proof.
    auto evidence = ca::ExtractCertifyEvidence(*der);
    if (evidence.ok()) {
      if (auto st = ca::VerifyCertifyEvidence(*der, *evidence); !st.ok()) {
        return Error(ErrorCode::kDataLoss, cert_path + ": its TPM2_Certify evidence does not verify: " + st.error().message());
      }
      if (evidence->ak_tpm2b_public != id->ak_public_.tpm2b_public) {
        return Error(ErrorCode::kDataLoss, cert_path + ": its TPM2_Certify evidence was made by another AK, not this host's");
      }
    } else if (evidence.error().code() == ErrorCode::kNotFound) {
      if (residency == CaResidency::kTpm) {
        LOG_WARNING << cert_path << " carries no TPM2_Certify evidence of the CA key (a fleet CA may have dropped it)";
      }
    } else {
      return std::move(evidence).error().Context(cert_path);
    }
    id->ca_cert_der_ = *der;
    if (PathExists(dir + "/ca-chain.pem")) {
      VTM_ASSIGN_OR_RETURN(std::string chain_pem, ReadFile(dir + "/ca-chain.pem"));
      VTM_ASSIGN_OR_RETURN(id->chain_der_, ca::CertificateToDer(chain_pem));
    }
  } else {
    ca::CertifyEvidence evidence;  // none in the sealed residency: the quote binds the key instead
    if (residency == CaResidency::kTpm) {
      VTM_ASSIGN_OR_RETURN(evidence, id->CertifyCaKey());
    }
    ca::CaCertRequest req;
    req.common_name = "vtm host CA " + host_name;
    req.serial = RandomSerial();
    req.validity.not_before = std::time(nullptr) - 60;
    req.evidence = std::move(evidence);
    VTM_ASSIGN_OR_RETURN(id->ca_cert_der_, ca::CreateSelfSignedCaCertificate(*id->signer_, req));
    VTM_RETURN_IF_ERROR(WriteFileAtomic(cert_path, ca::DerToPem(id->ca_cert_der_), 0644));
    LOG_INFO << "created the host CA ("
             << (residency == CaResidency::kTpm ? "key inside the host TPM" : "software key sealed by the host TPM")
             << "), self-signed certificate " << cert_path;
  }
  return id;
}

Status HostIdentity::LoadOrCreateSealedCaKey(const MasterKey& master_key, const PcrSelection& quote_pcrs) {
  const std::string key_path = dir_ + "/ca-key.sealed", quote_path = dir_ + "/ca-key.quote";
  const std::string label = "vtm:host:ca-key";
  std::unique_ptr<ca::SoftwareSigner> key;
  if (PathExists(key_path)) {
    VTM_ASSIGN_OR_RETURN(std::string wrapped, ReadFile(key_path));
    auto der = master_key.Unwrap(wrapped, label);
    if (!der.ok()) return std::move(der).error().Context("unwrapping the sealed CA key " + key_path);
    VTM_ASSIGN_OR_RETURN(key, ca::SoftwareSigner::FromPrivateKeyDer(*der));
    VTM_ASSIGN_OR_RETURN(std::string quote, ReadFile(quote_path));
    VTM_ASSIGN_OR_RETURN(auto parts, DecodeTwoParts(quote, quote_path));
    ca_quote_ = {std::move(parts.first), std::move(parts.second)};
  } else {
    VTM_ASSIGN_OR_RETURN(key, ca::SoftwareSigner::Generate());
    SecretBytes der = key->PrivateKeyDer();
    VTM_ASSIGN_OR_RETURN(std::string wrapped, master_key.Wrap(der, label));
    // The quote's qualifying data is the SHA-256 of the CA public key: the host AK vouches,
    // once, that this key belongs to this host in this PCR state.
    unsigned char digest[32];
    const std::string& spki = key->PublicKeySpki();
    EVP_Digest(spki.data(), spki.size(), digest, nullptr, EVP_sha256(), nullptr);
    VTM_ASSIGN_OR_RETURN(ca_quote_, tpm_->Quote(ak_, quote_pcrs, std::string(reinterpret_cast<char*>(digest), 32)));
    VTM_RETURN_IF_ERROR(WriteFileAtomic(quote_path, EncodeTwoParts(ca_quote_.attest, ca_quote_.signature), 0644));
    VTM_RETURN_IF_ERROR(WriteFileAtomic(key_path, wrapped, 0600));
  }
  ca_public_.spki_der = key->PublicKeySpki();
  signer_ = std::move(key);
  return OkStatus();
}

Result<ca::CertifyEvidence> HostIdentity::CertifyCaKey() {
  std::lock_guard<std::mutex> lock(mu_);
  VTM_ASSIGN_OR_RETURN(SecretBytes nonce, RandomSecret(16));
  VTM_ASSIGN_OR_RETURN(TpmAttestation att,
                       tpm_->Certify(ca_key_, ak_, std::string(reinterpret_cast<const char*>(nonce.data()), nonce.size())));
  ca::CertifyEvidence ev;
  ev.key_tpm2b_public = ca_public_.tpm2b_public;
  ev.attest = att.attest;
  ev.signature = att.signature;
  ev.ak_tpm2b_public = ak_public_.tpm2b_public;
  return ev;
}

std::string HostIdentity::ca_certificate() const {
  std::lock_guard<std::mutex> lock(mu_);
  return ca_cert_der_;
}

std::string HostIdentity::ca_chain_der() const {
  std::lock_guard<std::mutex> lock(mu_);
  return ca_cert_der_ + chain_der_;
}

Result<std::string> HostIdentity::CreateCsr() {
  ca::CertifyEvidence evidence;
  if (residency_ == CaResidency::kTpm) {
    VTM_ASSIGN_OR_RETURN(evidence, CertifyCaKey());
  }
  ca::CaCertRequest req;
  req.common_name = "vtm host CA " + host_name_;
  req.evidence = std::move(evidence);
  return ca::CreateCaCsr(*signer_, req);
}

Status HostIdentity::InstallCertificate(const std::string& cert_pem, const std::string& chain_pem) {
  // Everything wrong here is wrong input from the operator.
  auto refuse = [](const Error& e, const std::string& what) {
    return Error(ErrorCode::kInvalidArgument, what + ": " + e.message());
  };
  auto der = ca::CertificateToDer(cert_pem);
  if (!der.ok()) return refuse(der.error(), "the certificate to install");
  auto parsed = ca::ParseCertificate(*der);
  if (!parsed.ok()) return refuse(parsed.error(), "the certificate to install");
  const ca::CertificateInfo& info = *parsed;
  if (info.spki_der != ca_public_.spki_der) {
    return Error(ErrorCode::kInvalidArgument,
                 "the certificate is for another key, not this host's CA key (subject " + info.subject + ")");
  }
  if (!info.is_ca) return Error(ErrorCode::kInvalidArgument, "the certificate is not a CA certificate (basicConstraints)");
  std::string chain_der;
  if (!chain_pem.empty()) {
    auto chain = ca::CertificateToDer(chain_pem);
    if (!chain.ok()) return refuse(chain.error(), "the CA chain");
    if (auto st = ca::VerifySignedBy(*der, *chain); !st.ok()) {
      return refuse(st.error(), "the certificate is not signed by the given fleet CA");
    }
    chain_der = *chain;
  }
  VTM_RETURN_IF_ERROR(WriteFileAtomic(dir_ + "/ca.pem", ca::DerToPem(*der), 0644));
  if (!chain_der.empty()) VTM_RETURN_IF_ERROR(WriteFileAtomic(dir_ + "/ca-chain.pem", ca::DerToPem(chain_der), 0644));
  std::lock_guard<std::mutex> lock(mu_);
  ca_cert_der_ = *der;
  chain_der_ = chain_der;
  LOG_INFO << "installed a fleet-CA-issued certificate for the host CA: " << info.subject;
  return OkStatus();
}

Result<SecretBytes> HostIdentity::ActivateCredential(const TpmCredential& credential) {
  std::lock_guard<std::mutex> lock(mu_);
  VTM_ASSIGN_OR_RETURN(TpmKey ek, tpm_->CreateEk(KeyAlg::kEccP256));
  return tpm_->ActivateCredential(ak_, ek, credential);
}

Result<TpmCredential> HostIdentity::MakeCredential(const std::string& ek_tpm2b_public, const std::string& secret,
                                                   const std::string& object_name) {
  std::lock_guard<std::mutex> lock(mu_);
  VTM_ASSIGN_OR_RETURN(TpmKey ek, tpm_->LoadExternalPublic(ek_tpm2b_public));
  return tpm_->MakeCredential(ek, secret, object_name);
}

}  // namespace vtm
