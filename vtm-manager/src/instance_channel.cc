// Calls over a vtm-instance's manager socket (see instance_channel.h).
#include "instance_channel.h"

#include <sys/socket.h>
#include <sys/time.h>

#include "vtm/framing.h"
#include "vtm/net.h"

namespace vtm {

Result<instance_api::InstanceResponse> CallInstance(const std::string& socket_path,
                                                     const instance_api::InstanceRequest& request,
                                                     std::chrono::milliseconds timeout) {
  auto conn = ConnectUnix(socket_path);
  if (!conn.ok()) {
    return Error(ErrorCode::kUnavailable, "no vtm-instance answers on " + socket_path + ": " + conn.error().message());
  }
  timeval tv{};
  tv.tv_sec = static_cast<time_t>(timeout.count() / 1000);
  tv.tv_usec = static_cast<suseconds_t>((timeout.count() % 1000) * 1000);
  setsockopt(conn->get(), SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  setsockopt(conn->get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  VTM_RETURN_IF_ERROR(WriteFrame(conn->get(), request.SerializeAsString()));
  auto frame = ReadFrame(conn->get());
  if (!frame.ok()) return std::move(frame).error().Context("reading the answer of the vtm-instance at " + socket_path);
  instance_api::InstanceResponse response;
  if (!response.ParseFromString(*frame)) {
    return Error(ErrorCode::kInternal, "the vtm-instance at " + socket_path + " sent an invalid InstanceResponse");
  }
  if (!response.ok()) return Error(ErrorCode::kFailedPrecondition, response.error());
  return response;
}

Result<instance_api::StatusResponse> InstanceStatus(const std::string& socket_path) {
  instance_api::InstanceRequest request;
  request.mutable_status();
  VTM_ASSIGN_OR_RETURN(auto response, CallInstance(socket_path, request));
  return response.status();
}

Status FenceInstance(const std::string& socket_path, const std::string& reason) {
  instance_api::InstanceRequest request;
  request.mutable_fence()->set_reason(reason);
  auto response = CallInstance(socket_path, request);
  if (!response.ok()) return std::move(response).error();
  return OkStatus();
}

Status AdmitIncoming(const std::string& socket_path, const std::string& migration_id, uint64_t generation) {
  instance_api::InstanceRequest request;
  request.mutable_admit_incoming()->set_migration_id(migration_id);
  request.mutable_admit_incoming()->set_generation(generation);
  auto response = CallInstance(socket_path, request);
  if (!response.ok()) return std::move(response).error();
  return OkStatus();
}

}  // namespace vtm
