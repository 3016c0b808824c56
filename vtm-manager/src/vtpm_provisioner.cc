// vTPM identity provisioning: keys in the vTPM, certificates from the host CA, NV writes.
#include "vtpm_provisioner.h"

#include <openssl/crypto.h>

#include <utility>

#include "vtm/crash_point.h"
#include "vtm/log.h"
#include "vtm/utc.h"
#include "vtm/x509.h"

namespace vtm {
namespace {

// swtpm (libtpms) identifies itself as manufacturer "IBM" (TPM_PT_MANUFACTURER 0x49424D00),
// firmware 2019-10-23; the EK certificate's SAN carries these per the TCG profile.
constexpr const char* kVtpmManufacturer = "id:49424D00";
constexpr const char* kVtpmModel = "swtpm";
constexpr const char* kVtpmVersion = "id:20191023";
constexpr uint32_t kVtpmSpecRevision = 164;  // TPM_PT_REVISION of libtpms 0.9 (1.64)

std::string AsString(const SecretBytes& b) { return std::string(reinterpret_cast<const char*>(b.data()), b.size()); }

}  // namespace

uint32_t NvIndexOfCertKind(const std::string& kind) {
  if (kind == "ek-ecc") return kNvEkCertEcc;
  if (kind == "ek-rsa") return kNvEkCertRsa;
  if (kind == "ak") return kNvAkCert;
  if (kind == "ik") return kNvIkCert;
  return 0;
}

void ToApiCertificate(const CertRecord& c, api::Certificate* out) {
  out->set_kind(c.kind);
  out->set_serial(c.serial);
  out->set_pem(ca::DerToPem(c.der));
  out->set_nv_index(NvIndexOfCertKind(c.kind));
  out->set_revoked_at(c.revoked_at);
  if (auto info = ca::ParseCertificate(c.der); info.ok() && info->not_after != 0) {
    out->set_not_after(FormatUtc(info->not_after));
  }
}

Result<VtpmSpkis> SpkisOfCertificates(const std::vector<KindAndCertificate>& certs) {
  VtpmSpkis spkis;
  const std::pair<const char*, std::string*> kinds[] = {
      {"ek-ecc", &spkis.ek_ecc}, {"ek-rsa", &spkis.ek_rsa}, {"ak", &spkis.ak}, {"ik", &spkis.ik}};
  for (const auto& [kind, spki] : kinds) {
    auto cert = certs.begin();
    while (cert != certs.end() && cert->first != kind) ++cert;
    if (cert == certs.end()) {
      return Error(ErrorCode::kFailedPrecondition,
                   std::string("no ") + kind + " certificate (a vTPM has one of each kind: ek-ecc, ek-rsa, ak, ik)");
    }
    auto info = ca::ParseCertificate(cert->second);
    if (!info.ok()) return std::move(info).error().Context(std::string("the ") + kind + " certificate");
    *spki = std::move(info->spki_der);
  }
  return spkis;
}

Result<std::vector<CertRecord>> IssueVtpmCertificates(HostCa& host_ca, Registry& registry, const std::string& vm_uuid,
                                                      const std::string& service, const VtpmSpkis& spkis, Env& env) {
  VTM_ASSIGN_OR_RETURN(const ca::Validity validity, host_ca.NewCertificateValidity(env.UnixSeconds()));
  std::vector<CertRecord> certs;
  for (bool rsa : {false, true}) {
    ca::EkCertRequest req;
    req.ek_spki_der = rsa ? spkis.ek_rsa : spkis.ek_ecc;
    req.rsa = rsa;
    req.tpm_manufacturer = kVtpmManufacturer;
    req.tpm_model = kVtpmModel;
    req.tpm_version = kVtpmVersion;
    req.tpm_spec_revision = kVtpmSpecRevision;
    req.validity = validity;
    VTM_ASSIGN_OR_RETURN(CertRecord c, host_ca.Issue(registry, vm_uuid, req.rsa ? "ek-rsa" : "ek-ecc",
                                                     [&](ca::Signer& key, const std::string& issuer, uint64_t serial) {
                                                       req.serial = serial;
                                                       return ca::IssueEkCertificate(key, issuer, req);
                                                     }));
    certs.push_back(std::move(c));
  }
  for (bool is_ak : {true, false}) {
    ca::IdentityCertRequest req;
    req.spki_der = is_ak ? spkis.ak : spkis.ik;
    req.vm_uuid = vm_uuid;
    req.service = service;
    req.attestation_key = is_ak;
    req.validity = validity;
    VTM_ASSIGN_OR_RETURN(CertRecord c, host_ca.Issue(registry, vm_uuid, is_ak ? "ak" : "ik",
                                                     [&](ca::Signer& key, const std::string& issuer, uint64_t serial) {
                                                       req.serial = serial;
                                                       return ca::IssueIdentityCertificate(key, issuer, req);
                                                     }));
    certs.push_back(std::move(c));
  }
  return certs;
}

Status WriteVtpmCertificates(Tpm& vtpm, HostCa& host_ca, const std::vector<CertRecord>& certs) {
  for (const auto& c : certs) {
    const uint32_t index = NvIndexOfCertKind(c.kind);
    if (index == 0) continue;  // not a vTPM certificate kind
    VTM_RETURN_IF_ERROR(vtpm.WriteNvCertificate(index, c.der));
  }
  return vtpm.WriteNvCertificate(kNvCaChain, host_ca.ca_chain_der());
}

Result<ProvisionedVtpm> ProvisionVtpm(Tpm& vtpm, HostTpmExecutor& host_tpm, HostCa& host_ca, Registry& registry,
                                      const std::string& vm_uuid, const std::string& service, Env& env) {
  // vTPMs have three transient object slots: each object is flushed at the end of its scope.
  TpmKeyPublic ek_ecc_pub, ek_rsa_pub, ak_pub, ik_pub;
  TpmAttestation ik_certify;
  {
    VTM_ASSIGN_OR_RETURN(TpmKey ek_rsa, vtpm.CreateEk(KeyAlg::kRsa2048));
    VTM_ASSIGN_OR_RETURN(ek_rsa_pub, vtpm.ReadPublic(ek_rsa));
  }
  CrashPoint("create.provision-ek-created");
  VTM_ASSIGN_OR_RETURN(TpmKey srk, vtpm.CreateSrk());
  VTM_RETURN_IF_ERROR(vtpm.MakePersistent(srk, kSrkHandle));
  VTM_ASSIGN_OR_RETURN(TpmKeyBlob ak_blob, vtpm.CreateKey(srk, KeyRole::kAttestation, SecretBytes()));
  VTM_ASSIGN_OR_RETURN(TpmKey ak, vtpm.LoadKey(srk, ak_blob));
  VTM_ASSIGN_OR_RETURN(ak_pub, vtpm.ReadPublic(ak));
  {
    VTM_ASSIGN_OR_RETURN(TpmKey ek_ecc, vtpm.CreateEk(KeyAlg::kEccP256));
    VTM_ASSIGN_OR_RETURN(ek_ecc_pub, vtpm.ReadPublic(ek_ecc));
    // Credential activation: the host TPM wraps a fresh secret to the vTPM's EK for the AK's
    // name; only a TPM holding both that EK and that AK can unwrap it.
    VTM_ASSIGN_OR_RETURN(SecretBytes challenge, RandomSecret(32));
    VTM_ASSIGN_OR_RETURN(TpmCredential cred,
                         MakeCredentialOnHostTpm(host_tpm, ek_ecc_pub.tpm2b_public, AsString(challenge), ak_pub.name));
    VTM_ASSIGN_OR_RETURN(SecretBytes answer, vtpm.ActivateCredential(ak, ek_ecc, cred));
    if (answer.size() != challenge.size() || CRYPTO_memcmp(answer.data(), challenge.data(), answer.size()) != 0) {
      return Error(ErrorCode::kTpm, "the vTPM's AK failed credential activation with its EK");
    }
  }
  CrashPoint("create.provision-ak-activated");
  VTM_ASSIGN_OR_RETURN(TpmKeyBlob ik_blob, vtpm.CreateKey(srk, KeyRole::kSigning, SecretBytes()));
  VTM_ASSIGN_OR_RETURN(TpmKey ik, vtpm.LoadKey(srk, ik_blob));
  VTM_ASSIGN_OR_RETURN(ik_pub, vtpm.ReadPublic(ik));
  {
    VTM_ASSIGN_OR_RETURN(SecretBytes nonce, RandomSecret(16));
    VTM_ASSIGN_OR_RETURN(ik_certify, vtpm.Certify(ik, ak, AsString(nonce)));
  }

  VTM_ASSIGN_OR_RETURN(std::vector<CertRecord> certs,
                       IssueVtpmCertificates(
                           host_ca, registry, vm_uuid, service,
                           VtpmSpkis{ek_ecc_pub.spki_der, ek_rsa_pub.spki_der, ak_pub.spki_der, ik_pub.spki_der}, env));
  CrashPoint("create.provision-certificates-issued");
  // The IK certificate is only as good as the proof that the IK sits beside the AK.
  ca::CertifyEvidence ev{ik_pub.tpm2b_public, ik_certify.attest, ik_certify.signature, ak_pub.tpm2b_public};
  if (auto st = ca::VerifyCertifyEvidence(certs.back().der, ev); !st.ok()) {
    return std::move(st).error().Context("the vTPM's TPM2_Certify of its IK by its AK does not verify");
  }

  VTM_RETURN_IF_ERROR(vtpm.MakePersistent(ak, kAkHandle));
  VTM_RETURN_IF_ERROR(vtpm.MakePersistent(ik, kIkHandle));
  VTM_RETURN_IF_ERROR(WriteVtpmCertificates(vtpm, host_ca, certs));
  ProvisionedVtpm out;
  out.certs = std::move(certs);
  out.identity.ek_name = ek_ecc_pub.name;
  out.identity.ek_rsa_name = ek_rsa_pub.name;
  out.identity.ak_name = ak_pub.name;
  out.identity.ek_public = ek_ecc_pub.tpm2b_public;
  out.identity.ak_public = ak_pub.tpm2b_public;
  return out;
}

}  // namespace vtm
