// The manager channel of a running vtm-instance: a unix socket only the uid that started the
// instance (root, i.e. vtmd) can reach, answering one InstanceRequest frame with one
// InstanceResponse frame (proto/instance.proto): status, fencing, admitting an incoming
// migration. One vtmd connection at a time; a newer connection replaces an older one, so a
// restarted vtmd reconnects without waiting for the old connection to time out.
//
// Thread safety: single-threaded; driven from the control relay's poll loop.
#pragma once

#include <sys/types.h>

#include <string>

#include "vtm/error.h"
#include "vtm/unique_fd.h"

namespace vtm::instance {

class ControlRelay;

class ManagerChannel {
 public:
  // listener: the bound, listening manager socket. manager_uid: the only peer uid served.
  ManagerChannel(UniqueFd listener, uid_t manager_uid, std::string vm_uuid, pid_t swtpm_pid);

  // The fds to poll for readability: the listener and, if any, the connection (-1 if none).
  int listener_fd() const { return listener_.get(); }
  int connection_fd() const { return conn_.get(); }
  void OnListenerReadable();
  // Reads one request, acts on relay, answers. Closes the connection on EOF or error.
  void OnConnectionReadable(ControlRelay& relay);

 private:
  UniqueFd listener_;
  uid_t manager_uid_;
  std::string vm_uuid_;
  pid_t swtpm_pid_;
  UniqueFd conn_;
};

}  // namespace vtm::instance
