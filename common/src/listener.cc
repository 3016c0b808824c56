// Accept loop with a bounded number of connection threads, and TCP listen/connect helpers.
#include "vtm/listener.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>

#include <algorithm>
#include <iterator>

namespace vtm {
namespace {

Result<sockaddr_in> ParseHostPort(const std::string& host_port) {
  auto colon = host_port.rfind(':');
  if (colon == std::string::npos) {
    return Error(ErrorCode::kInvalidArgument, "'" + host_port + "' is not HOST:PORT (e.g. 127.0.0.1:7443)");
  }
  std::string host = host_port.substr(0, colon), port_text = host_port.substr(colon + 1);
  if (host == "localhost") host = "127.0.0.1";
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  if (inet_pton(AF_INET, host.c_str(), &addr.sin_addr) != 1) {
    return Error(ErrorCode::kInvalidArgument, "'" + host + "' is not an IPv4 address (in " + host_port + ")");
  }
  unsigned long port = 0;
  size_t used = 0;
  try {
    port = std::stoul(port_text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used == 0 || used != port_text.size() || port > 65535) {
    return Error(ErrorCode::kInvalidArgument, "'" + port_text + "' is not a TCP port (in " + host_port + ")");
  }
  addr.sin_port = htons(static_cast<uint16_t>(port));
  return addr;
}

}  // namespace

Result<UniqueFd> ListenTcp(const std::string& host_port) {
  VTM_ASSIGN_OR_RETURN(sockaddr_in addr, ParseHostPort(host_port));
  UniqueFd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd.valid()) return ErrnoError("socket");
  int one = 1;
  setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) return ErrnoError("binding " + host_port);
  if (::listen(fd.get(), 128) != 0) return ErrnoError("listening on " + host_port);
  return fd;
}

Result<int> BoundTcpPort(int fd) {
  sockaddr_in addr{};
  socklen_t len = sizeof addr;
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) return ErrnoError("getsockname");
  return static_cast<int>(ntohs(addr.sin_port));
}

Result<UniqueFd> ConnectTcp(const std::string& host_port) {
  VTM_ASSIGN_OR_RETURN(sockaddr_in addr, ParseHostPort(host_port));
  UniqueFd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd.valid()) return ErrnoError("socket");
  if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    return ErrnoError("connecting to " + host_port);
  }
  // Request/response protocols: without this, a small reply after a small write (a TLS 1.3
  // session ticket, then the answer) waits for the peer's delayed ACK, ~40 ms per exchange.
  int one = 1;
  setsockopt(fd.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  return fd;
}

Listener::Listener(UniqueFd listen_fd, Handler handler, int max_connections, Handler busy,
                   std::chrono::milliseconds slot_wait)
    : listen_fd_(std::move(listen_fd)), handler_(std::move(handler)), busy_(std::move(busy)),
      max_connections_(max_connections), slot_wait_(slot_wait) {}

Listener::~Listener() {
  Shutdown();
  Reap(/*all=*/true);
}

void Listener::Serve() {
  while (!stopping_) {
    Reap(/*all=*/false);
    pollfd p{listen_fd_.get(), POLLIN, 0};
    if (poll(&p, 1, 200) <= 0) continue;
    // The table may be full only for the moment a finished client takes to close: let the
    // connection wait in the listen queue for a slot before it is refused.
    (void)WaitForSlot();
    if (stopping_) break;
    UniqueFd conn(accept4(listen_fd_.get(), nullptr, nullptr, SOCK_CLOEXEC));
    if (conn.valid()) {
      int one = 1;  // as in ConnectTcp; fails harmlessly on a unix socket
      setsockopt(conn.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    if (!conn.valid()) continue;
    {
      MutexLock lock(mu_);
      if (active_ < max_connections_) {
        ++active_;
        Connection& c = connections_.emplace_back();
        c.dup.reset(fcntl(conn.get(), F_DUPFD_CLOEXEC, 0));
        c.thread = std::thread([this, &c, conn = std::move(conn)]() mutable {
          handler_(std::move(conn));
          MutexLock done_lock(mu_);
          c.done = true;
          --active_;
          slot_freed_.NotifyAll();
        });
        continue;
      }
    }
    if (busy_) busy_(std::move(conn));
  }
  Reap(/*all=*/true);
}

bool Listener::WaitForSlot() {
  const auto deadline = std::chrono::steady_clock::now() + slot_wait_;
  MutexLock lock(mu_);
  while (active_ >= max_connections_) {
    auto now = std::chrono::steady_clock::now();
    if (stopping_ || now >= deadline) return false;
    // In steps, so that a Shutdown() (which does not notify) is seen within 200 ms.
    auto step = std::min(std::chrono::duration_cast<std::chrono::milliseconds>(deadline - now),
                         std::chrono::milliseconds(200));
    slot_freed_.WaitFor(mu_, step, [this] {
      mu_.AssertHeld();
      return active_ < max_connections_;
    });
  }
  return true;
}

void Listener::Reap(bool all) {
  std::list<Connection> finished;
  {
    MutexLock lock(mu_);
    for (auto it = connections_.begin(); it != connections_.end();) {
      auto next = std::next(it);
      if (all && !it->done && it->dup.valid()) ::shutdown(it->dup.get(), SHUT_RD);
      if (all || it->done) finished.splice(finished.end(), connections_, it);
      it = next;
    }
  }
  // Joined without the lock: a handler still running takes it once more when it returns.
  for (auto& c : finished) {
    if (c.thread.joinable()) c.thread.join();
  }
}

}  // namespace vtm
