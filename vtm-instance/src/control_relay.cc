// Relay of QEMU's control connection to swtpm (see control_relay.h).
#include "control_relay.h"

#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "manager_channel.h"
#include "swtpm_ctrl.h"
#include "vtm/log.h"
#include "vtm/net.h"

namespace vtm::instance {
namespace {
// How many fds one recvmsg accepts; QEMU passes exactly one (with SET_DATAFD).
constexpr int kMaxFdsPerMessage = 4;
}  // namespace

ControlRelay::ControlRelay(UniqueFd listener, std::string swtpm_ctrl_path, RelayMode mode, const PeerInspector* peers)
    : listener_(std::move(listener)), swtpm_ctrl_path_(std::move(swtpm_ctrl_path)), peers_(peers) {
  policy_.mode = mode;
}

Status ControlRelay::Serve(int wake_fd, ManagerChannel* manager) {
  for (;;) {
    // While a client is attached the listener is not polled: a second QEMU waits in the
    // backlog, as it would with swtpm itself, until the first one goes.
    pollfd fds[5] = {{wake_fd, POLLIN, 0}, {-1, POLLIN, 0}, {-1, POLLIN, 0}, {-1, POLLIN, 0}, {-1, POLLIN, 0}};
    if (manager != nullptr) {
      fds[3].fd = manager->listener_fd();
      fds[4].fd = manager->connection_fd();
    }
    if (client_.valid()) {
      fds[1].fd = client_.get();
      fds[2].fd = swtpm_.get();
    } else {
      fds[1].fd = listener_.get();
    }
    int r = poll(fds, 5, -1);
    if (r < 0) {
      if (errno == EINTR) continue;
      return ErrnoError("poll");
    }
    if (fds[0].revents & POLLIN) return OkStatus();
    // vtmd first: a fence must not wait behind QEMU's next request.
    if (manager != nullptr) {
      if (fds[4].revents & (POLLIN | POLLHUP | POLLERR)) manager->OnConnectionReadable(*this);
      if (fds[3].revents & POLLIN) manager->OnListenerReadable();
    }
    if (!client_.valid()) {
      if (fds[1].revents & (POLLERR | POLLNVAL)) return Error(ErrorCode::kIo, "the listening socket failed");
      if (fds[1].revents & POLLIN) AcceptClient();
      continue;
    }
    // Answers first, so a response and a hang-up in the same round reach the client in order.
    if (fds[2].revents & (POLLIN | POLLHUP | POLLERR)) {
      if (!PumpFromSwtpm()) continue;
    }
    if (fds[1].revents & (POLLIN | POLLHUP | POLLERR)) PumpFromClient();
  }
}

void ControlRelay::AcceptClient() {
  UniqueFd client(accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC));
  if (!client.valid()) {
    if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED)
      LOG_WARNING << ErrnoError("accepting a client on tpm.sock").message();
    return;
  }
  std::string peer = "unknown peer";
  if (auto cred = GetPeerCredentials(client.get()); cred.ok()) {
    peer = "pid " + std::to_string(cred->pid) + " uid " + std::to_string(cred->uid);
  }
  // A client that waited in the backlog (a second QEMU, e.g. a migration's destination) may
  // be gone by the time it is accepted, its requests still queued. A QEMU that no longer
  // exists must never reach the vTPM: drop it unread.
  pollfd hup{client.get(), POLLRDHUP, 0};
  if (poll(&hup, 1, 0) == 1 && (hup.revents & (POLLRDHUP | POLLHUP | POLLERR)) != 0) {
    LOG_WARNING << "QEMU (" << peer << ") hung up while it waited for the vTPM; dropped without passing on "
                << "anything it sent";
    return;
  }
  // Before anything the client sent reaches swtpm: is it this VM's QEMU at all?
  if (peers_ != nullptr) {
    PeerVerdict verdict = peers_->Inspect(client.get());
    if (verdict.kind == PeerVerdict::Kind::kRefuse) {
      LOG_WARNING << "refused a client on tpm.sock: " << verdict.reason;
      ++counters_.refused;
      counters_.last_refusal = verdict.reason;
      return;
    }
    if (verdict.kind == PeerVerdict::Kind::kAcceptUnproven) {
      LOG_WARNING << "QEMU peer check: " << verdict.reason;
    } else {
      LOG_INFO << "QEMU peer check: " << verdict.reason;
    }
  }
  auto swtpm = ConnectUnix(swtpm_ctrl_path_);
  if (!swtpm.ok()) {
    LOG_ERROR << "QEMU (" << peer
              << ") connected but swtpm's control channel is unreachable: " << swtpm.error().message()
              << "; dropping the client";
    return;
  }
  SetIoTimeouts(client.get());
  SetIoTimeouts(swtpm->get());
  client_ = std::move(client);
  swtpm_ = std::move(*swtpm);
  ++sessions_;
  session_requests_ = 0;
  LOG_INFO << "QEMU attached (" << peer << "), session " << sessions_;
}

