// Load on one vtmd (issue 10): many concurrent API clients, each doing a mix of operations on
// its own VM (create, start, show, stop, delete) and on VMs all clients share (start, stop,
// show, list), through the real API (CallVtmd) against a real vtmd with real swtpm instances.
// Asserts: every answer is a clean API answer (an expected status, an error text when not OK),
// no call hangs (a bounded wait per call), and at the end the registry, the state directory
// and the processes agree (no VM active twice, every VM gone or at rest, no leftover
// instance). Prints p50/p99/max latency per operation; docs/benchmarks.md records a run.
//
// Label `load` (not in the default unit|integration run). Scale: VTM_LOAD_CLIENTS (default 64)
// clients of VTM_LOAD_OPS (default 1000) operations each.
//
// Thread safety: the client threads share only the latency table (under a mutex) and vtmd.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <filesystem>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <thread>

#include "api_client.h"
#include "vtmd_fixture.h"

namespace vtm::testing {
namespace {

int EnvInt(const char* name, int fallback) {
  const char* v = getenv(name);
  return v != nullptr && *v != '\0' ? std::atoi(v) : fallback;
}

// 8-4-4-4-12 UUID with a fixed prefix and a numbered tail (own VMs and shared VMs differ).
std::string NumberedUuid(int kind, int n) {
  char buf[40];
  std::snprintf(buf, sizeof buf, "10ad0000-0000-4000-8000-%04d%08d", kind, n);
  return buf;
}

constexpr auto kCallTimeout = std::chrono::seconds(180);  // a call slower than this is a hang

struct Sample {
  std::string op;
  double ms;
};

class Table {
 public:
  void Add(const std::string& op, double ms, api::Status status) {
    std::lock_guard<std::mutex> lock(mu_);
    ms_[op].push_back(ms);
    if (status != api::STATUS_OK) ++errors_[op][api::Status_Name(status)];
  }
  void Print() {
    std::lock_guard<std::mutex> lock(mu_);
    std::printf("%-14s %7s %9s %9s %9s  %s\n", "operation", "count", "p50 ms", "p99 ms", "max ms", "clean errors");
    for (auto& entry : ms_) {
      const std::string& op = entry.first;
      std::vector<double>& v = entry.second;  // a named reference: clang 14 cannot capture a structured binding
      std::sort(v.begin(), v.end());
      auto at = [&v](double q) { return v[std::min(v.size() - 1, static_cast<size_t>(q * static_cast<double>(v.size())))]; };
      std::string errs;
      for (const auto& [name, n] : errors_[op]) errs += name + "=" + std::to_string(n) + " ";
      std::printf("%-14s %7zu %9.1f %9.1f %9.1f  %s\n", op.c_str(), v.size(), at(0.5), at(0.99), v.back(), errs.c_str());
    }
    std::fflush(stdout);
  }

 private:
  std::mutex mu_;
  std::map<std::string, std::vector<double>> ms_;
  std::map<std::string, std::map<std::string, int>> errors_;
};

class LoadTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_TRUE(f.StartVtmd()) << f.VtmdLog(); }
  void TearDown() override {
    if (HasFailure()) std::cerr << "---- vtmd log (tail) ----\n" << f.VtmdLog().substr(f.VtmdLog().size() > 20000 ? f.VtmdLog().size() - 20000 : 0);
  }

  // One call; records its latency; fails the test for an unclean answer (no answer, an
  // unexpected status, an error without text). Returns the status (INTERNAL if no answer).
  api::Status Call(const std::string& op, const api::Request& request, const std::set<api::Status>& allowed,
                   api::Response* out = nullptr) {
    auto t0 = std::chrono::steady_clock::now();
    auto response = CallVtmd(f.socket(), request, kCallTimeout);
    double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    if (!response.ok()) {
      ADD_FAILURE() << op << ": no clean answer from vtmd: " << response.error().ToString();
      return api::STATUS_INTERNAL;
    }
    table.Add(op, ms, response->status());
    // A full connection table is a clean, retryable refusal for every operation.
    if (response->status() != api::STATUS_OK) {
      EXPECT_FALSE(response->error().empty()) << op << " " << api::Status_Name(response->status()) << " without text";
    }
    if (!allowed.count(response->status()) && response->status() != api::STATUS_UNAVAILABLE) {
      ADD_FAILURE() << op << ": " << api::Status_Name(response->status()) << ": " << response->error();
    }
    if (out != nullptr) *out = *response;
    return response->status();
  }

  VtmdFixture f;
  Table table;
};

api::Request Create(const std::string& uuid) {
  api::Request r;
  r.mutable_create()->set_uuid(uuid);
  return r;
}
api::Request Start(const std::string& uuid) {
  api::Request r;
  r.mutable_start()->set_uuid(uuid);
  return r;
}
api::Request Stop(const std::string& uuid) {
  api::Request r;
  r.mutable_stop()->set_uuid(uuid);
  return r;
}
api::Request Delete(const std::string& uuid) {
  api::Request r;
  r.mutable_delete_()->set_uuid(uuid);
  return r;
}
api::Request Show(const std::string& uuid) {
  api::Request r;
  r.mutable_show()->set_uuid(uuid);
  return r;
}
api::Request List() {
  api::Request r;
  r.mutable_list();
  return r;
}

