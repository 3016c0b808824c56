// Turns API requests into Manager calls and Manager results into API responses. Kept apart
// from the socket server so the request path can be fuzzed and tested without sockets.
#pragma once

#include <sys/types.h>

#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "api_status.h"
#include "host_attestation_key.h"
#include "host_ca.h"
#include "host_tls.h"
#include "manager.h"
#include "master_key.h"
#include "measurement_log.h"
#include "ra_client.h"
#include "vtm.pb.h"
#include "vtm/mutex.h"

namespace vtm {

class MigrationEngine;

struct HostDescription {
  std::string host_tpm;
  bool simulated = false;
  std::string pcr_policy;
  HostMeasurementLog* measurements = nullptr;  // may be null
  std::string run_dir;
};

// Parses a serialized api::Request and checks its fields (UUIDs, names, exactly one op).
Result<api::Request> ParseRequest(const std::string& bytes);


// Who sent a request. The transport has already let the caller in (the unix socket: root or the
// vtm group); requests that only local root may make check uid here.
struct ApiCaller {
  std::optional<uid_t> uid;  // from the kernel (SO_PEERCRED); nullopt: a remote peer (TLS)
};

class ApiService {
 public:
  // host_ak and host_ca may be null (no host identity: CA requests are refused); ra may be null
  // (attestation requests are refused).
  ApiService(Manager& manager, Registry& registry, HostAttestationKey* host_ak, HostCa* host_ca, HostDescription host,
             RaClient* ra = nullptr)
      : manager_(manager), registry_(registry), host_ak_(host_ak), host_ca_(host_ca), host_(std::move(host)), ra_(ra) {}
  api::Response Handle(const api::Request& request, const ApiCaller& caller);
  // Migration requests are refused until this is set (vtmd sets it when configured for it).
  void SetMigrationEngine(MigrationEngine* engine) { migration_ = engine; }
  // Seals a second copy of the master key to expected PCR values (PCR index -> digest bytes):
  // MasterKey::PrepareReseal in the host TPM's executor. host_reseal is refused until set.
  using ResealFn = std::function<Result<PreparedReseal>(const std::map<int, std::string>& expected)>;
  void SetReseal(ResealFn reseal) { reseal_ = std::move(reseal); }
  // The TLS identities of vtmd's endpoints, issued again by the new key once a host CA key
  // rotation has switched to it (they are made after the service, hence not in its constructor).
  // Each must outlive the service.
  void SetTlsIdentities(std::vector<HostTlsIdentity*> identities) { tls_identities_ = std::move(identities); }

 private:
  void FillVm(const VmRecord& rec, api::Vm* out);
  Status HandleCa(const api::Request& req, const ApiCaller& caller, api::Response* resp);
  Status HandleAttest(const api::Request& req, api::Response* resp);
  // Completes a host CA key rotation (ca_rotation.h) and says what it did in resp.
  Status CompleteRotation(api::Response* resp);
  // Re-issues the TLS certificates of vtmd's endpoints whose CA chain changed; returns the
  // endpoints re-issued ("attestation and migration"), their errors in *errors.
  std::string RefreshEndpointCertificates(std::string* errors);
  Status HandleMigrate(const api::MigrateRequest& req, const ApiCaller& caller, api::Response* resp);
  Status HandleReseal(const api::HostResealRequest& req, const ApiCaller& caller, api::Response* resp);
  Manager& manager_;
  Registry& registry_;
  HostAttestationKey* host_ak_;
  HostCa* host_ca_;
  HostDescription host_;
  RaClient* ra_;
  MigrationEngine* migration_ = nullptr;
  ResealFn reseal_;
  std::vector<HostTlsIdentity*> tls_identities_;
  // One completion of a CA key rotation at a time: two at once would each find the other's
  // claim on the VMs it re-issues and both report the rotation incomplete. The second waits
  // and finds the rotation complete.
  Mutex completion_mu_;
};

}  // namespace vtm
