// vtmd's channel into a running instance (see manager_channel.h).
#include "manager_channel.h"

#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>

#include "control_relay.h"
#include "instance.pb.h"
#include "swtpm_ctrl.h"
#include "vtm/framing.h"
#include "vtm/log.h"
#include "vtm/net.h"

namespace vtm::instance {
namespace {

// Requests are a few bytes; a larger frame is not from vtmd.
constexpr size_t kMaxRequestFrame = 4096;

instance_api::Mode ToProto(RelayMode mode) {
  switch (mode) {
    case RelayMode::kActive:
      return instance_api::MODE_ACTIVE;
    case RelayMode::kIncoming:
      return instance_api::MODE_INCOMING;
    case RelayMode::kFenced:
      return instance_api::MODE_FENCED;
  }
  return instance_api::MODE_UNSPECIFIED;
}

}  // namespace

ManagerChannel::ManagerChannel(UniqueFd listener, uid_t manager_uid, std::string vm_uuid, pid_t swtpm_pid)
    : listener_(std::move(listener)), manager_uid_(manager_uid), vm_uuid_(std::move(vm_uuid)), swtpm_pid_(swtpm_pid) {}

void ManagerChannel::OnListenerReadable() {
  UniqueFd conn(accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC));
  if (!conn.valid()) {
    if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED)
      LOG_WARNING << ErrnoError("accepting on the manager socket").message();
    return;
  }
  // The socket file is already out of others' reach; the peer check holds even if its mode
  // or directory were loosened by mistake.
  auto cred = GetPeerCredentials(conn.get());
  if (!cred.ok() || cred->uid != manager_uid_) {
    LOG_WARNING << "refused a manager connection from uid " << (cred.ok() ? std::to_string(cred->uid) : "?")
                << " (only uid " << manager_uid_ << " may manage this instance)";
    return;
  }
  SetIoTimeouts(conn.get());
  if (conn_.valid()) LOG_INFO << "a new manager connection replaces the previous one";
  conn_ = std::move(conn);
}

void ManagerChannel::OnConnectionReadable(ControlRelay& relay) {
  auto frame = ReadFrame(conn_.get(), kMaxRequestFrame);
  if (!frame.ok()) {
    if (frame.error().code() != ErrorCode::kUnavailable)
      LOG_WARNING << "manager channel: " << frame.error().message() << "; closing it";
    conn_.reset();
    return;
  }
  instance_api::InstanceRequest request;
  instance_api::InstanceResponse response;
  response.set_ok(true);
  if (!request.ParseFromString(*frame)) {
    response.set_ok(false);
    response.set_error("the manager request is not a valid InstanceRequest");
  } else if (request.has_status()) {
    auto* s = response.mutable_status();
    const auto& c = relay.counters();
    s->set_vm_uuid(vm_uuid_);
    s->set_pid(getpid());
    s->set_swtpm_pid(swtpm_pid_);
    s->set_mode(ToProto(relay.policy().mode));
    s->set_qemu_attached(relay.client_attached());
    s->set_sessions(relay.sessions());
    s->set_migration_id(relay.migration_id());
    s->set_generation(relay.generation());
    s->set_state_blobs_exported(c.exported);
    s->set_state_blobs_imported(c.imported);
    s->set_imported_blob_types(relay.policy().imported_blob_types);
    s->set_requests_refused(c.refused);
    s->set_last_refusal(c.last_refusal);
    s->set_inits(c.inits);
  } else if (request.has_fence()) {
    bool attached = relay.client_attached();
    Status st = relay.Fence(request.fence().reason());
    if (!st.ok()) {
      response.set_ok(false);
      response.set_error(st.error().message());
    } else {
      response.mutable_fence()->set_qemu_was_attached(attached);
    }
  } else if (request.has_admit_incoming()) {
    Status st = relay.AdmitIncoming(request.admit_incoming().migration_id(), request.admit_incoming().generation());
    if (!st.ok()) {
      response.set_ok(false);
      response.set_error(st.error().message());
    } else {
      response.mutable_admit_incoming();
    }
  } else {
    response.set_ok(false);
    response.set_error("unknown manager request (is vtmd newer than this vtm-instance?)");
  }
  auto st = WriteFrame(conn_.get(), response.SerializeAsString());
  if (!st.ok()) {
    LOG_WARNING << "manager channel: answering failed: " << st.error().message();
    conn_.reset();
  }
}

}  // namespace vtm::instance
