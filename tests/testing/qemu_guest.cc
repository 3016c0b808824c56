// Builds (once) and boots the end-to-end test guest under QEMU; see qemu_guest.h.
#include "qemu_guest.h"

#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>

#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <optional>
#include <regex>
#include <sstream>
#include <thread>

#include "test_env.h"
#include "vtm/subprocess.h"
#include "vtm/unique_fd.h"

namespace vtm::testing {
namespace {

constexpr char kBootMarker[] = "VTM-GUEST: boot ok";
constexpr char kExitMarker[] = "VTM-GUEST: exit ";
constexpr int kAptUnreachableExit = 3;  // build-guest.sh's "could not fetch the kernel"

std::string ReadWhole(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string Tail(const std::string& text, size_t max_bytes) {
  if (text.size() <= max_bytes) return text;
  return "...\n" + text.substr(text.size() - max_bytes);
}

std::string StripCr(std::string s) {
  std::erase(s, '\r');
  return s;
}

// Environment for children: PATH plus the few variables the build script honours.
std::vector<std::string> ChildEnv() {
  std::vector<std::string> env = {"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                                  "LC_ALL=C"};
  for (const char* name : {"TMPDIR", "HOME", "VTM_GUEST_KERNEL_DEB", "VTM_GUEST_FORCE"}) {
    if (const char* v = std::getenv(name)) env.push_back(std::string(name) + "=" + v);
  }
  return env;
}

// newc cpio: "070701", 13 eight-digit hex fields, the name with its NUL, padding to 4 bytes.
void AppendCpioEntry(std::string* out, const std::string& name, unsigned mode, const std::string& data,
                     unsigned nlink) {
  char header[111];
  std::snprintf(header, sizeof header, "070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
                0u /*ino*/, mode, 0u /*uid*/, 0u /*gid*/, nlink, 0u /*mtime*/,
                static_cast<unsigned>(data.size()), 0u, 0u, 0u, 0u,
                static_cast<unsigned>(name.size() + 1), 0u /*check*/);
  out->append(header, 110);
  out->append(name);
  out->push_back('\0');
  while (out->size() % 4) out->push_back('\0');
  out->append(data);
  while (out->size() % 4) out->push_back('\0');
}

int FindExitCode(const std::string& console) {
  size_t pos = console.rfind(kExitMarker);
  if (pos == std::string::npos) return -1;
  pos += sizeof kExitMarker - 1;
  size_t end = pos;
  while (end < console.size() && std::isdigit(static_cast<unsigned char>(console[end]))) ++end;
  if (end == pos) return -1;
  return std::atoi(console.substr(pos, end - pos).c_str());
}

}  // namespace

std::map<std::string, std::string> GuestProgram(const std::string& host_binary) {
  std::map<std::string, std::string> files;
  files["usr/bin/" + std::filesystem::path(host_binary).filename().string()] = host_binary;
  FILE* ldd = popen(("ldd '" + host_binary + "'").c_str(), "r");
  if (ldd == nullptr) return files;
  char line[1024];
  while (std::fgets(line, sizeof line, ldd) != nullptr) {
    const std::string l = line;
    const size_t arrow = l.find("=> /");
    if (arrow == std::string::npos) continue;  // vdso, the loader (in the image already)
    const std::string lib = l.substr(arrow + 3, l.find(' ', arrow + 3) - (arrow + 3));
    files["lib/x86_64-linux-gnu/" + std::filesystem::path(lib).filename().string()] =
        std::filesystem::canonical(lib).string();
  }
  pclose(ldd);
  return files;
}

std::string GuestDir() { return std::string(VTM_BUILD_DIR) + "/guest"; }

bool EnsureGuestImage(std::string* error, bool* apt_unreachable) {
  static std::mutex mu;
  static bool done = false;
  std::lock_guard<std::mutex> lock(mu);
  if (apt_unreachable) *apt_unreachable = false;
  if (done) return true;

  const std::string script = std::string(VTM_SOURCE_DIR) + "/tests/guest/build-guest.sh";
  const std::string dir = GuestDir();
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) {
    *error = "cannot create " + dir + ": " + ec.message();
    return false;
  }
  const std::string log = dir + "/build.log";
  std::filesystem::remove(log, ec);
  SpawnOptions so;
  so.output_file = log;
  so.env = ChildEnv();
  auto child = Subprocess::Spawn({"/bin/bash", script, dir}, so);
  if (!child.ok()) {
    *error = "starting " + script + ": " + child.error().ToString();
    return false;
  }
  auto status = child->Wait(std::chrono::minutes(20));
  if (!status.ok()) {
    child->Terminate();
    *error = script + " did not finish in 20 minutes; log " + log + ":\n" + Tail(ReadWhole(log), 4000);
    return false;
  }
  if (WIFEXITED(*status) && WEXITSTATUS(*status) == 0) {
    done = true;
    return true;
  }
  if (WIFEXITED(*status) && WEXITSTATUS(*status) == kAptUnreachableExit && apt_unreachable) {
    *apt_unreachable = true;
  }
  *error = script + " " + DescribeWaitStatus(*status) + "; log " + log + ":\n" + Tail(ReadWhole(log), 4000);
  return false;
}

bool MakeScriptInitrd(const std::string& base_initrd, const std::string& script, const std::string& out_path,
                      std::string* error, const std::map<std::string, std::string>& extra_files) {
  std::ifstream in(base_initrd, std::ios::binary);
  if (!in) {
    *error = "cannot read base initrd " + base_initrd;
    return false;
  }
  std::stringstream ss;
  ss << in.rdbuf();
  std::string image = ss.str();
  // The kernel recognises an appended archive only at a 4-byte boundary; zeros are skipped.
  while (image.size() % 4) image.push_back('\0');
  std::string cpio;
  AppendCpioEntry(&cpio, "vtm-test.sh", 0100755, script, 1);
  for (const auto& [guest_path, host_path] : extra_files) {
    std::ifstream f(host_path, std::ios::binary);
    std::stringstream data;
    data << f.rdbuf();
    if (!f) {
      *error = "cannot read " + host_path + " for the guest";
      return false;
    }
    AppendCpioEntry(&cpio, guest_path, 0100755, data.str(), 1);
  }
  AppendCpioEntry(&cpio, "TRAILER!!!", 0, "", 1);
  image += cpio;
  std::ofstream out(out_path, std::ios::binary | std::ios::trunc);
  out.write(image.data(), static_cast<std::streamsize>(image.size()));
  out.close();
  if (!out) {
    *error = "cannot write " + out_path;
    return false;
  }
  return true;
}

void GuestImageTest::SetUp() {
  std::string error;
  bool apt_unreachable = false;
  if (!EnsureGuestImage(&error, &apt_unreachable)) {
    if (apt_unreachable) GTEST_SKIP() << "guest image cannot be built, apt unreachable: " << error;
    FAIL() << "building the guest image failed: " << error;
  }
}

std::string GuestRun::ScriptOutput() const {
  size_t start = console.find(kBootMarker);
  if (start == std::string::npos) return "";
  start = console.find('\n', start);
  if (start == std::string::npos) return "";
  ++start;
  size_t end = console.rfind(kExitMarker);
  if (end == std::string::npos || end < start) end = console.size();
  return console.substr(start, end - start);
}

std::string GuestRun::Describe() const {
  std::ostringstream os;
  os << "guest run: booted=" << booted << " exit_code=" << exit_code << " timed_out=" << timed_out;
  if (!error.empty()) os << " error=" << error;
  os << "\n--- console ---\n" << Tail(console, 16000);
  if (!qemu_log.empty()) os << "\n--- qemu ---\n" << Tail(qemu_log, 4000);
  return os.str();
}

GuestRun RunGuest(const GuestOptions& options) {
  GuestRun run;
  std::optional<TempDir> tmp;
  std::string work = options.work_dir;
  if (work.empty()) {
    tmp.emplace();
    work = tmp->path();
  }
  std::error_code ec;
  std::filesystem::create_directories(work, ec);
  const std::string console_path = work + "/console.log";
  const std::string qemu_log_path = work + "/qemu.log";
  std::filesystem::remove(console_path, ec);
  std::filesystem::remove(qemu_log_path, ec);

  std::string initrd = GuestDir() + "/initrd.img";
  const std::string kernel = GuestDir() + "/vmlinuz";
  if (!std::filesystem::exists(kernel) || !std::filesystem::exists(initrd)) {
    run.error = "guest image missing in " + GuestDir() + " (call EnsureGuestImage first)";
    return run;
  }
  if (!options.script.empty()) {
    const std::string per_run = work + "/initrd-test.img";
    if (!MakeScriptInitrd(initrd, options.script, per_run, &run.error, options.extra_files)) return run;
    initrd = per_run;
  }

  std::string cmdline = "console=ttyS0 quiet panic=-1 ima_policy=tcb";
  if (!options.extra_cmdline.empty()) cmdline += " " + options.extra_cmdline;
  std::vector<std::string> argv = {"qemu-system-x86_64",
                                   "-machine", "q35,accel=tcg",
                                   "-m", std::to_string(options.memory_mb),
                                   "-nographic", "-no-reboot", "-nodefaults",
                                   "-serial", "file:" + console_path,
                                   "-kernel", kernel,
                                   "-initrd", initrd,
                                   "-append", cmdline};
  if (!options.tpm_socket.empty()) {
    argv.insert(argv.end(), {"-chardev", "socket,id=chrtpm,path=" + options.tpm_socket,
                             "-tpmdev", "emulator,id=tpm0,chardev=chrtpm",
                             "-device", options.tpm_device + ",tpmdev=tpm0"});
  }
  if (!options.tcp_forwards.empty()) {
    std::string netdev = "user,id=net0,restrict=on";
    for (const auto& [guest_port, host_port] : options.tcp_forwards) {
      netdev += ",hostfwd=tcp:127.0.0.1:" + std::to_string(host_port) + "-:" + std::to_string(guest_port);
    }
    argv.insert(argv.end(), {"-netdev", netdev, "-device", "virtio-net-pci,netdev=net0"});
  }
  argv.insert(argv.end(), options.extra_qemu_args.begin(), options.extra_qemu_args.end());

  SpawnOptions so;
  so.output_file = qemu_log_path;
  so.env = ChildEnv();
  so.parent_death_signal = SIGKILL;  // a test killed by ctest's timeout takes its guest with it
  const auto start = std::chrono::steady_clock::now();
  auto seconds_since_start = [&] {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  };
  auto qemu = Subprocess::Spawn(argv, so);
  if (!qemu.ok()) {
    run.error = "starting QEMU: " + qemu.error().ToString();
    return run;
  }
  const auto deadline = start + options.timeout;
  int status = 0;
  bool exited = false;
  while (true) {
    auto st = qemu->Wait(std::chrono::milliseconds(20));
    if (st.ok()) {
      status = *st;
      exited = true;
      break;
    }
    if (run.seconds_to_boot == 0 && ReadWhole(console_path).find(kBootMarker) != std::string::npos) {
      run.seconds_to_boot = seconds_since_start();
    }
    if (std::chrono::steady_clock::now() >= deadline) {
      run.timed_out = true;
      status = qemu->Terminate(std::chrono::seconds(2));
      break;
    }
  }
  run.seconds_total = seconds_since_start();
  run.console = StripCr(ReadWhole(console_path));
  run.qemu_log = ReadWhole(qemu_log_path);
  run.booted = run.console.find(kBootMarker) != std::string::npos;
  if (run.booted && run.seconds_to_boot == 0) run.seconds_to_boot = run.seconds_total;
  run.exit_code = FindExitCode(run.console);
  if (run.timed_out) {
    run.error = "QEMU killed after " + std::to_string(options.timeout.count()) + " s";
  } else if (exited && !(WIFEXITED(status) && WEXITSTATUS(status) == 0)) {
    run.error = "QEMU " + DescribeWaitStatus(status);
  }
  return run;
}

bool SendToSocket(const std::string& path, const std::string& data, std::string* reply) {
  for (int attempt = 0; attempt < 100; ++attempt) {
    UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::snprintf(addr.sun_path, sizeof addr.sun_path, "%s", path.c_str());
    if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0) {
      if (::write(fd.get(), data.data(), data.size()) != static_cast<ssize_t>(data.size())) return false;
      if (reply != nullptr) {
        char buf[4096];
        timeval tv{2, 0};
        setsockopt(fd.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        ssize_t n;
        while ((n = ::read(fd.get(), buf, sizeof buf)) > 0) reply->append(buf, static_cast<size_t>(n));
      }
      return true;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return false;
}

std::string GuestMarker(const std::string& script_output, const std::string& key) {
  std::istringstream in(script_output);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(key + "=", 0) == 0) return line.substr(key.size() + 1);
  }
  return "";
}

std::string ReadConsoleFile(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::string text((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  std::erase(text, '\r');
  return text;
}

std::string WaitForConsoleMarker(const std::string& path, const std::string& key, std::chrono::seconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  do {
    std::string value = GuestMarker(ReadConsoleFile(path), key);
    if (!value.empty()) return value;
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  } while (std::chrono::steady_clock::now() < deadline);
  return "";
}

std::map<int, std::string> GuestPcrs(const std::string& script_output) {
  std::map<int, std::string> pcrs;
  static const std::regex pcr_line(R"(^\s*(\d+)\s*:\s*0x([0-9A-Fa-f]{64})\s*$)");
  std::istringstream in(script_output);
  std::string line;
  while (std::getline(in, line)) {
    std::smatch m;
    if (std::regex_match(line, m, pcr_line)) {
      std::string hex = m[2];
      for (auto& c : hex) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
      pcrs[std::stoi(m[1])] = hex;
    }
  }
  return pcrs;
}

}  // namespace vtm::testing
