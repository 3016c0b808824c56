// The host CA: key residency, self-signed or fleet-issued certificate, CSR, installation and
// the issue-serial-record step every certificate takes.
#include "host_ca.h"

#include <openssl/evp.h>
#include <openssl/rand.h>

#include <ctime>
#include <utility>

#include "vtm/crash_point.h"
#include "vtm/fs.h"
#include "vtm/hex.h"
#include "vtm/log.h"
#include "vtm/utc.h"

namespace vtm {
namespace {

uint64_t RandomSerial() {
  uint64_t v = 0;
  RAND_bytes(reinterpret_cast<unsigned char*>(&v), sizeof v);
  return (v & 0x7fffffffffffffffULL) | 1;
}

// The host CA's common name: the host name for people, and the first 64 bits of the host EK's
// name so that two hosts (or a host renamed, or two hosts with one name) under one fleet CA
// never issue under the same issuer name.
std::string CaCommonName(const std::string& host_name, const HostAttestationKey& ak) {
  const std::string& ek_name = ak.ek_public().name;  // nameAlg (2 bytes) || digest
  // RFC 5280's upper bound for a common name is 64 characters: the host name gives way.
  return "vtm host CA " + host_name.substr(0, 35) + " " + HexEncode(ek_name.substr(2, 8));
}

ca::Validity ValidityFrom(std::time_t now, uint32_t days) {
  ca::Validity v;
  v.not_before = now - 60;  // a relying party's clock a little behind ours
  v.not_after = days == 0 ? 0 : now + static_cast<std::time_t>(days) * 24 * 3600;
  return v;
}

}  // namespace

Result<std::string> TpmSigner::SignDigest(const std::string& digest) {
  return tpm_.Run([&](Tpm& tpm) { return tpm.SignDigest(key_, digest); });
}

Result<CaResidency> ParseCaResidency(const std::string& text) {
  if (text == "tpm") return CaResidency::kTpm;
  if (text == "sealed") return CaResidency::kSealed;
  return Error(ErrorCode::kInvalidArgument, "CA residency must be 'tpm' or 'sealed', not '" + text + "'");
}

Result<std::unique_ptr<HostCa>> HostCa::LoadOrCreate(HostAttestationKey& ak, const std::string& dir,
                                                     const std::string& host_name, CaResidency residency,
                                                     const MasterKey& master_key, const PcrSelection& quote_pcrs,
                                                     const CertificateLifetimes& lifetimes) {
  std::unique_ptr<HostCa> id(new HostCa(ak));
  id->residency_ = residency;
  id->lifetimes_ = lifetimes;
  const bool has_tpm_key = PathExists(BoundKeyPath(dir, "ca-key")) || PathExists(LegacyKeyPath(dir, "ca-key"));
  const bool has_sealed_key = PathExists(dir + "/ca-key.sealed");
  if ((residency == CaResidency::kTpm && has_sealed_key) || (residency == CaResidency::kSealed && has_tpm_key)) {
    return Error(ErrorCode::kFailedPrecondition,
                 std::string("this host's CA key was created in the '") + (has_tpm_key ? "tpm" : "sealed") +
                     "' residency; a CA key cannot change residency (start vtmd with --ca-residency " +
                     (has_tpm_key ? "tpm" : "sealed") + ")");
  }
  id->dir_ = dir;
  id->host_name_ = host_name;
  VTM_RETURN_IF_ERROR(MakeDir(dir, 0700));
  HostTpmExecutor& executor = ak.executor();
  if (residency == CaResidency::kTpm) {
    Status loaded = executor.Run([&](Tpm& tpm) -> Status {
      bool created = false;
      {
        VTM_ASSIGN_OR_RETURN(TpmKey srk, tpm.CreateSrk());
        VTM_ASSIGN_OR_RETURN(SecretBytes auth, master_key.DeriveAuth(kCaKeyAuthLabel));
        VTM_ASSIGN_OR_RETURN(id->ca_key_,
                             LoadOrCreateKeyFile(tpm, srk, KeyRole::kSigning, dir, "ca-key", auth, &created));
      }
      VTM_ASSIGN_OR_RETURN(id->ca_public_, tpm.ReadPublic(id->ca_key_));
      return OkStatus();
    });
    VTM_RETURN_IF_ERROR(loaded);
    id->signer_ = std::make_unique<TpmSigner>(executor, id->ca_key_, id->ca_public_.spki_der);
  } else {
    VTM_RETURN_IF_ERROR(id->LoadOrCreateSealedCaKey(master_key, quote_pcrs));
  }

  const std::string cert_path = dir + "/ca.pem";
  if (PathExists(cert_path)) {
    VTM_RETURN_IF_ERROR(id->LoadCertificate(cert_path));
    if (const std::time_t end = id->ca_not_after(); end != 0) {
      const std::time_t left = end - std::time(nullptr);
      if (left <= 0) {
        LOG_ERROR << "the host CA certificate " << cert_path << " expired at " << FormatUtc(end)
                  << ": vtmd refuses to issue certificates until a renewed one is installed (vtmctl ca csr, ca install)";
      } else if (constexpr std::time_t kDay = std::time_t{24} * 3600; left < 30 * kDay) {
        LOG_WARNING << "the host CA certificate " << cert_path << " expires at " << FormatUtc(end) << ", in "
                    << left / kDay << " days: install a renewed one (vtmctl ca csr, ca install)";
      }
    }
    return id;
  }
  ca::CertifyEvidence evidence;  // none in the sealed residency: the quote binds the key instead
  if (residency == CaResidency::kTpm) {
    VTM_ASSIGN_OR_RETURN(evidence, id->CertifyCaKey());
  }
  ca::CaCertRequest req;
  req.common_name = CaCommonName(host_name, id->ak_);
  req.serial = RandomSerial();
  req.validity = ValidityFrom(std::time(nullptr), lifetimes.ca_days);
  req.evidence = std::move(evidence);
  VTM_ASSIGN_OR_RETURN(id->ca_cert_der_, ca::CreateSelfSignedCaCertificate(*id->signer_, req));
  VTM_RETURN_IF_ERROR(WriteFileAtomic(cert_path, ca::DerToPem(id->ca_cert_der_), 0644));
  LOG_INFO << "created the host CA ("
           << (residency == CaResidency::kTpm ? "key inside the host TPM" : "software key sealed by the host TPM")
           << "), self-signed certificate " << cert_path;
  return id;
}

HostCa::~HostCa() {
  signer_.reset();
  ak_.executor().DropKey(ca_key_);
}

Status HostCa::LoadCertificate(const std::string& cert_path) {
  VTM_ASSIGN_OR_RETURN(std::string pem, ReadFile(cert_path));
  auto der = ca::CertificateToDer(pem);
  if (!der.ok()) return std::move(der).error().Context("reading the host CA certificate " + cert_path);
  auto info = ca::ParseCertificate(*der);
  if (!info.ok()) return std::move(info).error().Context(cert_path);
  if (info->spki_der != ca_public_.spki_der) {
    return Error(ErrorCode::kDataLoss, cert_path + " is not a certificate for this host's CA key");
  }
  // The TPM2_Certify evidence in the certificate must be about this key and by this host's
  // AK; a fleet CA may have dropped the extension, which only costs verifiers that proof.
  auto evidence = ca::ExtractCertifyEvidence(*der);
  if (evidence.ok()) {
    if (auto st = ca::VerifyCertifyEvidence(*der, *evidence); !st.ok()) {
      return Error(ErrorCode::kDataLoss,
                   cert_path + ": its TPM2_Certify evidence does not verify: " + st.error().message());
    }
    if (evidence->ak_tpm2b_public != ak_.ak_public().tpm2b_public) {
      return Error(ErrorCode::kDataLoss, cert_path + ": its TPM2_Certify evidence was made by another AK, not this host's");
    }
  } else if (evidence.error().code() == ErrorCode::kNotFound) {
    if (residency_ == CaResidency::kTpm) {
      LOG_WARNING << cert_path << " carries no TPM2_Certify evidence of the CA key (a fleet CA may have dropped it)";
    }
  } else {
    return std::move(evidence).error().Context(cert_path);
  }
  ca_cert_der_ = *der;
  // The chain counts only if it issued the certificate: an installation cut short between its
  // two files (see InstallCertificate) leaves a chain that does not, and it is ignored.
  const std::string chain_path = dir_ + "/ca-chain.pem";
  if (PathExists(chain_path)) {
    VTM_ASSIGN_OR_RETURN(std::string chain_pem, ReadFile(chain_path));
    VTM_ASSIGN_OR_RETURN(std::string chain_der, ca::CertificateToDer(chain_pem));
    if (ca::VerifySignedBy(ca_cert_der_, chain_der).ok()) {
      chain_der_ = std::move(chain_der);
    } else {
      LOG_WARNING << chain_path << " did not issue " << cert_path << " and is ignored (an interrupted `vtmctl ca "
                  << "install`? install the certificate and its chain again)";
    }
  }
  return OkStatus();
}

Status HostCa::LoadOrCreateSealedCaKey(const MasterKey& master_key, const PcrSelection& quote_pcrs) {
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
    VTM_ASSIGN_OR_RETURN(auto quoted, ak_.Quote(quote_pcrs, std::string(reinterpret_cast<char*>(digest), 32)));
    ca_quote_ = std::move(quoted.first);
    VTM_RETURN_IF_ERROR(WriteFileAtomic(quote_path, EncodeTwoParts(ca_quote_.attest, ca_quote_.signature), 0644));
    VTM_RETURN_IF_ERROR(WriteFileAtomic(key_path, wrapped, 0600));
  }
  ca_public_.spki_der = key->PublicKeySpki();
  signer_ = std::move(key);
  return OkStatus();
}

