// Live migration with vtm against its anchor, in the same run (issue 7): the same QEMU guest
// (TCG, 256 MiB, busybox) migrated between two QEMUs on this machine
//   plain: a plain swtpm per side with one shared --migration-key, no manager (what QEMU and
//          swtpm alone cost);
//   vtm:   two vtmds (two simulated host TPMs, one fleet CA), the vTPM moved by sealed
//          migration with migration/vtm-live-migrate.
// Both runs use the same QMP orchestration (vtm-live-migrate finish, --plain for the anchor),
// which reports QEMU's own downtime, the commit's duration and how long the guest stayed paused
// after QEMU's migration completed (commit + cont): the guest-visible pause vtm adds is the
// difference of that last column (vtm's commit is sent over connections the script opened
// before QEMU's migration: on vtmd's API socket, and in rounds of their own, interleaved,
// through `vtmctl migrate commit --on-stdin`). Also the time of prepare + send (attestation of the
// destination, import key, sealing, transfer), which runs while the guest still runs.
// Prints a table; asserts nothing about time. VTM_BENCH_ROUNDS (default 3) rounds per mode.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <regex>
#include <thread>

#include "migration_rig.h"
#include "qemu_guest.h"
#include "test_env.h"
#include "vtm/fs.h"
#include "vtm/secret.h"
#include "vtm/subprocess.h"

using namespace vtm;
using namespace vtm::testing;

