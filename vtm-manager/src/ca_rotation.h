// Completes a rotation of the host CA key once HostCa has switched to the new key (host_ca.h):
// every VM's vTPM certificates are re-issued by the new key (as `vtmctl renew-certs` does,
// reaching the vTPM's NV at its next start), every other certificate of the old key is revoked,
// and the old key signs its final CRL. Each step can be repeated: a completion cut short (a
// crash, a VM that was busy) is finished by the next one, at vtmd's start or by `vtmctl ca rotate`.
//
// Thread safety: may be called from any thread; the steps it takes are each safe beside the
// lifecycle (a VM busy with another operation makes the completion fail, to be repeated).
#pragma once

#include <string>
#include <vector>

#include "host_ca.h"
#include "manager.h"
#include "registry.h"
#include "vtm/error.h"

namespace vtm {

struct CaRotationReport {
  std::vector<std::string> retired;  // the retired CAs (serial, hex) whose final CRL was written
  int vms_renewed = 0;
  int revoked = 0;  // certificates of the old key with no VM to re-issue them for (vtmd's TLS, swtpm_setup's)
};

// Completes every rotation whose old CA has no final CRL yet; nothing to do: an empty report.
// kFailedPrecondition, naming the VMs and saying what to do, if some VM's certificates could
// not be re-issued (then no final CRL is written yet).
Result<CaRotationReport> CompleteCaRotation(HostCa& host_ca, Manager& manager, Registry& registry);

// Whether cert_der was signed by the key of ca_cert_der.
bool IssuedBy(const std::string& cert_der, const std::string& ca_cert_der);

}  // namespace vtm
