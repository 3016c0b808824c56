// vtmd's API endpoint: a unix socket (accepted by a vtm::Listener); each connection carries
// framed api::Request / api::Response messages (vtm/framing.h). The caller's uid and groups are
// taken from the kernel (SO_PEERCRED, SO_PEERGROUPS; never /proc/<pid>, whose pid may be
// reused): root and members of the configured group are served, everyone else gets a
// PERMISSION_DENIED response that says who may use vtmd.
//
// Thread safety: Serve() blocks until Shutdown() (from any thread) and joins every connection
// thread before it returns.
#pragma once

#include <sys/types.h>

#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "api_service.h"
#include "vtm/listener.h"
#include "vtm/stream.h"
#include "vtm/unique_fd.h"

namespace vtm {

// Reads framed api::Request messages from stream until the peer hangs up, answering each with
// handle's response (malformed frames and requests get their error, never reach handle). The
// one request loop of every transport of the API: the unix socket and the TLS endpoint.
void ServeRequests(Stream& stream, const std::function<api::Response(const api::Request&)>& handle);

class ApiServer {
 public:
  // allowed_gid: members of this group may use the API besides root (nullopt: root only).
  ApiServer(ApiService& service, std::optional<gid_t> allowed_gid, std::string group_name);
  // Binds the socket (mode 0660, group allowed_gid) and serves until Shutdown().
  Status Listen(const std::string& socket_path);
  void Serve();
  void Shutdown();  // async-signal-unsafe; call from a normal thread

 private:
  void HandleConnection(UniqueFd conn);
  bool Authorized(int fd, uid_t uid, gid_t gid) const;

  ApiService& service_;
  std::optional<gid_t> allowed_gid_;
  std::string group_name_;
  std::unique_ptr<Listener> listener_;
  std::string socket_path_;
};

}  // namespace vtm
