// Base fixture for tests against a fresh simulated host TPM: an swtpm in a temp directory and a
// vtm::Tpm connected to it, plus tpm2-tools aimed at the same TPM. Header-only: only targets
// that link vtm_host_tpm include it. Not thread-safe (one test at a time, as gtest runs them).
#pragma once

#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

#include "test_env.h"
#include "vtm/host_tpm.h"
#include "vtm/tpm.h"

namespace vtm::testing {

class SimulatedHostTpmTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto sim = SimulatedHostTpm::Start(dir_.path() + "/host-tpm");
    ASSERT_TRUE(sim.ok()) << sim.error().ToString();
    sim_ = std::move(sim).value();
    auto tpm = Tpm::OpenTcti(sim_->tcti());
    ASSERT_TRUE(tpm.ok()) << tpm.error().ToString();
    tpm_ = std::move(tpm).value();
  }

  // A tpm2-tools command against the same TPM.
  CommandResult Tpm2Tool(const std::vector<std::string>& args) {
    std::vector<std::string> argv = {"env", "TPM2TOOLS_TCTI=" + sim_->tcti()};
    argv.insert(argv.end(), args.begin(), args.end());
    return RunCommand(argv);
  }

  // Destroyed in reverse order: TPM connection, swtpm, then its directory.
  TempDir dir_;
  std::unique_ptr<SimulatedHostTpm> sim_;
  std::unique_ptr<Tpm> tpm_;
};

}  // namespace vtm::testing
