// TLS credentials of vtmd's network endpoints (attestation, migration): a fresh P-256 key that
// exists only in vtmd's memory and a certificate for it from the host CA (recorded in the
// registry like every certificate of the host CA), with the fleet chain if one is installed,
// so a peer trusting the fleet CA accepts it. Issued at each vtmd start.
//
// Thread safety: a free function; HostCa and Registry are thread-safe.
#pragma once

#include <string>

#include "host_ca.h"
#include "registry.h"
#include "vtm/tls.h"

namespace vtm {

// purpose: "attestation" | "migration" (named in the certificate); trusted_ca_pem: whom the
// endpoint accepts as its peer.
Result<TlsCredentials> IssueHostTlsCredentials(HostCa& ca, Registry& registry, const std::string& host_name,
                                               const std::string& purpose, std::string trusted_ca_pem,
                                               uint64_t* serial = nullptr);

}  // namespace vtm
