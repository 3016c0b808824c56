// Connects to vtmd's socket and exchanges framed requests and responses.
#include "api_client.h"

#include <sys/socket.h>

#include "vtm/framing.h"
#include "vtm/net.h"

namespace vtm {

Result<VtmdConnection> VtmdConnection::Open(const std::string& socket_path, std::chrono::milliseconds timeout) {
  auto conn = ConnectUnix(socket_path);
  if (!conn.ok()) {
    if (conn.error().code() == ErrorCode::kPermissionDenied) {
      return Error(ErrorCode::kPermissionDenied,
                   "cannot connect to vtmd at " + socket_path + ": permission denied (use root or the vtm group)");
    }
    return Error(ErrorCode::kUnavailable, "cannot reach vtmd at " + socket_path + " (" + conn.error().message() +
                                              "); is vtmd running? (systemctl status vtmd)");
  }
  if (timeout.count() > 0) {
    timeval tv{};
    tv.tv_sec = static_cast<time_t>(timeout.count() / 1000);
    tv.tv_usec = static_cast<suseconds_t>((timeout.count() % 1000) * 1000);
    setsockopt(conn->get(), SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    setsockopt(conn->get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  }
  return VtmdConnection(std::move(conn).value());
}

Result<api::Response> VtmdConnection::Call(const api::Request& request) {
  // vtmd may answer (a refusal) and close before reading the request; its answer is still
  // readable then, so a failed write is only an error if no answer follows.
  Status sent = WriteFrame(fd_.get(), request.SerializeAsString());
  auto frame = ReadFrame(fd_.get());
  if (!frame.ok() && !sent.ok()) return Error(ErrorCode::kUnavailable, "sending to vtmd: " + sent.error().message());
  if (!frame.ok()) return Error(ErrorCode::kUnavailable, "vtmd closed the connection: " + frame.error().message());
  api::Response resp;
  if (!resp.ParseFromString(*frame)) return Error(ErrorCode::kDataLoss, "vtmd sent a malformed response");
  return resp;
}

Result<api::Response> CallVtmd(const std::string& socket_path, const api::Request& request,
                               std::chrono::milliseconds timeout) {
  VTM_ASSIGN_OR_RETURN(VtmdConnection conn, VtmdConnection::Open(socket_path, timeout));
  return conn.Call(request);
}

}  // namespace vtm
