// A private libvirtd for e2e tests: libvirtd as root in its own mount and PID namespaces, where
// the test's directories are bind-mounted over /etc/libvirt, /run/libvirt, /var/lib/libvirt,
// /var/cache/libvirt and /var/log/libvirt (its pid file goes to /run/libvirt too). So it reads
// the test's libvirtd.conf, qemu.conf and hooks (libvirtd looks for hooks only in
// <sysconfdir>/libvirt/hooks, and only when it starts) and leaves the host's libvirt alone; the
// test reaches it through its socket. QEMU runs as libvirt-qemu, as on a stock Debian host,
// with security_driver = "none", no cgroups and no per-domain namespaces.
//
// Cleanup: Stop() (and the destructor, also after a failed assertion) destroys every running
// domain through libvirt, so vtm's release hook runs, then ends the namespace. Everything
// libvirtd started (QEMU, hooks) lives in its PID namespace and dies with it, also when the
// test itself is killed: the namespace's unshare gets SIGKILL with the test (PR_SET_PDEATHSIG)
// and passes it to the namespace's first process (--kill-child), whose end kills every other
// process in the namespace. An OrphanGuard removes the directory in that case.
//
// Thread safety: one thread, the one that outlives the libvirtd it started.
#pragma once

#include <string>
#include <vector>

#include "test_env.h"
#include "test_processes.h"
#include "vtm/subprocess.h"

namespace vtm::testing {

class PrivateLibvirtd {
 public:
  // host_uuid: libvirtd's host UUID (libvirtd.conf `host_uuid`). Two libvirtds that migrate
  // domains between them need distinct ones: libvirt refuses a migration to the same host.
  // Empty: libvirtd's own choice (SMBIOS, or random where there is none).
  explicit PrivateLibvirtd(const std::string& host_uuid = "");
  ~PrivateLibvirtd();
  PrivateLibvirtd(const PrivateLibvirtd&) = delete;
  PrivateLibvirtd& operator=(const PrivateLibvirtd&) = delete;

  // Writes <hooks>/qemu.d/vtm (a shell script). Call before Start(): libvirtd looks for hooks
  // once, when it starts.
  void InstallHook(const std::string& script);
  // Starts libvirtd and waits until virsh reaches it; false (see Log()) if it does not come up.
  bool Start();
  // Destroys every running domain, then ends libvirtd and everything in its namespace.
  void Stop();

  // virsh against this libvirtd.
  CommandResult Virsh(const std::vector<std::string>& args, const std::string& stdin_data = "");
  // libvirtd's own output, and the tail (last `max_bytes`) of it for assertion messages.
  std::string Log() const;
  std::string LogTail(size_t max_bytes = 6000) const;
  // QEMU's log for a domain (its command line and messages), as libvirt writes it.
  std::string DomainLog(const std::string& name) const;

  const std::string& dir() const { return dir_.path(); }
  // The qemu.conf this libvirtd reads (vtmd and the hook learn QEMU's user from it).
  std::string qemu_conf() const { return dir_.path() + "/etc/qemu.conf"; }
  std::string uri() const { return "qemu:///system?socket=" + dir_.path() + "/run/libvirt-sock"; }
  // A directory libvirt-qemu may read and write, for kernels, consoles and sockets of domains.
  std::string guest_dir() const { return dir_.path() + "/guest"; }

 private:
  TempDir dir_;
  // Removes dir_ (and ends what names it) when the test is killed before the destructor runs.
  OrphanGuard guard_{dir_.path()};
  Subprocess namespace_;  // unshare, the parent of libvirtd's PID namespace
};

}  // namespace vtm::testing
