// Shared by the TLS client and the labelled-data verifier: the trust store (trusted CAs and
// CRLs), readable reasons for a failed chain check, and the check that a certificate is a
// vTPM IK certificate naming the expected VM and service.
// Thread safety: free functions, no shared state.
#pragma once

#include <openssl/x509.h>

#include <string>
#include <vector>

#include "vtm/error.h"
#include "vtm/ossl_ptr.h"

namespace vtm::tc::internal {

using X509StorePtr = OsslPtr<X509_STORE, X509_STORE_free>;

// A store holding only the given CAs (no system store) and CRLs, with CRL checking of every
// certificate in the chain unless allow_missing_crl and no CRL is given.
Result<X509StorePtr> MakeTrustStore(const std::string& trusted_ca_pem, const std::vector<std::string>& crls,
                                    bool allow_missing_crl);

// "the service's certificate ... is revoked" etc. for X509_V_ERR_* `err` on `cert` (may be
// null); `whose` names the peer ("the service", "the signer").
Error ChainError(int err, X509* cert, const std::string& whose);

struct IkIdentity {
  std::string vm_uuid;
  std::string service;
  std::string subject;
  std::string certificate_der;
};
// Reads the VM and service from an IK certificate's URI SANs (urn:uuid:, vtm:service:); refuses
// a certificate without the TLS server EKU the host CA gives only IKs (an AK or EK certificate
// of the same vTPM is not a TLS identity), or naming another VM or service than expected
// (empty: any).
Result<IkIdentity> CheckIkCertificate(X509* cert, const std::string& expected_vm, const std::string& expected_service,
                                      const std::string& whose);

}  // namespace vtm::tc::internal
