// The host CA: key residency, self-signed or fleet-issued certificate, CSR, installation and
// the issue-serial-record step every certificate takes.
#include "host_ca.h"

#include <openssl/evp.h>
#include <openssl/rand.h>

#include <algorithm>
#include <ctime>
#include <filesystem>
#include <utility>

#include "vtm/crash_point.h"
#include "vtm/fs.h"
#include "vtm/hex.h"
#include "vtm/log.h"
#include "vtm/utc.h"

namespace vtm {
namespace {

constexpr const char* kKeyName = "ca-key";
constexpr const char* kNextKeyName = "ca-key-next";
constexpr const char* kNextCertFile = "ca-next.pem";
constexpr const char* kNextChainFile = "ca-next-chain.pem";

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
  id->master_key_ = &master_key;
  id->quote_pcrs_ = quote_pcrs;
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
  // A rotation whose new certificate was written goes forward: a switch a crash cut short is
  // finished before anything is loaded.
  if (PathExists(dir + "/" + kNextCertFile)) {
    if (Status switched = id->SwitchFiles(); !switched.ok()) {
      return std::move(switched).error().Context("finishing the interrupted switch to the new host CA key");
    }
    LOG_WARNING << "finished the switch to the new host CA key that a crash interrupted";
  }
  // A retired key whose final CRL is written has signed its last (a crash came before it was
  // destroyed).
  VTM_ASSIGN_OR_RETURN(std::vector<RetiredCa> retired_cas, id->RetiredCas());
  for (const auto& retired : retired_cas) {
    for (const char* name : {"ca-key-bound.blob", "ca-key.blob", "ca-key.sealed", "ca-key.quote"}) {
      VTM_RETURN_IF_ERROR(RemoveTree(dir + "/retired/" + retired.id + "/" + name));
    }
  }
  // The pending key first: a TPM may hold only three objects (the AK, the CA key, one more).
  if (id->KeyExists(dir, kNextKeyName)) {
    VTM_ASSIGN_OR_RETURN(LoadedKey next, id->LoadKey(dir, kNextKeyName, /*create=*/false));
    id->pending_spki_ = next.pub.spki_der;
    id->Unload(next);
  }
  VTM_ASSIGN_OR_RETURN(id->active_, id->LoadKey(dir, kKeyName, /*create=*/true));

