// vtmd's client of a running vtm-instance's manager channel (proto/instance.proto): one
// connection per call, so a call after a vtmd restart (or an instance restart) simply connects
// again. Replaces finding instances by scanning /proc.
//
// Thread safety: free functions; each call uses its own connection.
#pragma once

#include <chrono>
#include <string>

#include "instance.pb.h"
#include "vtm/error.h"

namespace vtm {

// Sends one request and returns the instance's answer. kUnavailable when no instance listens
// at socket_path; kFailedPrecondition (with the instance's message) when it refused.
Result<instance_api::InstanceResponse> CallInstance(const std::string& socket_path,
                                                     const instance_api::InstanceRequest& request,
                                                     std::chrono::milliseconds timeout = std::chrono::seconds(10));

Result<instance_api::StatusResponse> InstanceStatus(const std::string& socket_path);
// Fences the instance: QEMU's session ends, the TPM stops, no INIT or state export from then on.
Status FenceInstance(const std::string& socket_path, const std::string& reason);
Status AdmitIncoming(const std::string& socket_path, const std::string& migration_id, uint64_t generation);

}  // namespace vtm
