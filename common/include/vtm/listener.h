// Accepting connections, apart from what is done with them: a Listener owns a listening socket
// (unix or TCP), accepts, and runs a handler per connection on its own thread, at most
// max_connections at once. The vtmd API (peer credentials, then api::Request frames) and the
// RA client's network service (mutual TLS, then attestation RPCs) are two handlers over it.
//
// Thread safety: Serve() runs on one thread; Shutdown() may be called from any thread. Serve()
// returns only after every handler thread has been joined, so handlers may use objects that
// outlive Serve() and no thread outlives the Listener.
#pragma once

#include <atomic>
#include <chrono>
#include <functional>
#include <list>
#include <string>
#include <thread>

#include "vtm/error.h"
#include "vtm/mutex.h"
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
  // While max_connections handlers are running, a new connection waits in the kernel's listen
  // queue for up to slot_wait for one of them to return (a client's previous connection is
  // usually about to close); only then is it accepted and handed to busy, on the accept thread,
  // which should answer quickly and return.
  Listener(UniqueFd listen_fd, Handler handler, int max_connections, Handler busy,
           std::chrono::milliseconds slot_wait = std::chrono::seconds(2));
  ~Listener();
  Listener(const Listener&) = delete;
  Listener& operator=(const Listener&) = delete;

  // Accepts until Shutdown(); then wakes handlers blocked reading (their read side is shut
  // down; replies still go out) and joins all of them.
  void Serve() EXCLUDES(mu_);
  void Shutdown() { stopping_ = true; }
  int listen_fd() const { return listen_fd_.get(); }

 private:
  struct Connection {
    // A duplicate of the handler's connection: the handler closes its own fd when it likes, so
    // its number may be reused; this one is what Serve() shuts down at the end.
    UniqueFd dup;
    std::thread thread;
    bool done = false;
  };
  // Joins the threads of finished connections; with `all`, first wakes and then joins every one.
  void Reap(bool all) EXCLUDES(mu_);
  // Waits up to slot_wait_ for a free slot (or Shutdown); false if none came.
  bool WaitForSlot() EXCLUDES(mu_);

  UniqueFd listen_fd_;
  Handler handler_, busy_;
  int max_connections_;
  std::chrono::milliseconds slot_wait_;
  std::atomic<bool> stopping_{false};
  Mutex mu_;
  CondVar slot_freed_;
  std::list<Connection> connections_ GUARDED_BY(mu_);  // a list: each thread keeps a pointer to its node
  int active_ GUARDED_BY(mu_) = 0;                     // connections whose handler has not returned
};

}  // namespace vtm