  const std::string cert_path = dir + "/ca.pem";
  if (PathExists(cert_path)) {
    VTM_RETURN_IF_ERROR(id->LoadCertificate(cert_path, dir + "/ca-chain.pem", id->active_.pub.spki_der,
                                            &id->ca_cert_der_, &id->chain_der_));
    if (const std::time_t end = id->ca_not_after(); end != 0) {
      const std::time_t left = end - std::time(nullptr);
      if (left <= 0) {
        LOG_ERROR
            << "the host CA certificate " << cert_path << " expired at " << FormatUtc(end)
            << ": vtmd refuses to issue certificates until a renewed one is installed (vtmctl ca csr, ca install)";
      } else if (constexpr std::time_t kDay = std::time_t{24} * 3600; left < 30 * kDay) {
        LOG_WARNING << "the host CA certificate " << cert_path << " expires at " << FormatUtc(end) << ", in "
                    << left / kDay << " days: install a renewed one (vtmctl ca csr, ca install)";
      }
    }
    if (!id->pending_spki_.empty()) {
      LOG_WARNING << "a host CA key rotation waits for the certificate of its new key: `vtmctl ca csr --pending` for "
                     "the fleet CA, then `vtmctl ca install CERT [CHAIN]` (or `vtmctl ca rotate --cancel`)";
    }
    return id;
  }
  VTM_ASSIGN_OR_RETURN(id->ca_cert_der_, id->SelfSignedCertificate(id->active_));
  VTM_RETURN_IF_ERROR(WriteFileAtomic(cert_path, ca::DerToPem(id->ca_cert_der_), 0644));
  LOG_INFO << "created the host CA ("
           << (residency == CaResidency::kTpm ? "key inside the host TPM" : "software key sealed by the host TPM")
           << "), self-signed certificate " << cert_path;
  return id;
}

HostCa::~HostCa() { Unload(active_); }

bool HostCa::KeyExists(const std::string& key_dir, const std::string& name) const {
  if (residency_ == CaResidency::kTpm) {
    return PathExists(BoundKeyPath(key_dir, name)) || PathExists(LegacyKeyPath(key_dir, name));
  }
  return PathExists(key_dir + "/" + name + ".sealed");
}

Result<HostCa::LoadedKey> HostCa::LoadKey(const std::string& key_dir, const std::string& name, bool create) {
  if (!create && !KeyExists(key_dir, name)) {
    return Error(ErrorCode::kNotFound, "no host CA key " + name + " in " + key_dir);
  }
  LoadedKey key;
  if (residency_ == CaResidency::kTpm) {
    HostTpmExecutor& executor = ak_.executor();
    key.tpm_key = std::make_unique<TpmKey>();
    Status loaded = executor.Run([&](Tpm& tpm) -> Status {
      bool created = false;
      {
        VTM_ASSIGN_OR_RETURN(TpmKey srk, tpm.CreateSrk());
        VTM_ASSIGN_OR_RETURN(SecretBytes auth, master_key_->DeriveAuth(kCaKeyAuthLabel));
        VTM_ASSIGN_OR_RETURN(*key.tpm_key,
                             LoadOrCreateKeyFile(tpm, srk, KeyRole::kSigning, key_dir, name, auth, &created));
      }
      VTM_ASSIGN_OR_RETURN(key.pub, tpm.ReadPublic(*key.tpm_key));
      return OkStatus();
    });
    if (!loaded.ok()) {
      Unload(key);
      return std::move(loaded).error();
    }
    key.signer = std::make_unique<TpmSigner>(executor, *key.tpm_key, key.pub.spki_der);
    return key;
  }
  const std::string key_path = key_dir + "/" + name + ".sealed", quote_path = key_dir + "/" + name + ".quote";
  const std::string label = "vtm:host:ca-key";
  std::unique_ptr<ca::SoftwareSigner> signer;
  if (PathExists(key_path)) {
    VTM_ASSIGN_OR_RETURN(std::string wrapped, ReadFile(key_path));
    auto der = master_key_->Unwrap(wrapped, label);
    if (!der.ok()) return std::move(der).error().Context("unwrapping the sealed CA key " + key_path);
    VTM_ASSIGN_OR_RETURN(signer, ca::SoftwareSigner::FromPrivateKeyDer(*der));
    VTM_ASSIGN_OR_RETURN(std::string quote, ReadFile(quote_path));
    VTM_ASSIGN_OR_RETURN(auto parts, DecodeTwoParts(quote, quote_path));
    key.quote = {std::move(parts.first), std::move(parts.second)};
  } else {
    VTM_ASSIGN_OR_RETURN(signer, ca::SoftwareSigner::Generate());
    SecretBytes der = signer->PrivateKeyDer();
    VTM_ASSIGN_OR_RETURN(std::string wrapped, master_key_->Wrap(der, label));
    // The quote's qualifying data is the SHA-256 of the CA public key: the host AK vouches,
    // once, that this key belongs to this host in this PCR state.
    unsigned char digest[32];
    const std::string& spki = signer->PublicKeySpki();
    EVP_Digest(spki.data(), spki.size(), digest, nullptr, EVP_sha256(), nullptr);
    VTM_ASSIGN_OR_RETURN(auto quoted, ak_.Quote(quote_pcrs_, std::string(reinterpret_cast<char*>(digest), 32)));
    key.quote = std::move(quoted.first);
    // The key file last: its presence says the key (with its quote) exists.
    VTM_RETURN_IF_ERROR(WriteFileAtomic(quote_path, EncodeTwoParts(key.quote.attest, key.quote.signature), 0644));
    VTM_RETURN_IF_ERROR(WriteFileAtomic(key_path, wrapped, 0600));
  }
  key.pub.spki_der = signer->PublicKeySpki();
  key.signer = std::move(signer);
  return key;
}

void HostCa::Unload(LoadedKey& key) {
  key.signer.reset();
  if (key.tpm_key) ak_.executor().DropKey(*key.tpm_key);
  key.tpm_key.reset();
}

Status HostCa::WithActiveKeyUnloaded(const std::function<Status()>& work) {
  if (residency_ != CaResidency::kTpm) return work();
  // Nothing signs meanwhile: Issue and CreateCrl wait for the key lock.
  std::unique_lock<std::shared_mutex> key_lock(key_mu_);
  ak_.executor().DropKey(*active_.tpm_key);
  Status done = work();
  Status reloaded = ak_.executor().Run([&](Tpm& tpm) -> Status {
    if (!KeyExists(dir_, kKeyName)) return Error(ErrorCode::kDataLoss, "the host CA key file is gone from " + dir_);
    bool created = false;
    VTM_ASSIGN_OR_RETURN(TpmKey srk, tpm.CreateSrk());
    VTM_ASSIGN_OR_RETURN(SecretBytes auth, master_key_->DeriveAuth(kCaKeyAuthLabel));
    VTM_ASSIGN_OR_RETURN(*active_.tpm_key,
                         LoadOrCreateKeyFile(tpm, srk, KeyRole::kSigning, dir_, kKeyName, auth, &created));
    return OkStatus();
  });
  if (!reloaded.ok()) return std::move(reloaded).error().Context("loading the host CA key again");
  return done;
}

Status HostCa::LoadCertificate(const std::string& cert_path, const std::string& chain_path, const std::string& spki,
                               std::string* cert_der, std::string* chain_der) const {
  VTM_ASSIGN_OR_RETURN(std::string pem, ReadFile(cert_path));
  auto der = ca::CertificateToDer(pem);
  if (!der.ok()) return std::move(der).error().Context("reading the host CA certificate " + cert_path);
  auto info = ca::ParseCertificate(*der);
  if (!info.ok()) return std::move(info).error().Context(cert_path);
  if (info->spki_der != spki) {
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
      return Error(ErrorCode::kDataLoss,
                   cert_path + ": its TPM2_Certify evidence was made by another AK, not this host's");
    }
  } else if (evidence.error().code() == ErrorCode::kNotFound) {
    if (residency_ == CaResidency::kTpm) {
      LOG_WARNING << cert_path << " carries no TPM2_Certify evidence of the CA key (a fleet CA may have dropped it)";
    }
  } else {
    return std::move(evidence).error().Context(cert_path);
  }
  *cert_der = *der;
  chain_der->clear();
  // The chain counts only if it issued the certificate: an installation cut short between its
  // two files (see InstallCertificate) leaves a chain that does not, and it is ignored.
  if (PathExists(chain_path)) {
    VTM_ASSIGN_OR_RETURN(std::string chain_pem, ReadFile(chain_path));
    VTM_ASSIGN_OR_RETURN(std::string chain, ca::CertificateToDer(chain_pem));
    if (ca::VerifySignedBy(*cert_der, chain).ok()) {
      *chain_der = std::move(chain);
    } else {
      LOG_WARNING << chain_path << " did not issue " << cert_path << " and is ignored (an interrupted `vtmctl ca "
                  << "install`? install the certificate and its chain again)";
    }
  }
  return OkStatus();
}

