// Client side of the vtmd API (used by vtmctl, tests and, later, libvirt hooks).
#pragma once

#include <chrono>
#include <string>

#include "vtm.pb.h"
#include "vtm/error.h"
#include "vtm/unique_fd.h"

namespace vtm {

// One connection to vtmd that carries requests one after the other: a caller that must not
// pay for connecting at a moment that matters (a live migration's commit, sent while the guest
// is paused) opens it earlier. Thread safety: one thread at a time.
class VtmdConnection {
 public:
  // kUnavailable if vtmd cannot be reached, kPermissionDenied if the socket itself refuses the
  // caller. A non-zero timeout bounds every send and receive (a hook must not hang on a
  // stopped vtmd); zero waits as long as vtmd takes.
  static Result<VtmdConnection> Open(const std::string& socket_path, std::chrono::milliseconds timeout);
  // Sends one request and returns vtmd's response; kUnavailable if the connection failed.
  Result<api::Response> Call(const api::Request& request);

 private:
  explicit VtmdConnection(UniqueFd fd) : fd_(std::move(fd)) {}
  UniqueFd fd_;
};

// Opens a connection, sends one request and returns vtmd's response (errors as above).
Result<api::Response> CallVtmd(const std::string& socket_path, const api::Request& request,
                               std::chrono::milliseconds timeout = std::chrono::milliseconds(0));

}  // namespace vtm