TEST_F(LoadTest, ConcurrentClientsMixedOperations) {
  const int clients = EnvInt("VTM_LOAD_CLIENTS", 64);
  const int ops = EnvInt("VTM_LOAD_OPS", 1000);
  constexpr int kShared = 4;
  using S = api::Status;
  for (int i = 0; i < kShared; ++i) {
    ASSERT_EQ(Call("create", Create(NumberedUuid(1, i)), {S::STATUS_OK}), S::STATUS_OK);
  }

  auto wall0 = std::chrono::steady_clock::now();
  std::vector<std::thread> threads;
  for (int c = 0; c < clients; ++c) {
    threads.emplace_back([&, c] {
      std::mt19937 rng(static_cast<unsigned>(c) + 1);
      const std::string own = NumberedUuid(2, c);
      int stage = 0;  // own VM: 0 absent, 1 provisioned, 2 running, 3 stopped
      // Retries an own-VM step refused only because vtmd's connection table was full.
      auto own_step = [&](const std::string& op, const api::Request& request) {
        while (Call(op, request, {S::STATUS_OK}) == S::STATUS_UNAVAILABLE) {
          std::this_thread::sleep_for(std::chrono::milliseconds(50));
        }
      };
      for (int i = 0; i < ops; ++i) {
        const int dice = static_cast<int>(rng() % 100);
        const std::string shared = NumberedUuid(1, static_cast<int>(rng() % kShared));
        if (dice < 8) {
          switch (stage) {
            case 0: own_step("create", Create(own)); break;
            case 1: own_step("start", Start(own)); break;
            case 2: own_step("stop", Stop(own)); break;
            default: own_step("delete", Delete(own)); break;
          }
          stage = (stage + 1) % 4;
        } else if (dice < 35) {
          Call("show", Show(own), {S::STATUS_OK, S::STATUS_NOT_FOUND});
        } else if (dice < 55) {
          Call("list", List(), {S::STATUS_OK});
        } else if (dice < 75) {
          Call("show shared", Show(shared), {S::STATUS_OK});
        } else if (dice < 88) {
          // Another client may own the transition right now: a clean refusal is correct.
          Call("start shared", Start(shared), {S::STATUS_OK, S::STATUS_FAILED_PRECONDITION});
        } else {
          Call("stop shared", Stop(shared), {S::STATUS_OK, S::STATUS_FAILED_PRECONDITION});
        }
      }
      // Leave the own VM gone.
      if (stage == 2) own_step("stop", Stop(own));
      if (stage != 0) own_step("delete", Delete(own));
    });
  }
  for (auto& t : threads) t.join();
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - wall0).count();
  for (int i = 0; i < kShared; ++i) {
    Call("stop shared", Stop(NumberedUuid(1, i)), {S::STATUS_OK});
  }

  std::printf("vtmd load: %d clients x %d operations in %.1f s\n", clients, ops, wall);
  table.Print();

  // The registry, the state directory and the processes agree: only the shared VMs remain,
  // each at rest, each with its directory; nothing else has a directory or a process.
  api::Response listed;
  ASSERT_EQ(Call("list", List(), {S::STATUS_OK}, &listed), S::STATUS_OK);
  std::set<std::string> in_registry;
  for (const auto& vm : listed.vms()) {
    in_registry.insert(vm.uuid());
    EXPECT_TRUE(vm.state() == api::VM_STATE_STOPPED || vm.state() == api::VM_STATE_PROVISIONED)
        << vm.uuid() << " is " << api::VmState_Name(vm.state());
    EXPECT_EQ(vm.instance_pid(), 0) << vm.uuid();
  }
  std::set<std::string> expected;
  for (int i = 0; i < kShared; ++i) expected.insert(NumberedUuid(1, i));
  EXPECT_EQ(in_registry, expected);
  std::set<std::string> on_disk;
  for (const auto& e : std::filesystem::directory_iterator(f.state_dir() + "/vms")) {
    on_disk.insert(e.path().filename().string());
  }
  EXPECT_EQ(on_disk, expected);
  EXPECT_TRUE(FindProcesses({"vtm-instance", f.run_dir()}).empty());
  EXPECT_TRUE(FindProcesses({kSwtpmProcess, f.state_dir() + "/vms/"}).empty());
  // vtmctl agrees with the API.
  auto list = f.Vtmctl({"list"});
  EXPECT_EQ(list.exit_code, 0) << list.output;
  for (const auto& uuid : expected) EXPECT_NE(list.output.find(uuid), std::string::npos) << list.output;
}

}  // namespace
}  // namespace vtm::testing