Result<ca::CertifyEvidence> HostCa::CertifyKey(const LoadedKey& key) {
  VTM_ASSIGN_OR_RETURN(SecretBytes nonce, RandomSecret(16));
  VTM_ASSIGN_OR_RETURN(TpmAttestation att, ak_.executor().Run([&](Tpm& tpm) {
    return ak_.CertifyInJob(tpm, *key.tpm_key, std::string(reinterpret_cast<const char*>(nonce.data()), nonce.size()));
  }));
  ca::CertifyEvidence ev;
  ev.key_tpm2b_public = key.pub.tpm2b_public;
  ev.attest = att.attest;
  ev.signature = att.signature;
  ev.ak_tpm2b_public = ak_.ak_public().tpm2b_public;
  return ev;
}

Result<std::string> HostCa::SelfSignedCertificate(LoadedKey& key) {
  ca::CertifyEvidence evidence;  // none in the sealed residency: the quote binds the key instead
  if (residency_ == CaResidency::kTpm) {
    VTM_ASSIGN_OR_RETURN(evidence, CertifyKey(key));
  }
  ca::CaCertRequest req;
  req.common_name = CaCommonName(host_name_, ak_);
  req.serial = RandomSerial();
  req.validity = ValidityFrom(std::time(nullptr), lifetimes_.ca_days);
  req.evidence = std::move(evidence);
  return ca::CreateSelfSignedCaCertificate(*key.signer, req);
}

