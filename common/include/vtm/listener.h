// Accepting connections, apart from what is done with them: a Listener owns a listening socket
// (unix or TCP), accepts, and runs a handler per connection on its own thread, at most
// max_connections at once. The vtmd API (peer credentials, then api::Request frames) and the
// RA client's network service (mutual TLS, then attestation RPCs) are two handlers over it.
//
// Thread safety: Serve() runs on one thread; Shutdown() may be called from any thread. Serve()
// returns only after every handler has returned, so handlers may use objects that outlive
// Serve().
#pragma once

#include <atomic>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <map>
#include <string>

#include "vtm/error.h"
#include "vtm/unique_fd.h"

namespace vtm {

// Binds and listens on "HOST:PORT" (IPv4 address or "localhost"; PORT 0 picks a free port).
Result<UniqueFd> ListenTcp(const std::string& host_port);
// The port a TCP socket is bound to.
Result<int> BoundTcpPort(int fd);
// Connects to "HOST:PORT" (IPv4 address or "localhost").
Result<UniqueFd> ConnectTcp(const std::string& host_port);

class Listener {
 public:
  using Handler = std::function<void(UniqueFd conn)>;
  // busy: called (on the accept thread) instead of handler when max_connections are running;
  // it should answer quickly and return.
  Listener(UniqueFd listen_fd, Handler handler, int max_connections, Handler busy);
  ~Listener();
  Listener(const Listener&) = delete;
  Listener& operator=(const Listener&) = delete;

  // Accepts until Shutdown(); then wakes handlers blocked reading (their read side is shut
  // down; replies still go out) and waits for all of them.
  void Serve();
  void Shutdown() { stopping_ = true; }
  int listen_fd() const { return listen_fd_.get(); }

 private:
  UniqueFd listen_fd_;
  Handler handler_, busy_;
  int max_connections_;
  std::atomic<bool> stopping_{false};
  std::mutex mu_;
  std::condition_variable done_;
  // GUARDED_BY(mu_): a duplicate of each connection being handled, by connection number; a
  // dup (not the handler's fd number, which may be closed and reused) is what Serve() shuts
  // down at the end.
  std::map<uint64_t, UniqueFd> active_;
  uint64_t next_id_ = 0;  // GUARDED_BY(mu_)
};

}  // namespace vtm
