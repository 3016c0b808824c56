// fork/exec with an explicit fd map and privilege drop; reaping and termination.
#include "vtm/subprocess.h"

#include <fcntl.h>
#include <grp.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <sstream>
#include <thread>

#include "vtm/fs.h"
#include "vtm/hex.h"

namespace vtm {

Subprocess::~Subprocess() {
  if (pid_ > 0 && !exited_) Terminate();
}

Subprocess::Subprocess(Subprocess&& o) noexcept
    : pid_(std::exchange(o.pid_, -1)), status_(o.status_), exited_(o.exited_) {}

Subprocess& Subprocess::operator=(Subprocess&& o) noexcept {
  if (this != &o) {
    if (pid_ > 0 && !exited_) Terminate();
    pid_ = std::exchange(o.pid_, -1);
    status_ = o.status_;
    exited_ = o.exited_;
  }
  return *this;
}

pid_t Subprocess::Release() { return std::exchange(pid_, -1); }

Result<Subprocess> Subprocess::Spawn(const std::vector<std::string>& argv, const SpawnOptions& options) {
  if (argv.empty()) return Error(ErrorCode::kInvalidArgument, "empty command line");
  // Everything the child needs is prepared before fork: after fork only async-signal-safe calls.
  std::vector<char*> cargv;
  cargv.reserve(argv.size() + 1);
  for (const auto& a : argv) cargv.push_back(const_cast<char*>(a.c_str()));
  cargv.push_back(nullptr);
  std::vector<std::string> env = options.env;
  if (env.empty()) env.push_back("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
  std::vector<char*> cenv;
  cenv.reserve(env.size() + 1);
  for (auto& e : env) cenv.push_back(e.data());
  cenv.push_back(nullptr);

  UniqueFd out;
  if (!options.output_file.empty()) {
    out.reset(::open(options.output_file.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600));
    if (!out.valid()) return ErrnoError("opening log file " + options.output_file);
  }
  UniqueFd devnull(::open("/dev/null", O_RDWR | O_CLOEXEC));
  if (!devnull.valid()) return ErrnoError("opening /dev/null");

  // Exec errors travel back through a CLOEXEC pipe.
  int errpipe[2];
  if (pipe2(errpipe, O_CLOEXEC) != 0) return ErrnoError("pipe2");
  UniqueFd err_r(errpipe[0]), err_w(errpipe[1]);

  // Move the source fds above every target so dup2 never clobbers a source.
  int max_target = 2;
  for (auto& [target, src] : options.fds) max_target = std::max(max_target, target);
  // Pre-sized before fork: the child must not allocate (vtmd is multi-threaded).
  std::vector<std::pair<int, int>> fd_map(options.fds.begin(), options.fds.end());
  std::vector<int> moved_fds(fd_map.size(), -1);

  const pid_t parent = getpid();
  pid_t pid = fork();
  if (pid < 0) return ErrnoError("fork");
  if (pid == 0) {
    auto fail = [&](int e) {
      (void)!write(err_w.get(), &e, sizeof e);
      _exit(127);
    };
    if (options.new_session) setsid();
    sigset_t all;
    sigemptyset(&all);
    sigprocmask(SIG_SETMASK, &all, nullptr);
    signal(SIGPIPE, SIG_DFL);
    // Relocate sources above max_target first.
    int tmp_base = max_target + 1 + err_w.get();
    for (size_t i = 0; i < fd_map.size(); ++i) {
      moved_fds[i] = fcntl(fd_map[i].second, F_DUPFD, tmp_base);
      if (moved_fds[i] < 0) fail(errno);
    }
    if (dup2(devnull.get(), 0) < 0) fail(errno);
    if (out.valid()) {
      if (dup2(out.get(), 1) < 0 || dup2(out.get(), 2) < 0) fail(errno);
    }
    for (size_t i = 0; i < fd_map.size(); ++i) {
      if (dup2(moved_fds[i], fd_map[i].first) < 0) fail(errno);
    }
    // Close everything else.
    int keep_err = err_w.get();
    for (int fd = 3; fd < 1024; ++fd) {
      if (fd == keep_err || options.fds.count(fd)) continue;
      close(fd);
    }
    if (options.gid) {
      if (setgroups(0, nullptr) != 0) fail(errno);
      if (setresgid(*options.gid, *options.gid, *options.gid) != 0) fail(errno);
    }
    if (options.uid) {
      if (setresuid(*options.uid, *options.uid, *options.uid) != 0) fail(errno);
    }
    if (options.parent_death_signal != 0) {
      if (prctl(PR_SET_PDEATHSIG, options.parent_death_signal) != 0) fail(errno);
      // The parent may have died before the signal was armed.
      if (getppid() != parent) _exit(127);
    }
    execve(cargv[0], cargv.data(), cenv.data());
    if (errno == ENOENT && std::strchr(cargv[0], '/') == nullptr) execvpe(cargv[0], cargv.data(), cenv.data());
    fail(errno);
  }
  err_w.reset();
  int child_errno = 0;
  ssize_t n;
  do {
    n = read(err_r.get(), &child_errno, sizeof child_errno);
  } while (n < 0 && errno == EINTR);
  if (n == static_cast<ssize_t>(sizeof child_errno)) {
    int st;
    waitpid(pid, &st, 0);
    return ErrnoError("starting " + argv[0], child_errno);
  }
  return Subprocess(pid);
}

bool Subprocess::running() {
  if (pid_ <= 0 || exited_) return false;
  int st;
  pid_t r = waitpid(pid_, &st, WNOHANG);
  if (r == pid_) {
    exited_ = true;
    status_ = st;
    return false;
  }
  return true;
}

Result<int> Subprocess::Wait(std::chrono::milliseconds timeout) {
  if (pid_ <= 0) return Error(ErrorCode::kFailedPrecondition, "no child process");
  auto deadline = std::chrono::steady_clock::now() + timeout;
  auto delay = std::chrono::milliseconds(1);
  while (running()) {
    if (std::chrono::steady_clock::now() >= deadline) {
      return Error(ErrorCode::kUnavailable, "process " + std::to_string(pid_) + " still running");
    }
    std::this_thread::sleep_for(delay);
    delay = std::min(delay * 2, std::chrono::milliseconds(50));
  }
  return status_;
}

int Subprocess::Terminate(std::chrono::milliseconds grace) {
  if (pid_ <= 0) return 0;
  if (!running()) return status_;
  kill(pid_, SIGTERM);
  auto st = Wait(grace);
  if (st.ok()) return *st;
  kill(pid_, SIGKILL);
  auto st2 = Wait(std::chrono::seconds(10));
  return st2.ok() ? *st2 : -1;
}

std::string DescribeWaitStatus(int status) {
  if (WIFEXITED(status)) return "exited with status " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return std::string("killed by signal ") + strsignal(WTERMSIG(status));
  return "ended with wait status " + std::to_string(status);
}

bool ProcessAlive(pid_t pid) {
  if (pid <= 0 || (kill(pid, 0) != 0 && errno != EPERM)) return false;
  // A zombie (exited, not yet reaped by its parent) is not alive.
  char path[64];
  snprintf(path, sizeof path, "/proc/%d/stat", static_cast<int>(pid));
  FILE* f = fopen(path, "re");
  if (f == nullptr) return false;
  char buf[512];
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  buf[n] = '\0';
  const char* close_paren = strrchr(buf, ')');
  return !(close_paren && close_paren[1] == ' ' && close_paren[2] == 'Z');
}

namespace {

struct ProcessIdentity {
  pid_t parent = 0;        // field 4 of /proc/<pid>/stat
  std::string start_time;  // field 22, in clock ticks since boot
  std::string cmdline;
};

Result<ProcessIdentity> IdentifyProcess(pid_t pid) {
  const std::string dir = "/proc/" + std::to_string(pid);
  VTM_ASSIGN_OR_RETURN(std::string stat, ReadFile(dir + "/stat"));
  VTM_ASSIGN_OR_RETURN(std::string cmdline, ReadFile(dir + "/cmdline"));
  // The command name (field 2) may hold spaces and parentheses: count fields after the last ')'.
  auto close = stat.rfind(')');
  if (close == std::string::npos) return Error(ErrorCode::kDataLoss, dir + "/stat is malformed");
  std::istringstream fields(stat.substr(close + 1));
  ProcessIdentity id;
  std::string field;
  for (int i = 3; i <= 22; ++i) {
    if (!(fields >> field)) return Error(ErrorCode::kDataLoss, dir + "/stat has no start time");
    if (i == 4) id.parent = static_cast<pid_t>(std::strtol(field.c_str(), nullptr, 10));
  }
  id.start_time = field;
  id.cmdline = std::move(cmdline);
  return id;
}

}  // namespace

Status RecordProcess(const std::string& record_path, pid_t pid) {
  VTM_ASSIGN_OR_RETURN(ProcessIdentity id, IdentifyProcess(pid));
  // The recorder is the owner: while the process is still its child, the owner lives.
  return WriteFileAtomic(record_path,
                         std::to_string(pid) + " " + id.start_time + " " + HexEncode(id.cmdline) + " " +
                             std::to_string(::getpid()) + "\n",
                         0600);
}

Result<pid_t> EndRecordedProcess(const std::string& record_path) {
  if (!PathExists(record_path)) return 0;
  VTM_ASSIGN_OR_RETURN(std::string text, ReadFile(record_path));
  std::istringstream in(text);
  long pid = 0;
  long owner = 0;
  std::string start_time, cmdline_hex;
  in >> pid >> start_time >> cmdline_hex >> owner;
  pid_t ended = 0;
  bool same = false;
  if (pid > 0 && ProcessAlive(static_cast<pid_t>(pid))) {
    auto now = IdentifyProcess(static_cast<pid_t>(pid));
    same = now.ok() && now->start_time == start_time && HexEncode(now->cmdline) == cmdline_hex;
    // Still the child of the process that recorded it: its owner runs and keeps it (a second
    // owner on the same state, e.g. two simulated host TPMs on one directory, must not end
    // the first one's). A parent's death reparents the child at once, so a pid the owner's
    // successor reuses is never this process's parent.
    if (same && owner > 0 && now->parent == static_cast<pid_t>(owner)) return 0;
  }
  if (same) {
    if (kill(static_cast<pid_t>(pid), SIGKILL) != 0 && errno != ESRCH) {
      return ErrnoError("ending the recorded process " + std::to_string(pid) + " (" + record_path + ")");
    }
    // Not our child: wait until its parent (init or a subreaper) has reaped it or it is a zombie,
    // which holds no files or locks any more.
    for (int i = 0; i < 500 && ProcessAlive(static_cast<pid_t>(pid)); ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    if (ProcessAlive(static_cast<pid_t>(pid))) {
      return Error(ErrorCode::kInternal, "the recorded process " + std::to_string(pid) + " survived SIGKILL");
    }
    ended = static_cast<pid_t>(pid);
  }
  if (::unlink(record_path.c_str()) != 0 && errno != ENOENT) return ErrnoError("removing " + record_path);
  return ended;
}

std::string FindProgram(const std::string& name) {
  std::error_code ec;
  auto self = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (!ec) {
    // Build tree layout: <build>/<component>/<binary>; installed: same bin dir.
    for (const auto& dir : {self.parent_path(), self.parent_path().parent_path() / "vtm-instance",
                     self.parent_path().parent_path() / "vtm-manager"}) {
      auto p = dir / name;
      if (access(p.c_str(), X_OK) == 0) return p.string();
    }
  }
  // Then PATH, so callers get the absolute path of what will run (measured launch hashes it).
  const char* path = getenv("PATH");
  std::string dirs = path != nullptr ? path : "/usr/local/bin:/usr/bin:/bin";
  size_t start = 0;
  while (start <= dirs.size()) {
    size_t end = dirs.find(':', start);
    if (end == std::string::npos) end = dirs.size();
    std::string dir = dirs.substr(start, end - start);
    if (!dir.empty()) {
      std::string p = dir;
      p += "/";
      p += name;
      if (access(p.c_str(), X_OK) == 0) return p;
    }
    start = end + 1;
  }
  return name;  // not found: Spawn reports it
}

}  // namespace vtm
