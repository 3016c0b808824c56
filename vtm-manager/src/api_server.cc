// Accept loop, peer-credential authorization and per-connection request handling.
#include "api_server.h"

#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>

#include "vtm/framing.h"
#include "vtm/fs.h"
#include "vtm/log.h"
#include "vtm/net.h"

namespace vtm {
namespace {
constexpr int kMaxConnections = 64;
}

ApiServer::ApiServer(ApiService& service, std::optional<gid_t> allowed_gid, std::string group_name)
    : service_(service), allowed_gid_(allowed_gid), group_name_(std::move(group_name)) {}

Status ApiServer::Listen(const std::string& socket_path) {
  VTM_ASSIGN_OR_RETURN(UniqueFd listen_fd, ListenUnix(socket_path, allowed_gid_ ? 0660 : 0600));
  if (allowed_gid_ && chown(socket_path.c_str(), 0, *allowed_gid_) != 0) {
    return ErrnoError("giving " + socket_path + " to group " + group_name_);
  }
  socket_path_ = socket_path;
  listener_ = std::make_unique<Listener>(
      std::move(listen_fd), [this](UniqueFd conn) { HandleConnection(std::move(conn)); }, kMaxConnections,
      [](UniqueFd conn) {
        api::Response busy;
        busy.set_status(api::STATUS_UNAVAILABLE);
        busy.set_error("vtmd is serving " + std::to_string(kMaxConnections) + " connections; try again");
        (void)WriteFrame(conn.get(), busy.SerializeAsString());
      });
  return OkStatus();
}

bool ApiServer::Authorized(int fd, uid_t uid, gid_t gid) const {
  if (uid == 0) return true;
  if (!allowed_gid_) return false;
  if (gid == *allowed_gid_) return true;
  auto groups = GetPeerGroups(fd);
  if (!groups.ok()) {
    LOG_WARNING << "reading the groups of an API caller: " << groups.error().message();
    return false;
  }
  return std::find(groups->begin(), groups->end(), *allowed_gid_) != groups->end();
}

void ApiServer::Serve() {
  if (listener_) listener_->Serve();  // returns once every in-flight request has been answered
  ::unlink(socket_path_.c_str());
}

void ApiServer::Shutdown() {
  if (listener_) listener_->Shutdown();
}

void ApiServer::HandleConnection(UniqueFd conn) {
  auto cred = GetPeerCredentials(conn.get());
  if (!cred.ok()) return;
  // Bound how long a silent client can hold a connection.
  timeval tv{300, 0};
  setsockopt(conn.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  if (!Authorized(conn.get(), cred->uid, cred->gid)) {
    LOG_WARNING << "refused API connection from uid " << cred->uid << " (pid " << cred->pid << ")";
    api::Response denied;
    denied.set_status(api::STATUS_PERMISSION_DENIED);
    denied.set_error("uid " + std::to_string(cred->uid) + " may not use vtmd: only root" +
                     (allowed_gid_ ? " and members of group '" + group_name_ + "'" : std::string()) + " may");
    (void)WriteFrame(conn.get(), denied.SerializeAsString());
    return;
  }
  FdStream stream(conn.get());
  ServeRequests(stream, [&](const api::Request& req) {
    api::Response resp = service_.Handle(req, ApiCaller{cred->uid});
    if (resp.status() != api::STATUS_OK) LOG_INFO << "uid " << cred->uid << ": request failed: " << resp.error();
    return resp;
  });
}

void ServeRequests(Stream& stream, const std::function<api::Response(const api::Request&)>& handle) {
  for (;;) {
    auto frame = ReadFrame(stream);
    if (!frame.ok()) {
      if (frame.error().code() == ErrorCode::kInvalidArgument) {
        api::Response bad;
        bad.set_status(api::STATUS_INVALID_ARGUMENT);
        bad.set_error(frame.error().message());
        (void)WriteFrame(stream, bad.SerializeAsString());
      }
      return;
    }
    api::Response resp;
    auto req = ParseRequest(*frame);
    if (!req.ok()) {
      resp.set_status(ToApiStatus(req.error().code()));
      resp.set_error(req.error().message());
    } else {
      resp = handle(*req);
    }
    if (!WriteFrame(stream, resp.SerializeAsString()).ok()) return;
  }
}

}  // namespace vtm