void ControlRelay::EndSession(const std::string& why) {
  if (!client_.valid()) return;
  LOG_INFO << "QEMU detached (" << why << ") after " << session_requests_ << " control requests";
  client_.reset();
  swtpm_.reset();
  from_client_.clear();
  pending_fds_.clear();
}

bool ControlRelay::PumpFromClient() {
  uint8_t buf[16384];
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxFdsPerMessage)];
  iovec iov{buf, sizeof buf};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof control;
  ssize_t n = recvmsg(client_.get(), &msg, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
  if (n < 0) {
    if (errno == EINTR || errno == EAGAIN) return true;
    EndSession(ErrnoError("reading from QEMU").message());
    return false;
  }
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < count; ++i) {
      int fd;
      std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
      pending_fds_.emplace_back(fd);
    }
  }
  if (msg.msg_flags & MSG_CTRUNC) {
    EndSession("QEMU sent more file descriptors than a control request may carry");
    return false;
  }
  if (n == 0) {
    EndSession("QEMU closed the connection");
    return false;
  }
  from_client_.insert(from_client_.end(), buf, buf + n);

  while (!from_client_.empty()) {
    CtrlParseResult p = ParseCtrlRequest(from_client_);
    if (p.kind == CtrlParseResult::Kind::kNeedMore) break;
    if (p.kind == CtrlParseResult::Kind::kMalformed) {
      LOG_WARNING << "malformed control stream from QEMU: " << p.error;
      EndSession("malformed control request");
      return false;
    }
    if (!ForwardRequest(p.request)) return false;
    from_client_.erase(from_client_.begin(), from_client_.begin() + static_cast<std::ptrdiff_t>(p.request.size));
  }
  return true;
}

bool ControlRelay::ForwardRequest(const CtrlRequest& request) {
  ++counts_[request.code];
  ++session_requests_;
  if (auto refusal = CheckRequest(request, policy_)) return Refuse(request, *refusal);
  std::string name = CtrlCommandName(request.code);
  if (!request.known) {
    LOG_WARNING << "passing on unknown control command " << name << " (" << request.size << " bytes)";
  } else if (request.state_blob) {
    LOG_DEBUG << "ctrl " << name << " type=" << request.state_blob->blob_type << " flags=0x" << std::hex
              << request.state_blob->state_flags << std::dec << " length=" << request.state_blob->length;
  } else if (request.init_flags) {
    LOG_DEBUG << "ctrl " << name << " flags=0x" << std::hex << *request.init_flags;
  } else {
    LOG_DEBUG << "ctrl " << name;
  }

  std::vector<uint8_t> bytes(from_client_.begin(), from_client_.begin() + static_cast<std::ptrdiff_t>(request.size));
  // QEMU sends SHUTDOWN when it exits, which would end swtpm; but swtpm's life belongs to
  // vtmd (the VM may be started again on the same vTPM). STOP has the same effect on the
  // TPM (libtpms terminated, state on disk) and the same 4-byte answer, and keeps swtpm.
  if (request.code == static_cast<uint32_t>(CtrlCommand::kShutdown)) {
    LOG_INFO << "QEMU sent SHUTDOWN; passing it to swtpm as STOP so the vTPM stays available";
    StoreBe32(static_cast<uint32_t>(CtrlCommand::kStop), bytes.data());
  }

  // Only SET_DATAFD carries a descriptor (the TPM data socket). Anything else is dropped
  // so that swtpm never holds descriptors it does not expect.
  std::vector<UniqueFd> fds = std::move(pending_fds_);
  pending_fds_.clear();
  bool wants_fd = request.code == static_cast<uint32_t>(CtrlCommand::kSetDataFd);
  if (!wants_fd && !fds.empty()) {
    LOG_WARNING << "dropping " << fds.size() << " file descriptor(s) QEMU sent with " << name;
    fds.clear();
  }
  if (wants_fd && fds.size() > 1) {
    LOG_WARNING << "SET_DATAFD came with " << fds.size() << " descriptors; passing on the first";
    fds.resize(1);
  }

  // One sendmsg per request: swtpm frames most requests by read() boundaries. A large
  // SET_STATEBLOB may go out in pieces; the descriptor goes with the first one.
  if (Status st = SendWithFd(swtpm_.get(), bytes.data(), bytes.size(), fds.empty() ? -1 : fds[0].get()); !st.ok()) {
    EndSession(std::move(st).error().Context("passing " + name + " to swtpm").message());
    return false;
  }
  RecordPassed(request, &policy_);
  if (request.code == static_cast<uint32_t>(CtrlCommand::kGetStateBlob)) ++counters_.exported;
  if (request.code == static_cast<uint32_t>(CtrlCommand::kSetStateBlob)) ++counters_.imported;
  if (request.code == static_cast<uint32_t>(CtrlCommand::kInit)) ++counters_.inits;
  return true;
}