Result<ca::CertifyEvidence> HostCa::CertifyCaKey() {
  VTM_ASSIGN_OR_RETURN(SecretBytes nonce, RandomSecret(16));
  VTM_ASSIGN_OR_RETURN(TpmAttestation att, ak_.executor().Run([&](Tpm& tpm) {
    return ak_.CertifyInJob(tpm, ca_key_, std::string(reinterpret_cast<const char*>(nonce.data()), nonce.size()));
  }));
  ca::CertifyEvidence ev;
  ev.key_tpm2b_public = ca_public_.tpm2b_public;
  ev.attest = att.attest;
  ev.signature = att.signature;
  ev.ak_tpm2b_public = ak_.ak_public().tpm2b_public;
  return ev;
}

std::time_t HostCa::ca_not_after() const {
  std::lock_guard<std::mutex> lock(mu_);
  auto info = ca::ParseCertificate(ca_cert_der_);
  return info.ok() ? info->not_after : 0;
}

Result<ca::Validity> HostCa::NewCertificateValidity(std::time_t now) const {
  ca::Validity v = ValidityFrom(now, lifetimes_.vtpm_days);
  const std::time_t ca_end = ca_not_after();
  if (ca_end != 0 && ca_end <= now) {
    return Error(ErrorCode::kFailedPrecondition,
                 "the host CA certificate expired at " + FormatUtc(ca_end) +
                     "; nothing it signs would verify. Install a renewed certificate for the CA key "
                     "(vtmctl ca csr, then vtmctl ca install CERT [CHAIN])");
  }
  // A certificate that outlives its issuer's only fails later, in a relying party: end it
  // with the CA certificate.
  if (ca_end != 0 && (v.not_after == 0 || v.not_after > ca_end)) v.not_after = ca_end;
  return v;
}

