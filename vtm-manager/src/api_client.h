// Client side of the vtmd API (used by vtmctl, tests and, later, libvirt hooks).
#pragma once

#include <string>

#include "vtm.pb.h"
#include "vtm/error.h"

namespace vtm {

// Sends one request and returns vtmd's response. kUnavailable if vtmd cannot be reached,
// kPermissionDenied if the socket itself refuses the caller.
Result<api::Response> CallVtmd(const std::string& socket_path, const api::Request& request);

}  // namespace vtm