TpmAttestation HostCa::ca_key_quote() const {
  std::shared_lock<std::shared_mutex> lock(key_mu_);
  return active_.quote;
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
  // Signed and recorded under the key lock: a rotation's switch waits for it, so a certificate
  // of the retired key is in the registry before the final CRL is made from it.
  std::shared_lock<std::shared_mutex> key_lock(key_mu_);
  auto der = make(*active_.signer, ca_certificate(), serial);
  if (!der.ok()) return std::move(der).error().Context("issuing the " + kind + " certificate for " + owner);
  CertRecord rec;
  rec.serial = serial;
  rec.vm_uuid = owner;
  rec.kind = kind;
  rec.der = std::move(der).value();
  VTM_RETURN_IF_ERROR(registry.AddCertificates({rec}));
  return rec;
}

Result<std::string> HostCa::CreateCrl(const std::vector<ca::RevokedCert>& revoked, uint64_t crl_number,
                                      std::time_t now) {
  std::shared_lock<std::shared_mutex> key_lock(key_mu_);
  return ca::CreateCrl(*active_.signer, ca_certificate(), revoked, crl_number, now, now + std::time_t{7} * 24 * 3600);
}

Result<std::string> HostCa::CreateCsr(bool pending) {
  auto csr_of = [&](LoadedKey& key) -> Result<std::string> {
    ca::CertifyEvidence evidence;
    if (residency_ == CaResidency::kTpm) {
      VTM_ASSIGN_OR_RETURN(evidence, CertifyKey(key));
    }
    ca::CaCertRequest req;
    req.common_name = CaCommonName(host_name_, ak_);
    req.evidence = std::move(evidence);
    return ca::CreateCaCsr(*key.signer, req);
  };
  if (!pending) {
    std::shared_lock<std::shared_mutex> key_lock(key_mu_);
    return csr_of(active_);
  }
  std::lock_guard<std::mutex> rotation(rotation_mu_);
  if (!rotation_pending()) {
    return Error(ErrorCode::kFailedPrecondition,
                 "no host CA key rotation is pending: `vtmctl ca rotate --csr` starts one (and prints its CSR)");
  }
  Result<std::string> csr = std::string();
  VTM_RETURN_IF_ERROR(WithActiveKeyUnloaded([&]() -> Status {
    VTM_ASSIGN_OR_RETURN(LoadedKey next, LoadKey(dir_, kNextKeyName, /*create=*/false));
    csr = csr_of(next);
    Unload(next);
    return OkStatus();
  }));
  return csr;
}

