// Socket helpers: unix sockets for the API and instances, loopback TCP for a simulated
// host TPM. Waiting uses bounded exponential back-off.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <string>
#include <vector>

#include "vtm/error.h"
#include "vtm/unique_fd.h"

namespace vtm {

// Binds and listens on a unix socket at path (an old socket file is replaced), chmod mode.
Result<UniqueFd> ListenUnix(const std::string& path, mode_t mode);
Result<UniqueFd> ConnectUnix(const std::string& path);
// Retries ConnectUnix until it succeeds or timeout passes.
Result<UniqueFd> ConnectUnixWithRetry(const std::string& path, std::chrono::milliseconds timeout);
// A loopback TCP port that was free a moment ago (the caller must cope with losing a race).
Result<int> PickFreeTcpPort();
// Waits until something accepts connections on 127.0.0.1:port.
Status WaitForTcpPort(int port, std::chrono::milliseconds timeout);

// Full-length read/write on a stream socket, retrying on EINTR and short transfers.
Status WriteAll(int fd, const void* data, size_t len);
Status ReadAll(int fd, void* data, size_t len);  // kUnavailable on EOF before len bytes

// Sends len bytes on a unix stream socket in as few sendmsg calls as the kernel allows (one,
// unless a large message goes out in pieces), retrying on EINTR. If fd_to_pass >= 0 it travels
// as SCM_RIGHTS with the first byte. Peers that frame requests by read() boundaries (swtpm's
// control channel) rely on a request leaving in one call.
Status SendWithFd(int socket, const void* data, size_t len, int fd_to_pass);

// uid/gid of the process at the other end of a unix socket (SO_PEERCRED).
struct PeerCredentials {
  pid_t pid;
  uid_t uid;
  gid_t gid;
};
Result<PeerCredentials> GetPeerCredentials(int fd);
// Supplementary groups of the peer as the kernel recorded them when it connected
// (SO_PEERGROUPS, Linux >= 4.13): unlike /proc/<pid>/status, immune to pid reuse.
Result<std::vector<gid_t>> GetPeerGroups(int fd);

}  // namespace vtm
