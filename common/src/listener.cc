// Accept loop with a bounded number of connection threads, and TCP listen/connect helpers.
#include "vtm/listener.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>

#include <thread>

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
  return fd;
}

Listener::Listener(UniqueFd listen_fd, Handler handler, int max_connections, Handler busy)
    : listen_fd_(std::move(listen_fd)), handler_(std::move(handler)), busy_(std::move(busy)),
      max_connections_(max_connections) {}

Listener::~Listener() {
  Shutdown();
  std::unique_lock<std::mutex> lock(mu_);
  done_.wait(lock, [this] { return active_.empty(); });
}

void Listener::Serve() {
  while (!stopping_) {
    pollfd p{listen_fd_.get(), POLLIN, 0};
    if (poll(&p, 1, 200) <= 0) continue;
    UniqueFd conn(accept4(listen_fd_.get(), nullptr, nullptr, SOCK_CLOEXEC));
    if (!conn.valid()) continue;
    std::unique_lock<std::mutex> lock(mu_);
    if (static_cast<int>(active_.size()) >= max_connections_) {
      lock.unlock();
      if (busy_) busy_(std::move(conn));
      continue;
    }
    const uint64_t id = next_id_++;
    active_.emplace(id, UniqueFd(fcntl(conn.get(), F_DUPFD_CLOEXEC, 0)));
    lock.unlock();
    // Detached, but never past this Listener: Serve() and the destructor wait for active_ to
    // empty, and the thread touches only the handler and active_.
    std::thread([this, id, c = std::move(conn)]() mutable {
      handler_(std::move(c));
      std::lock_guard<std::mutex> done_lock(mu_);
      active_.erase(id);
      done_.notify_all();
    }).detach();
  }
  std::unique_lock<std::mutex> lock(mu_);
  for (const auto& [id, dup] : active_) {
    if (dup.valid()) ::shutdown(dup.get(), SHUT_RD);
  }
  done_.wait(lock, [this] { return active_.empty(); });
}

}  // namespace vtm
