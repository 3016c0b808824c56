// Host quote with the measurement log, host identity, a VM's vTPM identity from the registry.
#include "attestation_host.h"

#include "vtm/x509.h"

namespace vtm {

Result<AttestationHost::QuoteAndLog> VtmdAttestationHost::QuoteWithLog(const PcrSelection& selection,
                                                                       const std::string& qualifying) {
  return log_.WithLog([&](const attest::MeasurementLog& log) -> Result<QuoteAndLog> {
    VTM_ASSIGN_OR_RETURN(auto quoted, ak_.Quote(selection, qualifying));
    return QuoteAndLog{std::move(quoted.first), std::move(quoted.second), log};
  });
}

attest::HostIdentity VtmdAttestationHost::Identity() {
  attest::HostIdentity id;
  id.set_ek_certificate(ak_.ek_certificate());
  id.set_ek_public(ak_.ek_public().tpm2b_public);
  id.set_ak_public(ak_.ak_public().tpm2b_public);
  const std::string ca = ca_.ca_certificate();
  id.set_ca_certificate(ca);
  // ca_chain_der() is the CA certificate followed by the fleet chain, as concatenated DER.
  std::vector<std::string> chain = ca::SplitDerCertificates(ca_.ca_chain_der());
  for (size_t i = 1; i < chain.size(); ++i) id.add_ca_chain(chain[i]);
  id.set_host_name(host_name_);
  id.set_simulated_host_tpm(simulated_);
  return id;
}

Result<attest::VtpmIdentity> VtmdAttestationHost::Vtpm(const std::string& vm) {
  VTM_ASSIGN_OR_RETURN(VmRecord rec, registry_.Get(vm));
  if (rec.vtpm.ek_public.empty() || rec.vtpm.ak_public.empty()) {
    return Error(ErrorCode::kFailedPrecondition, "the vTPM of VM " + rec.uuid +
                                                     " has no recorded identity (created without a host CA, or "
                                                     "before vtmd recorded vTPM names); deep attestation needs one");
  }
  attest::VtpmIdentity out;
  out.set_vm_uuid(rec.uuid);
  out.set_ek_public(rec.vtpm.ek_public);
  out.set_ak_public(rec.vtpm.ak_public);
  VTM_ASSIGN_OR_RETURN(auto certs, registry_.CertificatesOf(rec.uuid));
  for (const auto& c : certs) {
    if (!c.revoked_at.empty()) continue;
    if (c.kind == "ek-ecc") out.set_ek_certificate(c.der);
    if (c.kind == "ak") out.set_ak_certificate(c.der);
  }
  return out;
}

Result<SecretBytes> VtmdAttestationHost::ActivateCredential(const TpmCredential& credential) {
  return ak_.ActivateCredential(credential);
}

}  // namespace vtm