std::string HostCa::ca_certificate() const {
  std::lock_guard<std::mutex> lock(mu_);
  return ca_cert_der_;
}

std::string HostCa::ca_chain_der() const {
  std::lock_guard<std::mutex> lock(mu_);
  return ca_cert_der_ + chain_der_;
}

Result<CertRecord> HostCa::Issue(Registry& registry, const std::string& owner, const std::string& kind,
                                 const CertificateMaker& make) {
  VTM_ASSIGN_OR_RETURN(uint64_t serial, registry.NewSerial());
  auto der = make(*signer_, ca_certificate(), serial);
  if (!der.ok()) return std::move(der).error().Context("issuing the " + kind + " certificate for " + owner);
  CertRecord rec;
  rec.serial = serial;
  rec.vm_uuid = owner;
  rec.kind = kind;
  rec.der = std::move(der).value();
  VTM_RETURN_IF_ERROR(registry.AddCertificates({rec}));
  return rec;
}

Result<std::string> HostCa::CreateCsr() {
  ca::CertifyEvidence evidence;
  if (residency_ == CaResidency::kTpm) {
    VTM_ASSIGN_OR_RETURN(evidence, CertifyCaKey());
  }
  ca::CaCertRequest req;
  req.common_name = CaCommonName(host_name_, ak_);
  req.evidence = std::move(evidence);
  return ca::CreateCaCsr(*signer_, req);
}

Status HostCa::InstallCertificate(const std::string& cert_pem, const std::string& chain_pem) {
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
  if (info.not_after != 0 && info.not_after <= std::time(nullptr)) {
    return Error(ErrorCode::kInvalidArgument, "the certificate expired at " + FormatUtc(info.not_after));
  }
  std::string chain_der;
  if (!chain_pem.empty()) {
    auto chain = ca::CertificateToDer(chain_pem);
    if (!chain.ok()) return refuse(chain.error(), "the CA chain");
    if (auto st = ca::VerifySignedBy(*der, *chain); !st.ok()) {
      return refuse(st.error(), "the certificate is not signed by the given fleet CA");
    }
    chain_der = *chain;
  }
  // Two files, each replaced atomically; a crash between them leaves a chain that did not issue
  // the certificate beside it, which LoadCertificate ignores: the chain first, so that the new
  // certificate never appears without it.
  const std::string chain_path = dir_ + "/ca-chain.pem";
  if (!chain_der.empty()) VTM_RETURN_IF_ERROR(WriteFileAtomic(chain_path, ca::DerToPem(chain_der), 0644));
  CrashPoint("ca.install.chain-written");
  VTM_RETURN_IF_ERROR(WriteFileAtomic(dir_ + "/ca.pem", ca::DerToPem(*der), 0644));
  CrashPoint("ca.install.certificate-written");
  if (chain_der.empty() && PathExists(chain_path)) VTM_RETURN_IF_ERROR(RemoveTree(chain_path));
  std::lock_guard<std::mutex> lock(mu_);
  ca_cert_der_ = *der;
  chain_der_ = chain_der;
  LOG_INFO << "installed a fleet-CA-issued certificate for the host CA: " << info.subject;
  return OkStatus();
}

}  // namespace vtm