bool ControlRelay::Refuse(const CtrlRequest& request, const Refusal& refusal) {
  LOG_WARNING << refusal.reason;
  ++counters_.refused;
  counters_.last_refusal = refusal.reason;
  pending_fds_.clear();
  (void)request;
  std::string answer = RefusalResponse(refusal);
  if (Status st = WriteAll(client_.get(), answer.data(), answer.size()); !st.ok()) {
    EndSession("answering QEMU: " + st.error().message());
    return false;
  }
  return true;
}

Status ControlRelay::Fence(const std::string& reason) {
  if (policy_.mode == RelayMode::kFenced) return OkStatus();
  policy_.mode = RelayMode::kFenced;
  LOG_INFO << "fenced by vtmd: " << reason;
  EndSession("fenced: " + reason);
  // A QEMU that still holds the data channel must find no running TPM behind it.
  auto conn = ConnectUnix(swtpm_ctrl_path_);
  if (!conn.ok()) return std::move(conn).error().Context("fenced, but stopping the TPM in swtpm failed");
  SetIoTimeouts(conn->get());
  VTM_ASSIGN_OR_RETURN(auto resp, SwtpmCtrlCall(conn->get(), CtrlCommand::kStop, 4));
  if (uint32_t result = LoadBe32(resp.data()); result != 0) {
    return Error(ErrorCode::kInternal, "fenced, but swtpm answered STOP with TPM result " + std::to_string(result));
  }
  return OkStatus();
}

Status ControlRelay::AdmitIncoming(const std::string& migration_id, uint64_t generation) {
  if (policy_.mode != RelayMode::kIncoming) {
    return Error(ErrorCode::kFailedPrecondition, std::string("this vTPM is ") + RelayModeName(policy_.mode) +
                                                     ", not waiting for an incoming migration");
  }
  if (migration_id.empty()) return Error(ErrorCode::kInvalidArgument, "AdmitIncoming needs a migration ID");
  if (policy_.incoming_admitted && (migration_id != migration_id_ || generation != generation_)) {
    return Error(ErrorCode::kFailedPrecondition,
                 "this vTPM already admitted migration " + migration_id_ + "; refusing " + migration_id);
  }
  policy_.incoming_admitted = true;
  migration_id_ = migration_id;
  generation_ = generation;
  LOG_INFO << "admitted incoming migration " << migration_id << " (generation " << generation << ")";
  return OkStatus();
}

bool ControlRelay::PumpFromSwtpm() {
  uint8_t buf[16384];
  ssize_t n = recv(swtpm_.get(), buf, sizeof buf, MSG_DONTWAIT);
  if (n < 0) {
    if (errno == EINTR || errno == EAGAIN) return true;
    EndSession(ErrnoError("reading from swtpm").message());
    return false;
  }
  if (n == 0) {
    EndSession("swtpm closed the control connection");
    return false;
  }
  auto st = WriteAll(client_.get(), buf, static_cast<size_t>(n));
  if (!st.ok()) {
    EndSession("writing to QEMU: " + st.error().message());
    return false;
  }
  return true;
}

}  // namespace vtm::instance
