// Event log parsers and replay of vtm_attest (vtm/event_log.h): synthetic logs built from the
// specifications (tests/testing/event_log_builder.h) replay to independently computed PCR
// values, and every malformation is refused with the entry and what is wrong, never read
// out of bounds (every truncation of a valid log is tried).
#include "vtm/event_log.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "event_log_builder.h"
#include "test_env.h"
#include "vtm/hex.h"

namespace vtm::attest {
namespace {

using vtm::testing::BuildCryptoAgileLog;
using vtm::testing::BuildImaEntry;
using vtm::testing::BuildImaNgLog;
using vtm::testing::BuildSha1Log;
using vtm::testing::FirmwareEvent;
using vtm::testing::ImaFile;
using vtm::testing::Sha1;
using vtm::testing::Sha256;
using vtm::testing::TypicalFirmwareEvents;

// PCR values folded by hand: PCR := H(PCR || H(data)).
std::map<uint32_t, std::string> ExpectedPcrs(const std::vector<FirmwareEvent>& events, bool sha256, int locality) {
  std::map<uint32_t, std::string> pcrs;
  const size_t size = sha256 ? 32 : 20;
  pcrs[0] = std::string(size, '\0');
  if (locality > 0) pcrs[0].back() = static_cast<char>(locality);
  for (const FirmwareEvent& e : events) {
    auto [it, fresh] = pcrs.try_emplace(e.pcr, std::string(size, '\0'));
    (void)fresh;
    it->second = sha256 ? Sha256(it->second + Sha256(e.data)) : Sha1(it->second + Sha1(e.data));
  }
  return pcrs;
}

std::string RefusalOf(std::string_view bytes) {
  auto log = ParseTcgEventLog(bytes);
  EXPECT_FALSE(log.ok());
  if (log.ok()) return "";
  EXPECT_EQ(log.error().code(), ErrorCode::kInvalidArgument);
  return log.error().message();
}

TEST(TcgEventLogTest, CryptoAgileLogReplaysBothBanks) {
  const auto events = TypicalFirmwareEvents();
  auto log = ParseTcgEventLog(BuildCryptoAgileLog(events, 3));
  ASSERT_TRUE(log.ok()) << log.error().ToString();
  EXPECT_TRUE(log->crypto_agile);
  EXPECT_EQ(log->startup_locality, 3);
  EXPECT_EQ(log->events.size(), events.size() + 1);  // + StartupLocality
  auto replay = ReplayTcgEventLog(*log);
  ASSERT_TRUE(replay.ok()) << replay.error().ToString();
  EXPECT_EQ((*replay)[TPM2_ALG_SHA256], ExpectedPcrs(events, true, 3));
  EXPECT_EQ((*replay)[TPM2_ALG_SHA1], ExpectedPcrs(events, false, 3));
}

TEST(TcgEventLogTest, Sha1LogReplays) {
  const auto events = TypicalFirmwareEvents();
  auto log = ParseTcgEventLog(BuildSha1Log(events));
  ASSERT_TRUE(log.ok()) << log.error().ToString();
  EXPECT_FALSE(log->crypto_agile);
  auto replay = ReplayTcgEventLog(*log);
  ASSERT_TRUE(replay.ok());
  EXPECT_EQ(replay->count(TPM2_ALG_SHA256), 0u);
  EXPECT_EQ((*replay)[TPM2_ALG_SHA1], ExpectedPcrs(events, false, 0));
}

TEST(TcgEventLogTest, EveryTruncationIsRefusedWithoutReadingPastTheEnd) {
  const std::string good = BuildCryptoAgileLog(TypicalFirmwareEvents(), 0);
  for (size_t n = 0; n < good.size(); ++n) {
    auto log = ParseTcgEventLog(std::string_view(good).substr(0, n));
    // A cut exactly between entries is a shorter valid log; anything else is refused.
    if (log.ok()) continue;
    EXPECT_EQ(log.error().code(), ErrorCode::kInvalidArgument);
  }
  // Cut inside the last entry's data.
  EXPECT_NE(RefusalOf(std::string_view(good).substr(0, good.size() - 3)).find("runs past the end"),
            std::string::npos);
}

TEST(TcgEventLogTest, MalformedEntriesNameWhatIsWrong) {
  const std::vector<FirmwareEvent> one = {{0, 4, std::string(4, '\0')}};
  const std::string good = BuildCryptoAgileLog(one);
  const size_t header = good.size() - (12 + 2 + 20 + 2 + 32 + 4 + 4);  // the one TCG_PCR_EVENT2
  std::string bad = good;
  bad[header + 8] = 3;  // digest count 3, header lists 2
  EXPECT_NE(RefusalOf(bad).find("3 digests, but the Spec ID event lists 2"), std::string::npos);
  bad = good;
  bad[header + 12] = 0x0c;  // sha384 digest where the header lists sha1/sha256
  EXPECT_NE(RefusalOf(bad).find("does not list"), std::string::npos);
  bad = good;
  bad[header] = 24;  // PCR 24
  EXPECT_NE(RefusalOf(bad).find("PCR index 24"), std::string::npos);
  bad = good;
  bad[32 + 24] = 5;  // Spec ID: 5 algorithms
  EXPECT_FALSE(ParseTcgEventLog(bad).ok());
  EXPECT_NE(RefusalOf("").find("empty"), std::string::npos);
  // A huge event size must not be trusted.
  bad = good;
  bad[bad.size() - 5] = '\x7f';
  EXPECT_NE(RefusalOf(bad).find("runs past the end"), std::string::npos);
}

TEST(TcgEventLogTest, EditedEventChangesTheReplay) {
  auto events = TypicalFirmwareEvents();
  auto good = ReplayTcgEventLog(*ParseTcgEventLog(BuildCryptoAgileLog(events)));
  events[1].data = "firmware volume 2";
  auto edited = ReplayTcgEventLog(*ParseTcgEventLog(BuildCryptoAgileLog(events)));
  ASSERT_TRUE(good.ok() && edited.ok());
  EXPECT_NE((*good)[TPM2_ALG_SHA256][0], (*edited)[TPM2_ALG_SHA256][0]);
  EXPECT_EQ((*good)[TPM2_ALG_SHA256][7], (*edited)[TPM2_ALG_SHA256][7]);
}

TEST(ImaLogTest, ImaNgAndImaEntriesParseAndReplayPcr10) {
  const std::vector<ImaFile> files = {{"/usr/bin/vtmd", "vtmd binary"}, {"/usr/bin/swtpm", "swtpm binary"}};
  const std::string log = BuildImaNgLog(files) + BuildImaEntry({"/etc/vtmd.conf", "config"});
  auto entries = ParseImaLog(log);
  ASSERT_TRUE(entries.ok()) << entries.error().ToString();
  ASSERT_EQ(entries->size(), 4u);
  EXPECT_EQ((*entries)[0].file_name, "boot_aggregate");
  EXPECT_EQ((*entries)[1].file_name, "/usr/bin/vtmd");
  EXPECT_EQ((*entries)[1].file_hash_alg, "sha256");
  EXPECT_EQ((*entries)[1].file_digest, Sha256("vtmd binary"));
  EXPECT_EQ((*entries)[3].template_name, "ima");
  EXPECT_EQ((*entries)[3].file_digest, Sha1("config"));
  EXPECT_EQ((*entries)[3].file_name, "/etc/vtmd.conf");
  auto replay = ReplayImaLog(*entries);
  ASSERT_TRUE(replay.ok());
  std::string sha1(20, '\0');
  for (const ImaEntry& e : *entries) sha1 = Sha1(sha1 + e.template_hash);
  EXPECT_EQ((*replay)[TPM2_ALG_SHA1][10], sha1);
  std::string sha256(32, '\0');
  for (const ImaEntry& e : *entries) sha256 = Sha256(sha256 + Sha256(e.template_data));
  EXPECT_EQ((*replay)[TPM2_ALG_SHA256][10], sha256);
}

TEST(ImaLogTest, EditedEntryAndTruncationsAreRefused) {
  const std::string good = BuildImaNgLog({{"/usr/bin/vtmd", "vtmd binary"}});
  std::string edited = good;
  edited[edited.size() - 3] ^= 1;  // a byte of the file name
  auto r = ParseImaLog(edited);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message().find("entry 1"), std::string::npos) << r.error().message();
  EXPECT_NE(r.error().message().find("not SHA-1 of the template data"), std::string::npos);
  for (size_t n = 1; n < good.size(); ++n) {
    auto t = ParseImaLog(std::string_view(good).substr(0, n));
    if (!t.ok()) {
      EXPECT_EQ(t.error().code(), ErrorCode::kInvalidArgument);
    }
  }
  std::string long_name = good;
  long_name[24] = '\1';  // template name length 262
  EXPECT_FALSE(ParseImaLog(long_name).ok());
}

TEST(ImaLogTest, ViolationExtendsAllOnes) {
  std::string log = BuildImaNgLog({});
  for (size_t i = 4; i < 24; ++i) log[i] = '\0';  // boot_aggregate becomes a violation
  auto entries = ParseImaLog(log);
  ASSERT_TRUE(entries.ok()) << entries.error().ToString();
  EXPECT_TRUE((*entries)[0].violation());
  auto replay = ReplayImaLog(*entries);
  ASSERT_TRUE(replay.ok());
  EXPECT_EQ((*replay)[TPM2_ALG_SHA1][10], Sha1(std::string(20, '\0') + std::string(20, '\xff')));
}

MeasurementLog SampleMeasurementLog() {
  MeasurementLog log;
  log.set_version(1);
  log.set_pcr(15);
  VtmdStart start;
  start.set_vtmd_sha256(Sha256("vtmd"));
  InstanceLaunch launch;
  launch.set_vm_uuid("11111111-2222-3333-4444-555555555555");
  launch.set_swtpm_sha256(Sha256("swtpm"));
  int seq = 0;
  for (const std::string& data : {start.SerializeAsString(), launch.SerializeAsString()}) {
    MeasurementEvent* e = log.add_events();
    e->set_sequence(seq);
    e->set_pcr(15);
    e->set_type(seq == 0 ? MEASUREMENT_TYPE_VTMD_START : MEASUREMENT_TYPE_INSTANCE_LAUNCH);
    e->set_event_data(data);
    e->set_digest(Sha256(data));
    ++seq;
  }
  return log;
}

TEST(MeasurementLogTest, ReplaysAndRedactedEntriesStillReplay) {
  MeasurementLog log = SampleMeasurementLog();
  auto value = ReplayMeasurementLog(log);
  ASSERT_TRUE(value.ok()) << value.error().ToString();
  std::string expected(32, '\0');
  for (const auto& e : log.events()) expected = Sha256(expected + e.digest());
  EXPECT_EQ(*value, expected);
  log.mutable_events(1)->clear_event_data();  // another tenant's instance
  auto redacted = ReplayMeasurementLog(log);
  ASSERT_TRUE(redacted.ok());
  EXPECT_EQ(*redacted, expected);
}

TEST(MeasurementLogTest, EachMalformationIsRefusedWithItsReason) {
  auto refusal = [](const MeasurementLog& log) {
    auto r = ReplayMeasurementLog(log);
    EXPECT_FALSE(r.ok());
    return r.ok() ? std::string() : r.error().message();
  };
  MeasurementLog log = SampleMeasurementLog();
  log.set_version(2);
  EXPECT_NE(refusal(log).find("version 2"), std::string::npos);
  log = SampleMeasurementLog();
  log.mutable_events(1)->set_sequence(5);
  EXPECT_NE(refusal(log).find("entries missing or reordered"), std::string::npos);
  log = SampleMeasurementLog();
  log.mutable_events(1)->set_pcr(16);
  EXPECT_NE(refusal(log).find("PCR 16 in a log of PCR 15"), std::string::npos);
  log = SampleMeasurementLog();
  log.mutable_events(0)->mutable_event_data()->append("x");
  EXPECT_NE(refusal(log).find("does not hash to the digest"), std::string::npos);
  log = SampleMeasurementLog();
  log.mutable_events(0)->set_digest("short");
  EXPECT_NE(refusal(log).find("not 32 bytes"), std::string::npos);
  log = SampleMeasurementLog();
  log.mutable_events(0)->set_event_data("\xff\xff\xff");
  log.mutable_events(0)->set_digest(Sha256("\xff\xff\xff"));
  EXPECT_NE(refusal(log).find("not a valid MEASUREMENT_TYPE_VTMD_START"), std::string::npos);
}

}  // namespace
}  // namespace vtm::attest