namespace {

constexpr const char* kPlain = "plain swtpm";
constexpr const char* kVtm = "vtm";                      // the script's commit on vtmd's API socket
constexpr const char* kVtmViaVtmctl = "vtm via vtmctl";  // --commit-via vtmctl

struct Row {
  std::string mode;
  double prepare_send_ms = 0, downtime_ms = 0, commit_ms = 0, paused_ms = 0, total_s = 0;
};

// One QMP command (after the capabilities handshake); QEMU's answers are read and dropped.
void Qmp(const std::string& path, const std::string& command) {
  std::string reply;
  (void)SendToSocket(path, "{\"execute\":\"qmp_capabilities\"}\n{\"execute\":\"" + command + "\"}\n", &reply);
}

bool WaitFor(const std::string& file, const std::string& text, std::chrono::seconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    auto c = ReadFile(file);
    if (c.ok() && c->find(text) != std::string::npos) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return false;
}

double JsonNumber(const std::string& json, const std::string& key) {
  std::smatch m;
  if (!std::regex_search(json, m, std::regex("\"" + key + "\": ([0-9.]+)"))) return -1;
  return std::stod(m[1].str());
}

GuestOptions Options(const std::string& dir, const std::string& tpm_socket, bool incoming) {
  GuestOptions o;
  o.tpm_socket = tpm_socket;
  o.script = "echo VTM-MIGRATE-READY\nsleep 600\n";
  o.work_dir = dir;
  o.timeout = std::chrono::seconds(300);
  o.extra_qemu_args = {"-qmp", "unix:" + dir + "/qmp.sock,server=on,wait=off"};
  if (incoming) o.extra_qemu_args.insert(o.extra_qemu_args.end(), {"-incoming", "unix:" + dir + "/migrate.sock", "-S"});
  return o;
}

// What the preparation (with the source guest running) gives the migration: the destination's
// vTPM socket and the vtm-live-migrate arguments that finish it.
struct Prepared {
  std::string dst_socket;
  std::vector<std::string> finish_args;
};

// Runs one migration between a source QEMU on src_socket and a destination QEMU on the socket
// `prepare` gives; returns the script's JSON line (empty on failure).
std::string Migrate(const std::string& dir, const std::string& src_socket, const std::function<Prepared()>& prepare,
                    double* prepare_ms) {
  std::filesystem::create_directories(dir + "/a");
  std::filesystem::create_directories(dir + "/b");
  GuestRun src_run, dst_run;
  std::thread src([&] { src_run = RunGuest(Options(dir + "/a", src_socket, false)); });
  std::thread dst;
  std::string out;
  if (WaitFor(dir + "/a/console.log", "VTM-MIGRATE-READY", std::chrono::seconds(240))) {
    auto t0 = std::chrono::steady_clock::now();
    Prepared prepared = prepare();
    *prepare_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    if (!prepared.dst_socket.empty()) {
      dst = std::thread([&] { dst_run = RunGuest(Options(dir + "/b", prepared.dst_socket, true)); });
      for (int i = 0; i < 100 && !PathExists(dir + "/b/qmp.sock"); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(100));
      std::vector<std::string> argv = {BuildPath("sbin/vtm-live-migrate")};
      argv.insert(argv.end(), prepared.finish_args.begin(), prepared.finish_args.end());
      argv.insert(argv.end(), {"--source-qmp", dir + "/a/qmp.sock", "--destination-qmp", dir + "/b/qmp.sock", "--uri",
                               "unix:" + dir + "/b/migrate.sock"});
      auto r = RunCommand(argv);
      if (r.exit_code == 0) {
        std::smatch m;
        if (std::regex_search(r.output, m, std::regex("\\{\"downtime_ms\"[^\\n]*\\}"))) out = m[0].str();
      } else {
        std::cerr << "migration failed: " << r.output << "\n";
      }
    }
  } else {
    std::cerr << "the guest did not get ready\n";
  }
  Qmp(dir + "/a/qmp.sock", "quit");
  src.join();
  if (dst.joinable()) {
    Qmp(dir + "/b/qmp.sock", "quit");
    dst.join();
  }
  return out;
}

double Median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

int main() {
  std::string error;
  if (!EnsureGuestImage(&error)) {
    std::cerr << "no guest image: " << error << "\n";
    return 1;
  }
  const int rounds = std::getenv("VTM_BENCH_ROUNDS") ? std::atoi(std::getenv("VTM_BENCH_ROUNDS")) : 3;
  std::vector<Row> rows;
  TempDir tmp;

  // The anchor: plain swtpm pairs with one migration key.
  for (int r = 0; r < rounds; ++r) {
    const std::string dir = tmp.path() + "/plain" + std::to_string(r);
    std::filesystem::create_directories(dir + "/sa");
    std::filesystem::create_directories(dir + "/sb");
    auto key = RandomSecret(32);
    (void)WriteFileAtomic(dir + "/mig.key", std::string(reinterpret_cast<const char*>(key->data()), 32), 0600);
    auto swtpm = [&](const std::string& state) {
      SpawnOptions so;
      so.parent_death_signal = SIGKILL;
      return Subprocess::Spawn({FindProgram("swtpm"), "socket", "--tpm2", "--tpmstate", "dir=" + state, "--ctrl",
                                "type=unixio,path=" + state + "/ctrl.sock", "--migration-key",
                                "file=" + dir + "/mig.key,format=binary,mode=aes-256-cbc", "--log",
                                "file=" + state + "/swtpm.log"},
                               so);
    };
    auto sa = swtpm(dir + "/sa");
    auto sb = swtpm(dir + "/sb");
    if (!sa.ok() || !sb.ok()) {
      std::cerr << "cannot start swtpm\n";
      return 1;
    }
    for (int i = 0; i < 50 && !PathExists(dir + "/sa/ctrl.sock"); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(100));
    Row row{kPlain};
    std::string json = Migrate(
        dir, dir + "/sa/ctrl.sock", [&] { return Prepared{dir + "/sb/ctrl.sock", {"finish", "anchor", "--plain"}}; },
        &row.prepare_send_ms);
    row.prepare_send_ms = 0;  // nothing to prepare without a manager
    (void)sa->Terminate(std::chrono::seconds(2));
    (void)sb->Terminate(std::chrono::seconds(2));
    if (json.empty()) return 1;
    row.downtime_ms = JsonNumber(json, "downtime_ms");
    row.commit_ms = JsonNumber(json, "commit_ms");
    row.paused_ms = JsonNumber(json, "paused_after_completion_ms");
    row.total_s = JsonNumber(json, "total_s");
    rows.push_back(row);
  }

  // vtm: two vtmds, sealed migration.
  MigrationRig rig;
  if (!rig.SetUp(&error)) {
    std::cerr << error << "\n";
    return 1;
  }
  const std::vector<std::string> script_opts = {"--vtmctl", BuildPath("vtm-manager/vtmctl"), "--socket", rig.a.socket()};
  // Each round twice, interleaved: the commit armed on vtmd's API socket by the script itself
  // (its default) and armed through `vtmctl migrate commit --on-stdin` (its fallback).
  for (int i = 0; i < 2 * rounds; ++i) {
    const int r = i / 2;
    const bool via_vtmctl = i % 2 == 1;
    const std::string name = "bench" + std::to_string(r) + (via_vtmctl ? "v" : "a");
    if (rig.a.Vtmctl({"create", "--name", name}).exit_code != 0) return 1;
    auto started = rig.a.Vtmctl({"start", name});
    const std::string uuid = vtm::testing::Field(started.output, "uuid");
    Row row{via_vtmctl ? kVtmViaVtmctl : kVtm};
    auto prepare = [&]() -> Prepared {
      std::vector<std::string> argv = {BuildPath("sbin/vtm-live-migrate")};
      argv.insert(argv.end(), script_opts.begin(), script_opts.end());
      argv.insert(argv.end(), {"start", name, "--to", rig.destination});
      auto begun = RunCommand(argv);
      std::smatch m;
      if (!std::regex_search(begun.output, m, std::regex("\"migration_id\": \"(mig-[0-9a-f]+)\", "
                                                         "\"destination_tpm_socket\": \"([^\"]+)\""))) {
        std::cerr << "vtm-live-migrate start: " << begun.output << "\n";
        return {};
      }
      std::vector<std::string> finish = script_opts;
      finish.insert(finish.end(), {"finish", m[1].str(), "--commit-via", via_vtmctl ? "vtmctl" : "api"});
      return Prepared{m[2].str(), finish};
    };
    const std::string dir = tmp.path() + "/" + name;
    std::string json = Migrate(dir, vtm::testing::Field(started.output, "tpm socket"), prepare, &row.prepare_send_ms);
    if (json.empty()) {
      std::cerr << rig.Logs();
      return 1;
    }
    row.downtime_ms = JsonNumber(json, "downtime_ms");
    row.commit_ms = JsonNumber(json, "commit_ms");
    row.paused_ms = JsonNumber(json, "paused_after_completion_ms");
    row.total_s = JsonNumber(json, "total_s");
    rows.push_back(row);
    {
      // vtmd logs where the commit's time went.
      const std::string log = rig.a.VtmdLog();
      const std::string marker = "the guest may continue there: ";
      const size_t at = log.rfind(marker);
      if (at != std::string::npos) {
        const size_t from = at + marker.size();
        std::printf("round %d (%s) commit phases: %s\n", r, row.mode.c_str(),
                    log.substr(from, log.find('\n', at) - from).c_str());
      }
    }
    (void)rig.b.Vtmctl({"stop", "--force", uuid});
    (void)rig.b.Vtmctl({"delete", uuid});
  }

  std::printf("\nLive migration of one QEMU guest (TCG, 256 MiB), %d rounds per mode\n", rounds);
  std::printf("%-16s %16s %16s %12s %22s %10s\n", "mode", "prepare+send ms", "QEMU downtime ms", "commit ms",
              "paused after done ms", "total s");
  for (const Row& row : rows) {
    std::printf("%-16s %16.1f %16.1f %12.1f %22.1f %10.2f\n", row.mode.c_str(), row.prepare_send_ms, row.downtime_ms,
                row.commit_ms, row.paused_ms, row.total_s);
  }
  auto median = [&](const std::string& mode, double Row::*field) {
    std::vector<double> v;
    for (const Row& row : rows) {
      if (row.mode == mode) v.push_back(row.*field);
    }
    return Median(v);
  };
  const double plain_pause = median(kPlain, &Row::downtime_ms) + median(kPlain, &Row::paused_ms);
  std::printf("\nmedian guest-visible pause (QEMU downtime + paused after completion): plain %.1f ms\n", plain_pause);
  for (const char* mode : {kVtm, kVtmViaVtmctl}) {
    const double pause = median(mode, &Row::downtime_ms) + median(mode, &Row::paused_ms);
    std::printf("  %-16s %.1f ms, added %.1f ms\n", mode, pause, pause - plain_pause);
  }
  // QEMU's own downtime varies from round to round by more than vtm adds (the relay passes the
  // state blobs inside it); the pause after completion is vtm's commit alone.
  std::printf("median paused after QEMU's migration completed: plain %.1f ms\n", median(kPlain, &Row::paused_ms));
  for (const char* mode : {kVtm, kVtmViaVtmctl}) {
    std::printf("  %-16s %.1f ms, added by vtm %.1f ms%s\n", mode, median(mode, &Row::paused_ms),
                median(mode, &Row::paused_ms) - median(kPlain, &Row::paused_ms),
                mode == kVtm ? " (target <= 5 ms)" : "");
  }
  std::printf("median prepare + send (while the guest runs): %.1f ms\n", median(kVtm, &Row::prepare_send_ms));
  return 0;
}
