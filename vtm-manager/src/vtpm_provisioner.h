// Provisions a new vTPM before any VM attaches (ISO/IEC 27071 B.3.2.3): both TCG EKs with
// certificates, an AK proven co-resident with the EK by credential activation, an IK certified
// by the AK, all certificates issued by the host CA (a key inside the host TPM) and stored in
// the vTPM's NV at the TCG / GCE indices where standard guest tools look for them.
//
// vTPM layout (docs/architecture.md, "vTPM identity layout"):
//   NV 0x01C00002  RSA 2048 EK certificate (TCG)     NV 0x01C0000A  ECC P-256 EK certificate (TCG)
//   NV 0x01C00100  host CA chain (DER, concatenated) NV 0x01C10002  AK certificate (as GCE places it)
//   NV 0x01C10003  IK certificate
//   0x81000001 SRK, 0x81000002 AK, 0x81000003 IK (persistent). EKs are not persisted: they are
//   primaries that tpm2_createek recreates from the TCG templates.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "host_ca.h"
#include "manager.h"
#include "registry.h"
#include "vtm.pb.h"
#include "vtm/env.h"
#include "vtm/host_tpm_executor.h"
#include "vtm/tpm.h"

namespace vtm {

constexpr uint32_t kNvEkCertRsa = 0x01C00002;
constexpr uint32_t kNvEkCertEcc = 0x01C0000A;
constexpr uint32_t kNvCaChain = 0x01C00100;
constexpr uint32_t kNvAkCert = 0x01C10002;
constexpr uint32_t kNvIkCert = 0x01C10003;
constexpr uint32_t kSrkHandle = 0x81000001;
constexpr uint32_t kAkHandle = 0x81000002;
constexpr uint32_t kIkHandle = 0x81000003;

uint32_t NvIndexOfCertKind(const std::string& kind);
// A registry certificate as the API shows it (PEM, NV index, revocation time).
void ToApiCertificate(const CertRecord& c, api::Certificate* out);

// The public keys a vTPM's certificates certify (DER SubjectPublicKeyInfo).
struct VtpmSpkis {
  std::string ek_ecc, ek_rsa, ak, ik;
};
// A vTPM certificate as its kind ("ek-ecc", "ek-rsa", "ak", "ik") and its DER or PEM: what the
// registry's CertRecord and the API's Certificate both carry.
using KindAndCertificate = std::pair<std::string, std::string>;
// The public keys of the first certificate of each of the four kinds among certs (certificates
// of other kinds are passed over). kFailedPrecondition naming the kind that has none; the
// parser's error, naming the kind, for one that does not parse.
Result<VtpmSpkis> SpkisOfCertificates(const std::vector<KindAndCertificate>& certs);
// The four certificates of a vTPM from this host's CA (each recorded in the registry):
// ek-ecc, ek-rsa, ak, ik, in that order. At provisioning, and when a VM arrives by migration.
// env's clock dates them.
Result<std::vector<CertRecord>> IssueVtpmCertificates(HostCa& host_ca, Registry& registry, const std::string& vm_uuid,
                                                      const std::string& service, const VtpmSpkis& spkis,
                                                      Env& env = *Env::Default());
// Writes certs at their NV indices and the host CA chain at kNvCaChain.
Status WriteVtpmCertificates(Tpm& vtpm, HostCa& host_ca, const std::vector<CertRecord>& certs);

// Runs the whole provisioning against vtpm and returns the certificates it issued (each already
// recorded in the registry by HostCa::Issue) and the vTPM's public identity. host_tpm makes the
// credential-activation challenge.
Result<ProvisionedVtpm> ProvisionVtpm(Tpm& vtpm, HostTpmExecutor& host_tpm, HostCa& host_ca, Registry& registry,
                                      const std::string& vm_uuid, const std::string& service,
                                      Env& env = *Env::Default());

}  // namespace vtm
