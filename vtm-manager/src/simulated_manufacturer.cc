// The test manufacturer for simulated host TPMs.
#include "simulated_manufacturer.h"

#include <ctime>

#include "vtm/fs.h"
#include "vtm/log.h"
#include "vtm/x509.h"

namespace vtm {

Status ManufactureSimulatedHostTpm(Tpm& tpm, const std::string& dir) {
  constexpr uint32_t kEkCertEcc = 0x01C0000A;
  auto existing = tpm.ReadNv(kEkCertEcc);
  if (existing.ok()) return OkStatus();
  if (existing.error().code() != ErrorCode::kNotFound) return std::move(existing).error();

  VTM_ASSIGN_OR_RETURN(auto manufacturer, ca::SoftwareSigner::Generate());
  ca::CaCertRequest ca_req;
  ca_req.common_name = "vtm TEST TPM manufacturer CA - simulated host TPM, NOT a real manufacturer";
  ca_req.organization = "vtm test";
  ca_req.serial = 1;
  ca_req.validity.not_before = std::time(nullptr) - 60;
  VTM_ASSIGN_OR_RETURN(std::string ca_der, ca::CreateSelfSignedCaCertificate(*manufacturer, ca_req));

  VTM_ASSIGN_OR_RETURN(TpmKey ek, tpm.CreateEk(KeyAlg::kEccP256));
  VTM_ASSIGN_OR_RETURN(TpmKeyPublic ek_pub, tpm.ReadPublic(ek));
  ca::EkCertRequest req;
  req.ek_spki_der = ek_pub.spki_der;
  req.tpm_manufacturer = "id:49424D00";
  req.tpm_model = "swtpm (simulated host TPM)";
  req.tpm_version = "id:20191023";
  req.serial = 1;
  req.validity.not_before = ca_req.validity.not_before;
  VTM_ASSIGN_OR_RETURN(std::string ek_cert, ca::IssueEkCertificate(*manufacturer, ca_der, req));
  VTM_RETURN_IF_ERROR(tpm.WriteNvCertificate(kEkCertEcc, ek_cert));
  VTM_RETURN_IF_ERROR(WriteFileAtomic(dir + "/test-manufacturer-ca.pem", ca::DerToPem(ca_der), 0644));
  LOG_WARNING << "manufactured the SIMULATED host TPM: its EK certificate is issued by a TEST manufacturer CA ("
              << dir << "/test-manufacturer-ca.pem)";
  return OkStatus();
}

}  // namespace vtm
