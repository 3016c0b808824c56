// PrivateLibvirtd: libvirtd in mount and PID namespaces over the test's directories.
#include "libvirtd_fixture.h"

#include <pwd.h>
#include <signal.h>
#include <sys/stat.h>

#include <chrono>
#include <cstdlib>
#include <sstream>
#include <stdexcept>
#include <thread>
#include <utility>

#include "vtm/fs.h"

namespace vtm::testing {
namespace {

// The pids of a process's children (its first thread's, which is all unshare has).
std::vector<pid_t> ChildPids(pid_t pid) {
  std::vector<pid_t> out;
  auto text = ReadFile("/proc/" + std::to_string(pid) + "/task/" + std::to_string(pid) + "/children");
  if (!text.ok()) return out;
  std::istringstream in(*text);
  pid_t child;
  while (in >> child) out.push_back(child);
  return out;
}

}  // namespace

PrivateLibvirtd::PrivateLibvirtd(const std::string& host_uuid) {
  const std::string& d = dir_.path();
  // libvirt-qemu must reach the guest files and vtmd's sockets below the test's directories.
  chmod(d.c_str(), 0711);
  for (const char* sub : {"etc", "etc/hooks", "etc/hooks/qemu.d", "run", "lib", "cache", "log"}) {
    if (!MakeDir(d + "/" + sub, 0755).ok()) throw std::runtime_error("cannot create " + d + "/" + sub);
  }
  const struct passwd* qemu = getpwnam("libvirt-qemu");
  if (qemu == nullptr) throw std::runtime_error("no libvirt-qemu account (is libvirt-daemon-system installed?)");
  if (!MakeDir(guest_dir(), 0755, qemu->pw_uid, qemu->pw_gid).ok()) {
    throw std::runtime_error("cannot create " + guest_dir());
  }
  // Only root may use the socket, and needs no authentication (no polkit on a test machine).
  std::string libvirtd_conf =
      "unix_sock_group = \"root\"\nunix_sock_rw_perms = \"0700\"\n"
      "auth_unix_rw = \"none\"\nauth_unix_ro = \"none\"\n";
  if (!host_uuid.empty()) libvirtd_conf += "host_uuid = \"" + host_uuid + "\"\n";
  // As on a stock Debian host (QEMU as libvirt-qemu), minus what a test machine lacks
  // (AppArmor, cgroups) and what a test need not exercise (virtlogd, per-domain /dev).
  const std::string qemu_conf =
      "user = \"libvirt-qemu\"\ngroup = \"libvirt-qemu\"\nsecurity_driver = \"none\"\n"
      "cgroup_controllers = [ ]\nstdio_handler = \"file\"\nnamespaces = [ ]\n";
  // Runs as the PID namespace's first process: it reaps the QEMUs, which daemonize and are
  // reparented to it, while it waits for libvirtd.
  std::string start = "set -e\n";
  const std::pair<const char*, const char*> mounts[] = {{"etc", "/etc/libvirt"},
                                                        {"run", "/run/libvirt"},
                                                        {"lib", "/var/lib/libvirt"},
                                                        {"cache", "/var/cache/libvirt"},
                                                        {"log", "/var/log/libvirt"}};
  for (const auto& [sub, target] : mounts) {
    start += std::string("mkdir -p ") + target + "\nmount --bind '" + d + "/" + sub + "' " + target + "\n";
  }
  start += "libvirtd --config /etc/libvirt/libvirtd.conf --pid-file /run/libvirt/libvirtd.pid &\nwait $!\n";
  const bool ok = WriteFileAtomic(d + "/etc/libvirtd.conf", libvirtd_conf, 0644).ok() &&
                  WriteFileAtomic(d + "/etc/qemu.conf", qemu_conf, 0644).ok() &&
                  WriteFileAtomic(d + "/start.sh", start, 0755).ok();
  if (!ok) throw std::runtime_error("cannot write libvirtd's configuration under " + d);
}

PrivateLibvirtd::~PrivateLibvirtd() { Stop(); }

void PrivateLibvirtd::InstallHook(const std::string& script) {
  if (!WriteFileAtomic(dir_.path() + "/etc/hooks/qemu.d/vtm", script, 0755).ok()) {
    throw std::runtime_error("cannot write the hook under " + dir_.path());
  }
}

bool PrivateLibvirtd::Start() {
  SpawnOptions opts;
  opts.output_file = dir_.path() + "/libvirtd.log";
  opts.parent_death_signal = SIGKILL;  // and unshare's --kill-child takes the namespace with it
  const char* path = getenv("PATH");
  opts.env = {std::string("PATH=") + (path ? path : "/usr/bin:/bin") + ":/usr/sbin:/sbin"};
  auto p = Subprocess::Spawn({"unshare", "--mount", "--propagation", "private", "--pid", "--fork", "--mount-proc",
                              "--kill-child", "/bin/sh", dir_.path() + "/start.sh"},
                             opts);
  if (!p.ok()) return false;
  namespace_ = std::move(p).value();
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (std::chrono::steady_clock::now() < deadline) {
    if (!namespace_.running()) return false;
    if (PathExists(dir_.path() + "/run/libvirt-sock") && Virsh({"version"}).exit_code == 0) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return false;
}

void PrivateLibvirtd::Stop() {
  if (!namespace_.running()) return;
  // Through libvirt first, so that vtm's release hook stops each domain's vTPM.
  auto list = Virsh({"list", "--uuid"});
  std::istringstream in(list.output);
  std::string uuid;
  while (std::getline(in, uuid)) {
    if (!uuid.empty()) Virsh({"destroy", uuid});
  }
  // SIGKILL to the namespace's first process (forcibly delivered from the parent namespace)
  // kills every process in the namespace; unshare exits once it has reaped it.
  for (pid_t init : ChildPids(namespace_.pid())) kill(init, SIGKILL);
  if (!namespace_.Wait(std::chrono::seconds(10)).ok()) namespace_.Terminate(std::chrono::milliseconds(0));
}

CommandResult PrivateLibvirtd::Virsh(const std::vector<std::string>& args, const std::string& stdin_data) {
  // Bounded, so a wedged libvirtd fails the test instead of hanging it until ctest's timeout.
  std::vector<std::string> argv = {"timeout", "--kill-after=5", "180", "virsh", "-q", "-c", uri()};
  argv.insert(argv.end(), args.begin(), args.end());
  return RunCommand(argv, stdin_data);
}

std::string PrivateLibvirtd::Log() const {
  auto text = ReadFile(dir_.path() + "/libvirtd.log");
  return text.ok() ? *text : "";
}

std::string PrivateLibvirtd::LogTail(size_t max_bytes) const {
  std::string log = Log();
  return log.size() > max_bytes ? log.substr(log.size() - max_bytes) : log;
}

std::string PrivateLibvirtd::DomainLog(const std::string& name) const {
  auto text = ReadFile(dir_.path() + "/log/qemu/" + name + ".log");
  return text.ok() ? *text : "";
}

}  // namespace vtm::testing