Status HostCa::InstallCertificate(const std::string& cert_pem, const std::string& chain_pem, bool* rotated) {
  if (rotated != nullptr) *rotated = false;
  // Everything wrong here is wrong input from the operator.
  auto refuse = [](const Error& e, const std::string& what) {
    return Error(ErrorCode::kInvalidArgument, what + ": " + e.message());
  };
  auto der = ca::CertificateToDer(cert_pem);
  if (!der.ok()) return refuse(der.error(), "the certificate to install");
  auto parsed = ca::ParseCertificate(*der);
  if (!parsed.ok()) return refuse(parsed.error(), "the certificate to install");
  const ca::CertificateInfo& info = *parsed;
  std::lock_guard<std::mutex> rotation(rotation_mu_);
  std::string pending_spki;
  {
    std::lock_guard<std::mutex> lock(mu_);
    pending_spki = pending_spki_;
  }
  const bool for_pending = !pending_spki.empty() && info.spki_der == pending_spki;
  if (info.spki_der != active_.pub.spki_der && !for_pending) {
    return Error(ErrorCode::kInvalidArgument,
                 std::string("the certificate is for another key, not this host's CA key") +
                     (pending_spki.empty() ? "" : " nor the pending key of its rotation (`vtmctl ca csr --pending`)") +
                     " (subject " + info.subject + ")");
  }
  if (!info.is_ca)
    return Error(ErrorCode::kInvalidArgument, "the certificate is not a CA certificate (basicConstraints)");
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
  if (for_pending) {
    VTM_RETURN_IF_ERROR(WritePendingCertificate(*der, chain_der));
    VTM_RETURN_IF_ERROR(SwitchToNext());
    if (rotated != nullptr) *rotated = true;
    LOG_INFO << "installed a fleet-CA-issued certificate for the new host CA key: " << info.subject;
    return OkStatus();
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

// Rotation.

bool HostCa::rotation_pending() const {
  std::lock_guard<std::mutex> lock(mu_);
  return !pending_spki_.empty();
}

bool HostCa::self_signed() const {
  std::lock_guard<std::mutex> lock(mu_);
  return chain_der_.empty() && ca::VerifySignedBy(ca_cert_der_, ca_cert_der_).ok();
}

Result<std::string> HostCa::BeginRotation(bool self_signed) {
  std::lock_guard<std::mutex> rotation(rotation_mu_);
  // A switch that failed half-way (not by a crash: LoadOrCreate finishes those) is finished.
  if (PathExists(dir_ + "/" + kNextCertFile)) {
    VTM_RETURN_IF_ERROR(SwitchToNext());
    return std::string();
  }
  // A self-signed rotation whose key was made but not yet certified (a crash between the two)
  // goes on with that key; a fleet CA's rotation waits for its certificate.
  if (rotation_pending() && !self_signed) {
    return Error(ErrorCode::kFailedPrecondition,
                 "a host CA key rotation is already pending: its new key waits for a certificate. Install the fleet "
                 "CA's certificate for it (`vtmctl ca csr --pending` prints its CSR again, then `vtmctl ca install "
                 "CERT [CHAIN]`), or discard it with `vtmctl ca rotate --cancel`");
  }
  if (!RetiredAwaitingFinalCrl().empty()) {
    // Also what a `ca rotate` gets that waited above for another one to switch keys.
    return Error(ErrorCode::kFailedPrecondition,
                 "the previous host CA key rotation is not complete yet (its VMs' certificates or the old CA's final "
                 "CRL are missing), so no other new key is made: another `vtmctl ca rotate` may be completing it at "
                 "this moment; otherwise `vtmctl ca rotate` again completes it (the vtmd log says what stopped it)");
  }
  // The new key, and its self-signed certificate or its CSR, while the TPM's third object slot
  // is free of the key in use.
  std::string cert, csr, spki;
  VTM_RETURN_IF_ERROR(WithActiveKeyUnloaded([&]() -> Status {
    VTM_ASSIGN_OR_RETURN(LoadedKey next, LoadKey(dir_, kNextKeyName, /*create=*/true));
    CrashPoint("ca.rotate.key-created");
    spki = next.pub.spki_der;
    Result<std::string> made = std::string();
    if (self_signed) {
      made = SelfSignedCertificate(next);
    } else {
      ca::CertifyEvidence evidence;
      if (residency_ == CaResidency::kTpm) {
        auto certified = CertifyKey(next);
        if (!certified.ok())
          made = std::move(certified).error();
        else
          evidence = std::move(certified).value();
      }
      if (made.ok()) {
        ca::CaCertRequest req;
        req.common_name = CaCommonName(host_name_, ak_);
        req.evidence = std::move(evidence);
        made = ca::CreateCaCsr(*next.signer, req);
      }
    }
    Unload(next);
    if (!made.ok()) return std::move(made).error().Context("certifying the new host CA key");
    (self_signed ? cert : csr) = std::move(made).value();
    return OkStatus();
  }));
  if (self_signed) {
    VTM_RETURN_IF_ERROR(WritePendingCertificate(cert, ""));
    VTM_RETURN_IF_ERROR(SwitchToNext());
    LOG_INFO << "rotated the host CA to a new key with a self-signed certificate";
    return std::string();
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    pending_spki_ = spki;
  }
  LOG_INFO << "created a pending host CA key; it becomes the CA key when the fleet CA's certificate for it is "
              "installed (vtmctl ca install)";
  return csr;
}

Status HostCa::CancelRotation() {
  std::lock_guard<std::mutex> rotation(rotation_mu_);
  if (!rotation_pending()) return Error(ErrorCode::kFailedPrecondition, "no host CA key rotation is pending");
  if (residency_ == CaResidency::kTpm) {
    VTM_RETURN_IF_ERROR(RemoveTree(BoundKeyPath(dir_, kNextKeyName)));
  } else {
    VTM_RETURN_IF_ERROR(RemoveTree(dir_ + "/" + kNextKeyName + ".sealed"));
    VTM_RETURN_IF_ERROR(RemoveTree(dir_ + "/" + kNextKeyName + ".quote"));
  }
  std::lock_guard<std::mutex> lock(mu_);
  pending_spki_.clear();
  LOG_INFO << "discarded the pending host CA key";
  return OkStatus();
}

Status HostCa::WritePendingCertificate(const std::string& cert_der, const std::string& chain_der) {
  // The chain first; the certificate decides: once it is there the rotation goes forward.
  const std::string chain_path = dir_ + "/" + kNextChainFile;
  if (!chain_der.empty()) {
    VTM_RETURN_IF_ERROR(WriteFileAtomic(chain_path, ca::DerToPem(chain_der), 0644));
  } else {
    VTM_RETURN_IF_ERROR(RemoveTree(chain_path));
  }
  VTM_RETURN_IF_ERROR(WriteFileAtomic(dir_ + "/" + kNextCertFile, ca::DerToPem(cert_der), 0644));
  CrashPoint("ca.rotate.certificate-written");
  return OkStatus();
}

Status HostCa::SwitchFiles() {
  const std::string next_path = dir_ + "/" + kNextCertFile, cert_path = dir_ + "/ca.pem";
  const std::string chain_path = dir_ + "/ca-chain.pem", next_chain_path = dir_ + "/" + kNextChainFile;
  VTM_ASSIGN_OR_RETURN(std::string next_pem, ReadFile(next_path));
  VTM_ASSIGN_OR_RETURN(ca::CertificateInfo next, ca::ParseCertificate(next_pem));
  VTM_ASSIGN_OR_RETURN(std::string current_pem, ReadFile(cert_path));
  VTM_ASSIGN_OR_RETURN(ca::CertificateInfo current, ca::ParseCertificate(current_pem));
  if (current.spki_der != next.spki_der) {
    // 1. The old CA, whole, into retired/<serial>/ (staged, then renamed: there or not).
    const std::string retired = dir_ + "/retired/" + current.serial_hex;
    if (!PathExists(retired)) {
      const std::string staging = dir_ + "/retired/.staging";
      VTM_RETURN_IF_ERROR(MakeDir(dir_ + "/retired", 0700));
      VTM_RETURN_IF_ERROR(RemoveTree(staging));
      VTM_RETURN_IF_ERROR(MakeDir(staging, 0700));
      std::vector<std::pair<std::string, mode_t>> files = {{"ca.pem", 0644}, {"ca-chain.pem", 0644}};
      if (residency_ == CaResidency::kTpm) {
        files.emplace_back(PathExists(BoundKeyPath(dir_, kKeyName)) ? "ca-key-bound.blob" : "ca-key.blob", 0600);
      } else {
        files.emplace_back("ca-key.sealed", 0600);
        files.emplace_back("ca-key.quote", 0644);
      }
      for (const auto& [name, mode] : files) {
        const std::string from = dir_ + "/" + name;
        if (!PathExists(from)) continue;
        VTM_ASSIGN_OR_RETURN(std::string data, ReadFile(from));
        std::string to = staging;
        to += "/" + name;
        VTM_RETURN_IF_ERROR(WriteFileAtomic(to, data, mode));
      }
      VTM_RETURN_IF_ERROR(RenameDurably(staging, retired));
    }
    CrashPoint("ca.rotate.old-ca-retired");
    // 2. The new chain, then the new certificate (LoadCertificate ignores a chain that did not
    // issue its certificate, and a crash between them is finished here at the next start).
    if (PathExists(next_chain_path)) {
      VTM_ASSIGN_OR_RETURN(std::string chain, ReadFile(next_chain_path));
      VTM_RETURN_IF_ERROR(WriteFileAtomic(chain_path, chain, 0644));
    } else {
      VTM_RETURN_IF_ERROR(RemoveTree(chain_path));
    }
    CrashPoint("ca.rotate.chain-switched");
    VTM_RETURN_IF_ERROR(WriteFileAtomic(cert_path, next_pem, 0644));
    CrashPoint("ca.rotate.certificate-switched");
  }
  // 3. The new key in the old one's place (its copy is in retired/).
  if (residency_ == CaResidency::kTpm) {
    if (PathExists(BoundKeyPath(dir_, kNextKeyName))) {
      VTM_RETURN_IF_ERROR(RenameDurably(BoundKeyPath(dir_, kNextKeyName), BoundKeyPath(dir_, kKeyName)));
    }
    VTM_RETURN_IF_ERROR(RemoveTree(LegacyKeyPath(dir_, kKeyName)));
  } else {
    // The quote first: the wrapped key's presence says the key is there (LoadKey); a crash
    // between the two leaves ca-key-next.sealed, renamed here at the next start.
    for (const char* ext : {".quote", ".sealed"}) {
      const std::string from = dir_ + "/" + kNextKeyName + ext;
      if (PathExists(from)) VTM_RETURN_IF_ERROR(RenameDurably(from, dir_ + "/" + kKeyName + ext));
      CrashPoint(std::string("ca.rotate.key-switched") + ext);
    }
  }
  CrashPoint("ca.rotate.key-switched");
  VTM_RETURN_IF_ERROR(RemoveTree(next_chain_path));
  VTM_RETURN_IF_ERROR(RemoveTree(next_path));
  CrashPoint("ca.rotate.switched");
  return OkStatus();
}

Status HostCa::SwitchToNext() {
  VTM_RETURN_IF_ERROR(SwitchFiles());
  // The old key goes first (its copy in retired/ signs the final CRL), leaving its TPM object
  // slot to the new one; nothing signs in between.
  std::unique_lock<std::shared_mutex> key_lock(key_mu_);
  Unload(active_);
  VTM_ASSIGN_OR_RETURN(active_, LoadKey(dir_, kKeyName, /*create=*/false));
  std::string cert_der, chain_der;
  VTM_RETURN_IF_ERROR(
      LoadCertificate(dir_ + "/ca.pem", dir_ + "/ca-chain.pem", active_.pub.spki_der, &cert_der, &chain_der));
  std::lock_guard<std::mutex> lock(mu_);
  ca_cert_der_ = std::move(cert_der);
  chain_der_ = std::move(chain_der);
  pending_spki_.clear();
  return OkStatus();
}

std::vector<std::string> HostCa::RetiredAwaitingFinalCrl() const {
  std::vector<std::string> out;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(dir_ + "/retired", ec)) {
    const std::string name = entry.path().filename().string();
    if (name.empty() || name[0] == '.' || !entry.is_directory(ec)) continue;
    if (!PathExists(entry.path().string() + "/crl.pem")) out.push_back(name);
  }
  std::sort(out.begin(), out.end());
  return out;
}

Result<std::string> HostCa::RetiredCertificate(const std::string& id) const {
  VTM_ASSIGN_OR_RETURN(std::string pem, ReadFile(dir_ + "/retired/" + id + "/ca.pem"));
  return ca::CertificateToDer(pem);
}

Status HostCa::WriteFinalCrl(const std::string& id, const std::vector<ca::RevokedCert>& revoked, uint64_t crl_number,
                             std::time_t now) {
  std::lock_guard<std::mutex> rotation(rotation_mu_);
  const std::string retired = dir_ + "/retired/" + id;
  if (PathExists(retired + "/crl.pem")) return OkStatus();  // made by a completion beside this one
  VTM_ASSIGN_OR_RETURN(std::string cert_der, RetiredCertificate(id));
  // Final: nothing later replaces it, so it does not expire (RFC 5280 5.1.2.5 lets nextUpdate
  // be far ahead); 9999-12-31T23:59:59Z, as certificates without a well-defined end.
  constexpr std::time_t kNever = 253402300799;
  Result<std::string> crl = std::string();
  VTM_RETURN_IF_ERROR(WithActiveKeyUnloaded([&]() -> Status {
    VTM_ASSIGN_OR_RETURN(LoadedKey key, LoadKey(retired, kKeyName, /*create=*/false));
    crl = ca::CreateCrl(*key.signer, cert_der, revoked, crl_number, now, kNever);
    Unload(key);
    return OkStatus();
  }));
  if (!crl.ok()) return std::move(crl).error().Context("signing the final CRL of the retired host CA " + id);
  VTM_RETURN_IF_ERROR(WriteFileAtomic(retired + "/crl.pem", ca::DerToPem(*crl, "X509 CRL"), 0644));
  CrashPoint("ca.rotate.final-crl-written");
  // The retired key has signed its last: destroyed (its blob is the only way to load it).
  for (const char* name : {"ca-key-bound.blob", "ca-key.blob", "ca-key.sealed", "ca-key.quote"}) {
    VTM_RETURN_IF_ERROR(RemoveTree(retired + "/" + name));
  }
  LOG_INFO << "the retired host CA " << id << " signed its final CRL (" << revoked.size()
           << " certificates revoked), kept with its certificate in " << retired << "; its key is destroyed";
  return OkStatus();
}

Result<std::vector<HostCa::RetiredCa>> HostCa::RetiredCas() const {
  std::vector<RetiredCa> out;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(dir_ + "/retired", ec)) {
    const std::string name = entry.path().filename().string();
    const std::string crl_path = entry.path().string() + "/crl.pem";
    if (name.empty() || name[0] == '.' || !PathExists(crl_path)) continue;
    RetiredCa r;
    r.id = name;
    VTM_ASSIGN_OR_RETURN(r.certificate, RetiredCertificate(name));
    VTM_ASSIGN_OR_RETURN(r.crl, ReadFile(crl_path));
    out.push_back(std::move(r));
  }
  std::sort(out.begin(), out.end(), [](const RetiredCa& a, const RetiredCa& b) { return a.id < b.id; });
  return out;
}

}  // namespace vtm
