// The manager-to-manager channel of sealed migration (ISO/IEC 27070 5.3, 6.6): mutual TLS 1.3
// between vtmd peers, each presenting the "migration" certificate its host CA issued at start
// or after the last rotation of its key (host_tls.h) and accepting only a peer whose
// certificate chains to the fleet CA AND is a vtmd migration certificate (so a VM's IK
// certificate under the same fleet CA is no peer). Framed migration_api::PeerRequest / PeerResponse messages
// (proto/migration.proto), one per step. The MigrationEndpoint is the destination's listener; the MigrationPeerClient
// the source's connection. What a step does is the MigrationEngine's business.
//
// Thread safety: MigrationEndpoint::Serve blocks until Shutdown (from any thread) and joins
// every connection; one MigrationPeerClient per thread.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <string>

#include "migration.pb.h"
#include "vtm/error.h"
#include "vtm/listener.h"
#include "vtm/tls.h"

namespace vtm {

class HostTlsIdentity;  // host_tls.h

// Cold packages carry the vTPM's state; larger than the API's frames.
constexpr size_t kMaxMigrationFrameLen = 16u << 20;

// Parses and checks a source's request frame: one step; UUIDs, names, migration IDs, nonces and
// sizes within bounds. kInvalidArgument saying what is wrong. (The endpoint answers nothing
// else; fuzzed by fuzz/migration_request_fuzzer.cc.)
Result<migration_api::PeerRequest> ParsePeerRequest(const std::string& bytes);

// kPermissionDenied unless der is a vtmd migration certificate (subject "<host> vtmd
// migration", a vtm:host: URI); returns the host name it names.
Result<std::string> MigrationPeerHost(const std::string& der);

class MigrationEndpoint {
 public:
  // peer_host: the host name in the source's verified certificate.
  using Handler = std::function<migration_api::PeerResponse(const migration_api::PeerRequest&, const std::string& peer_host)>;
  // identity must outlive the endpoint; each connection is accepted with its identity then.
  static Result<std::unique_ptr<MigrationEndpoint>> Start(const std::string& listen, const HostTlsIdentity& identity,
                                                          Handler handler, int max_connections = 16);
  int port() const { return port_; }
  void Serve() { listener_->Serve(); }
  void Shutdown() { listener_->Shutdown(); }

 private:
  MigrationEndpoint(const HostTlsIdentity& identity, Handler handler) : tls_(identity), handler_(std::move(handler)) {}
  void HandleConnection(UniqueFd conn);
  const HostTlsIdentity& tls_;
  Handler handler_;
  std::unique_ptr<Listener> listener_;
  int port_ = 0;
};

class MigrationPeerClient {
 public:
  // Connects to the destination's endpoint; kUnavailable (with the address) if it cannot be
  // reached, kPermissionDenied if its certificate is no vtmd migration certificate of the fleet.
  static Result<std::unique_ptr<MigrationPeerClient>> Connect(const std::string& host_port,
                                                              const TlsCredentials& credentials,
                                                              std::chrono::milliseconds timeout);
  // The same with a client context made already (HostTlsIdentity::client_context).
  static Result<std::unique_ptr<MigrationPeerClient>> Connect(const std::string& host_port,
                                                              const std::shared_ptr<const TlsContext>& context,
                                                              std::chrono::milliseconds timeout);
  // One step; the destination's refusal comes back as its Error (code and message).
  Result<migration_api::PeerResponse> Call(const migration_api::PeerRequest& request);
  // Call in two halves, for a caller with something to do while the destination answers: Send
  // the request, then Receive its answer (one Receive per Send, in order).
  Status Send(const migration_api::PeerRequest& request);
  Result<migration_api::PeerResponse> Receive();
  const std::string& peer_certificate_der() const { return stream_->peer_certificate_der(); }
  const std::string& peer_host() const { return peer_host_; }

 private:
  MigrationPeerClient(std::unique_ptr<TlsStream> stream, std::string peer_host, std::string address)
      : stream_(std::move(stream)), peer_host_(std::move(peer_host)), address_(std::move(address)) {}
  std::unique_ptr<TlsStream> stream_;
  std::string peer_host_;
  std::string address_;
};

}  // namespace vtm
