// Client side of the vtmd API (used by vtmctl, tests and, later, libvirt hooks).
#pragma once

#include <chrono>
#include <string>

#include "vtm.pb.h"
#include "vtm/error.h"

namespace vtm {

// Sends one request and returns vtmd's response. kUnavailable if vtmd cannot be reached,
// kPermissionDenied if the socket itself refuses the caller. A non-zero timeout bounds every
// send and receive (a hook must not hang on a stopped vtmd); zero waits as long as vtmd takes.
Result<api::Response> CallVtmd(const std::string& socket_path, const api::Request& request,
                               std::chrono::milliseconds timeout = std::chrono::milliseconds(0));

}  // namespace vtm
