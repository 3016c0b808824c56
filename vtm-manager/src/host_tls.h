// TLS credentials of vtmd's network endpoints (attestation, migration): a fresh P-256 key that
// exists only in vtmd's memory and a certificate for it from the host CA (recorded in the
// registry like every certificate of the host CA), with the fleet chain if one is installed,
// so a peer trusting the fleet CA accepts it. Issued at each vtmd start, and again when a host
// CA key rotation retires (and revokes) the key that issued them (HostTlsIdentity).
//
// Thread safety: IssueHostTlsCredentials is a free function; HostCa and Registry are
// thread-safe. HostTlsIdentity: every method may be called from any thread.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "host_ca.h"
#include "registry.h"
#include "vtm/mutex.h"
#include "vtm/tls.h"

namespace vtm {

// purpose: "attestation" | "migration" (named in the certificate); trusted_ca_pem: whom the
// endpoint accepts as its peer.
Result<TlsCredentials> IssueHostTlsCredentials(HostCa& ca, Registry& registry, const std::string& host_name,
                                               const std::string& purpose, std::string trusted_ca_pem,
                                               uint64_t* serial = nullptr);

// The TLS identity one endpoint presents, as a listener (server_context) and as a client
// connecting to a peer (client_context). ReissueIfStale replaces it in place once the host CA
// has switched to a new key: connections made after it present the new certificate, while a
// connection already open keeps the context it was made with (its SSL holds a reference to its
// SSL_CTX) and finishes on the old one. Nothing is persisted: the next start issues anew.
class HostTlsIdentity {
 public:
  // Issues the first key and certificate. ca and registry must outlive the identity.
  static Result<std::unique_ptr<HostTlsIdentity>> Issue(HostCa& ca, Registry& registry, std::string host_name,
                                                        std::string purpose, std::string trusted_ca_pem);
  HostTlsIdentity(const HostTlsIdentity&) = delete;
  HostTlsIdentity& operator=(const HostTlsIdentity&) = delete;

  // Issues a new key and certificate if the CA key in use (or its chain) is not the one that
  // issued the current certificate; *reissued says whether it did. On failure the current
  // identity stays in use.
  Status ReissueIfStale(bool* reissued = nullptr) EXCLUDES(reissue_mu_, mu_);

  // The contexts of the current identity (never null); one per connection, fetched when it is made.
  std::shared_ptr<const TlsContext> server_context() const EXCLUDES(mu_);
  std::shared_ptr<const TlsContext> client_context() const EXCLUDES(mu_);
  // DER of the current certificate, and its serial in the host CA's registry.
  std::string certificate_der() const EXCLUDES(mu_);
  uint64_t serial() const EXCLUDES(mu_);
  const std::string& purpose() const { return purpose_; }

 private:
  struct Current {
    std::shared_ptr<const TlsContext> server;
    std::shared_ptr<const TlsContext> client;
    std::string certificate_der;
    std::string issuer_chain_der;  // the host CA's chain when it was issued
    uint64_t serial = 0;
  };
  HostTlsIdentity(HostCa& ca, Registry& registry, std::string host_name, std::string purpose,
                  std::string trusted_ca_pem)
      : ca_(ca),
        registry_(registry),
        host_name_(std::move(host_name)),
        purpose_(std::move(purpose)),
        trusted_ca_pem_(std::move(trusted_ca_pem)) {}
  Result<Current> IssueCurrent();
  bool Stale() const EXCLUDES(mu_);

  HostCa& ca_;
  Registry& registry_;
  const std::string host_name_;
  const std::string purpose_;
  const std::string trusted_ca_pem_;
  Mutex reissue_mu_;  // one issuance at a time; held across the CA's signature, unlike mu_
  mutable Mutex mu_;
  Current current_ GUARDED_BY(mu_);
};

}  // namespace vtm
