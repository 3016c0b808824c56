// Completion of a host CA key rotation: re-issue, revoke, final CRL.
#include "ca_rotation.h"

#include <ctime>
#include <set>

#include "vtm/crash_point.h"
#include "vtm/log.h"
#include "vtm/x509.h"

namespace vtm {

bool IssuedBy(const std::string& cert_der, const std::string& ca_cert_der) {
  return ca::VerifySignedBy(cert_der, ca_cert_der).ok();
}

Result<CaRotationReport> CompleteCaRotation(HostCa& host_ca, Manager& manager, Registry& registry) {
  CaRotationReport report;
  for (const std::string& id : host_ca.RetiredAwaitingFinalCrl()) {
    VTM_ASSIGN_OR_RETURN(std::string old_ca, host_ca.RetiredCertificate(id));
    // 1. Each VM with a valid certificate of the old key gets its keys certified by the new one.
    VTM_ASSIGN_OR_RETURN(std::vector<CertRecord> valid, registry.ValidCertificates());
    std::set<std::string> vms;
    for (const CertRecord& c : valid) {
      if (IssuedBy(c.der, old_ca) && registry.Get(c.vm_uuid).ok()) vms.insert(c.vm_uuid);
    }
    std::string failed;
    int failures = 0;
    for (const std::string& uuid : vms) {
      auto renewed = manager.RenewCertificates(uuid);
      if (!renewed.ok()) {
        ++failures;
        failed += (failed.empty() ? "" : "; ") + renewed.error().message();
        continue;
      }
      ++report.vms_renewed;
      CrashPoint("ca.rotate.vm-renewed");
    }
    if (failures > 0) {
      return Error(ErrorCode::kFailedPrecondition,
                   "the host CA key rotation is not complete: the certificates of " + std::to_string(failures) +
                       " VMs were not re-issued by the new key (" + failed +
                       "). Run `vtmctl ca rotate` again once they are at rest or running (not moving): it completes "
                       "the rotation");
    }
    // 2. What the old key issued for no VM of this host (vtmd's TLS certificates, swtpm_setup's
    // EK certificates, a VM that left) is revoked.
    VTM_ASSIGN_OR_RETURN(valid, registry.ValidCertificates());
    std::set<uint64_t> serials;
    for (const CertRecord& c : valid) {
      if (IssuedBy(c.der, old_ca)) serials.insert(c.serial);
    }
    VTM_ASSIGN_OR_RETURN(int revoked, registry.RevokeCertificates(serials));
    report.revoked += revoked;
    CrashPoint("ca.rotate.old-certificates-revoked");
    // 3. The old key's final CRL: everything it issued, now all revoked.
    VTM_ASSIGN_OR_RETURN(std::vector<CertRecord> all_revoked, registry.RevokedCertificates());
    std::vector<ca::RevokedCert> list;
    for (const CertRecord& c : all_revoked) {
      if (IssuedBy(c.der, old_ca)) list.push_back({c.serial, static_cast<std::time_t>(c.revoked_unix)});
    }
    VTM_ASSIGN_OR_RETURN(uint64_t number, registry.NextCrlNumber());
    VTM_RETURN_IF_ERROR(host_ca.WriteFinalCrl(id, list, number, std::time(nullptr)));
    report.retired.push_back(id);
    LOG_INFO << "host CA key rotation complete: " << report.vms_renewed << " VMs' certificates re-issued by the new "
             << "key, " << revoked << " other certificates of the old key revoked, final CRL of the old CA " << id;
  }
  return report;
}

}  // namespace vtm
