// Faults in sealed migration, swept: the source vtmd, then the destination vtmd, is SIGKILLed
// at every crash point a cold migration passes on its side (enumerated by a traced run,
// VTM_CRASH_TRACE, not listed by hand). After each crash the dead vtmd starts again and the
// orchestrator's recovery runs as docs/migration.md says (repeat commit once committing or
// sent; abort what was only prepared). Then, each time: the VM's vTPM exists on exactly one host
// in a resting state, with the same EK (its state was not lost), and the migration can be
// completed, after which the VM starts on the destination.
#include <gtest/gtest.h>

#include <regex>
#include <set>
#include <sstream>

#include "migration_rig.h"
#include "vtm/fs.h"
#include "vtmd_fixture.h"

namespace vtm::testing {
namespace {

std::vector<std::string> TracedPoints(const std::string& file) {
  std::vector<std::string> points;
  std::set<std::string> seen;
  std::istringstream in(ReadFile(file).ok() ? *ReadFile(file) : "");
  std::string line;
  while (std::getline(in, line)) {
    if (!line.empty() && seen.insert(line).second) points.push_back(line);
  }
  return points;
}

class MigrationCrashTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string error;
    ASSERT_TRUE(rig.SetUp(&error)) << error;
  }
  void TearDown() override {
    if (HasFailure()) std::cerr << rig.Logs();
  }
  // The last migration of uuid that the source knows: {id, state}, or empty.
  std::pair<std::string, std::string> SourceMigration(const std::string& uuid) {
    auto status = rig.a.Vtmctl({"migrate", "status"});
    std::pair<std::string, std::string> last;
    std::istringstream in(status.output);
    std::string line;
    while (std::getline(in, line)) {
      std::istringstream fields(line);
      std::string id, vm, role, mode, state;
      fields >> id >> vm >> role >> mode >> state;
      if (vm == uuid && role == "source") last = {id, state};
    }
    return last;
  }
  // Restarts the side that crashed, runs the recovery and checks the invariants.
  void RecoverAndCheck(bool source_crashed, const std::string& uuid, const std::string& ek, const std::string& point) {
    SCOPED_TRACE("after a crash of the " + std::string(source_crashed ? "source" : "destination") + " at " + point);
    std::string error;
    VtmdFixture& crashed = source_crashed ? rig.a : rig.b;
    crashed.WaitVtmdExit();
    crashed.SetVtmdEnvironment({});
    ASSERT_TRUE(source_crashed ? rig.RestartSource(rig.P("policy.json"), &error, false) : rig.RestartDestination(&error, false))
        << error;
    auto [id, state] = SourceMigration(uuid);
    if (state == "prepared") {
      auto aborted = rig.a.Vtmctl({"migrate", "abort", id});
      ASSERT_EQ(aborted.exit_code, 0) << aborted.output;
    } else if (state == "sent" || state == "committing" || state == "activated") {
      auto committed = rig.a.Vtmctl({"migrate", "commit", id});
      ASSERT_EQ(committed.exit_code, 0) << committed.output;
    }
    auto on_a = rig.a.Vtmctl({"show", uuid});
    auto on_b = rig.b.Vtmctl({"show", uuid});
    const bool here = on_a.exit_code == 0, there = on_b.exit_code == 0;
    ASSERT_NE(here, there) << "source: " << on_a.output << "\ndestination: " << on_b.output;
    VtmdFixture& holder = here ? rig.a : rig.b;
    const std::string st = Field((here ? on_a : on_b).output, "state");
    EXPECT_TRUE(st == "provisioned" || st == "stopped") << st;
    EXPECT_EQ(holder.CertificatePublicKeyPem(uuid, "ek-ecc"), ek);
    EXPECT_EQ(PathExists((here ? rig.b : rig.a).state_dir() + "/vms/" + uuid), false);
    if (here) {
      auto moved = rig.a.Vtmctl({"migrate", "cold", uuid, "--to", rig.destination});
      ASSERT_EQ(moved.exit_code, 0) << moved.output;
    }
    auto started = rig.b.Vtmctl({"start", uuid});
    ASSERT_EQ(started.exit_code, 0) << started.output;
    EXPECT_EQ(rig.b.CertificatePublicKeyPem(uuid, "ek-ecc"), ek);
    ASSERT_EQ(rig.b.Vtmctl({"stop", uuid}).exit_code, 0);
  }
  void Sweep(bool source) {
    VtmdFixture& side = source ? rig.a : rig.b;
    std::string error;
    // A traced run names the points.
    const std::string trace = rig.P(source ? "trace-a" : "trace-b");
    side.SetVtmdEnvironment({"VTM_CRASH_TRACE=" + trace});
    ASSERT_TRUE(source ? rig.RestartSource(rig.P("policy.json"), &error) : rig.RestartDestination(&error)) << error;
    ASSERT_EQ(rig.a.Vtmctl({"create", "--name", "traced"}).exit_code, 0);
    ASSERT_TRUE(WriteFileAtomic(trace, "", 0644).ok());
    auto traced = rig.a.Vtmctl({"migrate", "cold", "traced", "--to", rig.destination});
    ASSERT_EQ(traced.exit_code, 0) << traced.output;
    std::vector<std::string> points = TracedPoints(trace);
    ASSERT_GE(points.size(), source ? 5u : 3u) << "points traced: " << points.size();
    int n = 0;
    for (const std::string& point : points) {
      const std::string name = std::string(source ? "s" : "d") + std::to_string(n++);
      ASSERT_EQ(rig.a.Vtmctl({"create", "--name", name}).exit_code, 0);
      const std::string uuid = Field(rig.a.Vtmctl({"show", name}).output, "uuid");
      const std::string ek = rig.a.CertificatePublicKeyPem(name, "ek-ecc");
      side.SetVtmdEnvironment({"VTM_CRASH_AT=" + point});
      ASSERT_TRUE(source ? rig.RestartSource(rig.P("policy.json"), &error) : rig.RestartDestination(&error)) << error;
      auto crashed = rig.a.Vtmctl({"migrate", "cold", name, "--to", rig.destination});
      EXPECT_NE(crashed.exit_code, 0) << "no crash at " << point << ": " << crashed.output;
      RecoverAndCheck(source, uuid, ek, point);
      if (HasFatalFailure()) return;
    }
    std::cerr << (source ? "source" : "destination") << " crash points swept: " << points.size() << "\n";
  }

  MigrationRig rig;
};

TEST_F(MigrationCrashTest, SourceKilledAtEveryStep) { Sweep(true); }
TEST_F(MigrationCrashTest, DestinationKilledAtEveryStep) { Sweep(false); }

}  // namespace
}  // namespace vtm::testing
