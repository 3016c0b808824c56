// Cross-check with a tool we did not write: tpm2_eventlog replays the same synthetic UEFI
// event logs (crypto-agile and SHA-1) to the same PCR values as vtm_attest's parser.
// Logs with a StartupLocality event are left out: tpm2-tools 5.4 (Debian 12) extends that
// EV_NO_ACTION event instead of starting PCR 0 at the locality (fixed in later tpm2-tools;
// vtm follows the PFP specification, see event_log_test).
#include <gtest/gtest.h>

#include <sstream>
#include <string>

#include "event_log_builder.h"
#include "test_env.h"
#include "vtm/event_log.h"
#include "vtm/fs.h"
#include "vtm/hex.h"

namespace vtm::attest {
namespace {

using vtm::testing::RunCommand;
using vtm::testing::TempDir;

// The "pcrs:" section of tpm2_eventlog's YAML: bank name -> PCR -> lower-case hex.
std::map<std::string, std::map<uint32_t, std::string>> ToolPcrs(const std::string& yaml) {
  std::map<std::string, std::map<uint32_t, std::string>> out;
  std::istringstream in(yaml.substr(yaml.find("\npcrs:\n") + 1));
  std::string line, bank;
  while (std::getline(in, line)) {
    if (line.rfind("    ", 0) == 0 && !bank.empty()) {
      const size_t colon = line.find(':');
      const size_t hex = line.find("0x");
      if (colon == std::string::npos || hex == std::string::npos) continue;
      std::string value = line.substr(hex + 2);
      for (char& c : value) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
      out[bank][static_cast<uint32_t>(std::stoul(line.substr(0, colon)))] = value;
    } else if (line.rfind("  ", 0) == 0 && line.back() == ':') {
      bank = line.substr(2, line.size() - 3);
    }
  }
  return out;
}

void ExpectSameAsTpm2Eventlog(const std::string& log_bytes) {
  TempDir dir;
  const std::string path = dir.path() + "/binary_bios_measurements";
  ASSERT_TRUE(WriteFileAtomic(path, log_bytes, 0600).ok());
  auto tool = RunCommand({"tpm2_eventlog", path});
  ASSERT_EQ(tool.exit_code, 0) << tool.output;
  auto tool_pcrs = ToolPcrs(tool.output);
  ASSERT_FALSE(tool_pcrs.empty()) << tool.output;
  auto log = ParseTcgEventLog(log_bytes);
  ASSERT_TRUE(log.ok()) << log.error().ToString();
  auto replay = ReplayTcgEventLog(*log);
  ASSERT_TRUE(replay.ok());
  for (const auto& [bank, alg] : {std::pair<std::string, TPM2_ALG_ID>{"sha1", TPM2_ALG_SHA1},
                                  std::pair<std::string, TPM2_ALG_ID>{"sha256", TPM2_ALG_SHA256}}) {
    std::map<uint32_t, std::string> ours;
    for (const auto& [pcr, value] : (*replay)[alg]) ours[pcr] = HexEncode(value);
    EXPECT_EQ(ours, tool_pcrs[bank]) << bank << "\n" << tool.output;
  }
}

TEST(EventLogToolsTest, CryptoAgileLogReplaysLikeTpm2Eventlog) {
  ExpectSameAsTpm2Eventlog(vtm::testing::BuildCryptoAgileLog(vtm::testing::TypicalFirmwareEvents()));
}

TEST(EventLogToolsTest, Sha1LogReplaysLikeTpm2Eventlog) {
  ExpectSameAsTpm2Eventlog(vtm::testing::BuildSha1Log(vtm::testing::TypicalFirmwareEvents()));
}

}  // namespace
}  // namespace vtm::attest
