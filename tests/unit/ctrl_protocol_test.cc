// Unit tests for the control-protocol framing in vtm-instance/src/ctrl_protocol.h:
// every command's request size, requests split at every byte, state-blob lengths, garbage.
#include "ctrl_protocol.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <vector>

#include "instance.h"
#include "relay_policy.h"

namespace vtm::instance {
namespace {

using Kind = CtrlParseResult::Kind;

std::vector<uint8_t> Be32(uint32_t v) {
  return {static_cast<uint8_t>(v >> 24), static_cast<uint8_t>(v >> 16), static_cast<uint8_t>(v >> 8),
          static_cast<uint8_t>(v)};
}

std::vector<uint8_t> Request(CtrlCommand cmd, std::vector<uint8_t> body = {}) {
  auto out = Be32(static_cast<uint32_t>(cmd));
  out.insert(out.end(), body.begin(), body.end());
  return out;
}

std::vector<uint8_t> SetStateBlob(uint32_t flags, uint32_t type, const std::vector<uint8_t>& data) {
  std::vector<uint8_t> body;
  for (uint32_t v : {flags, type, static_cast<uint32_t>(data.size())}) {
    auto b = Be32(v);
    body.insert(body.end(), b.begin(), b.end());
  }
  body.insert(body.end(), data.begin(), data.end());
  return Request(CtrlCommand::kSetStateBlob, body);
}

TEST(CtrlProtocolTest, EachFixedSizeCommandHasItsRequestSize) {
  struct Case {
    CtrlCommand cmd;
    size_t body;
  } cases[] = {
      {CtrlCommand::kGetCapability, 0}, {CtrlCommand::kInit, 4},
      {CtrlCommand::kShutdown, 0},      {CtrlCommand::kGetTpmEstablished, 0},
      {CtrlCommand::kSetLocality, 4},   {CtrlCommand::kHashStart, 0},
      {CtrlCommand::kHashEnd, 0},       {CtrlCommand::kCancelTpmCmd, 0},
      {CtrlCommand::kStoreVolatile, 0}, {CtrlCommand::kResetTpmEstablished, 4},
      {CtrlCommand::kGetStateBlob, 12}, {CtrlCommand::kStop, 0},
      {CtrlCommand::kGetConfig, 0},     {CtrlCommand::kSetDataFd, 0},
      {CtrlCommand::kSetBufferSize, 4}, {CtrlCommand::kGetInfo, 16},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(CtrlCommandName(static_cast<uint32_t>(c.cmd)));
    auto bytes = Request(c.cmd, std::vector<uint8_t>(c.body, 0xAB));
    // A following request must not be swallowed.
    auto next = Request(CtrlCommand::kGetCapability);
    bytes.insert(bytes.end(), next.begin(), next.end());
    auto r = ParseCtrlRequest(bytes);
    ASSERT_EQ(r.kind, Kind::kRequest);
    EXPECT_TRUE(r.request.known);
    EXPECT_EQ(r.request.code, static_cast<uint32_t>(c.cmd));
    EXPECT_EQ(r.request.size, 4 + c.body);
    EXPECT_EQ(FixedRequestBodySize(static_cast<uint32_t>(c.cmd)), c.body);
  }
}

TEST(CtrlProtocolTest, InitFlagsAreDecoded) {
  auto r = ParseCtrlRequest(Request(CtrlCommand::kInit, Be32(1)));
  ASSERT_EQ(r.kind, Kind::kRequest);
  ASSERT_TRUE(r.request.init_flags.has_value());
  EXPECT_EQ(*r.request.init_flags, 1u);
}

TEST(CtrlProtocolTest, EveryPrefixOfARequestNeedsMore) {
  std::vector<std::vector<uint8_t>> requests = {
      Request(CtrlCommand::kInit, Be32(0)),
      Request(CtrlCommand::kGetInfo, std::vector<uint8_t>(16, 1)),
      SetStateBlob(2, 1, std::vector<uint8_t>(100, 7)),
      Request(CtrlCommand::kHashData,
              [] {
                auto b = Be32(5);
                b.insert(b.end(), {1, 2, 3, 4, 5});
                return b;
              }()),
  };
  for (const auto& req : requests) {
    for (size_t len = 0; len < req.size(); ++len) {
      auto r = ParseCtrlRequest(std::span<const uint8_t>(req.data(), len));
      ASSERT_EQ(r.kind, Kind::kNeedMore) << "prefix " << len << " of " << req.size();
      EXPECT_GT(r.needed, len);
      EXPECT_LE(r.needed, req.size());
    }
    auto r = ParseCtrlRequest(req);
    ASSERT_EQ(r.kind, Kind::kRequest);
    EXPECT_EQ(r.request.size, req.size());
  }
}

TEST(CtrlProtocolTest, SetStateBlobHeaderAndLength) {
  auto req = SetStateBlob(2, 3, std::vector<uint8_t>(3000, 9));
  auto r = ParseCtrlRequest(req);
  ASSERT_EQ(r.kind, Kind::kRequest);
  ASSERT_TRUE(r.request.state_blob.has_value());
  EXPECT_EQ(r.request.state_blob->state_flags, 2u);
  EXPECT_EQ(r.request.state_blob->blob_type, 3u);
  EXPECT_EQ(r.request.state_blob->length, 3000u);
  EXPECT_EQ(r.request.size, 4u + 12u + 3000u);

  // The header alone tells the full size wanted.
  auto head = ParseCtrlRequest(std::span<const uint8_t>(req.data(), 16));
  ASSERT_EQ(head.kind, Kind::kNeedMore);
  EXPECT_EQ(head.needed, req.size());
}

// QEMU carries blobs that swtpm encrypted with the migration key: the flag is in swtpm's own
// header at the start of the data (PTM_STATE_FLAG_ENCRYPTED is then 0).
TEST(CtrlProtocolTest, SwtpmBlobHeaderFlagsAreRead) {
  std::vector<uint8_t> data = {2, 1, 0, 10, 0x00, 0x16, 0, 0, 0, 40};  // version 2, flags 0x16
  data.resize(40, 7);
  auto r = ParseCtrlRequest(SetStateBlob(0, 1, data));
  ASSERT_EQ(r.kind, Kind::kRequest);
  EXPECT_EQ(r.request.state_blob->swtpm_blob_flags, 0x16u);
  auto short_blob = ParseCtrlRequest(SetStateBlob(0, 1, {2, 1, 0, 10}));
  ASSERT_EQ(short_blob.kind, Kind::kRequest);
  EXPECT_EQ(short_blob.request.state_blob->swtpm_blob_flags, 0u);
}

TEST(CtrlProtocolTest, EmptyStateBlobIsJustTheHeader) {
  auto r = ParseCtrlRequest(SetStateBlob(0, 1, {}));
  ASSERT_EQ(r.kind, Kind::kRequest);
  EXPECT_EQ(r.request.size, 16u);
  EXPECT_EQ(r.request.state_blob->state_flags, 0u);
}

TEST(CtrlProtocolTest, OversizedLengthsAreMalformed) {
  std::vector<uint8_t> req = Request(CtrlCommand::kSetStateBlob);
  for (uint32_t v : {2u, 1u, kMaxCtrlPayload + 1}) {
    auto b = Be32(v);
    req.insert(req.end(), b.begin(), b.end());
  }
  auto r = ParseCtrlRequest(req);
  EXPECT_EQ(r.kind, Kind::kMalformed);
  EXPECT_NE(r.error.find("SET_STATEBLOB"), std::string::npos);

  auto hash = Request(CtrlCommand::kHashData, Be32(0xffffffff));
  EXPECT_EQ(ParseCtrlRequest(hash).kind, Kind::kMalformed);
}

TEST(CtrlProtocolTest, UnknownCommandTakesEverythingBuffered) {
  std::vector<uint8_t> req = Be32(0x1234);
  req.insert(req.end(), {1, 2, 3});
  auto r = ParseCtrlRequest(req);
  ASSERT_EQ(r.kind, Kind::kRequest);
  EXPECT_FALSE(r.request.known);
  EXPECT_EQ(r.request.size, req.size());
  EXPECT_EQ(CtrlCommandName(0x1234), "UNKNOWN(0x00001234)");
  EXPECT_FALSE(ParseCtrlRequest(Be32(0)).request.known);
}

TEST(CtrlProtocolTest, NamesOfKnownCommands) {
  EXPECT_EQ(CtrlCommandName(1), "GET_CAPABILITY");
  EXPECT_EQ(CtrlCommandName(0x0d), "SET_STATEBLOB");
  EXPECT_EQ(CtrlCommandName(0x10), "SET_DATAFD");
  EXPECT_EQ(CtrlCommandName(0x12), "GET_INFO");
}

TEST(CtrlProtocolTest, RandomGarbageNeverBreaksTheContract) {
  std::mt19937 rng(1234);
  for (int round = 0; round < 20000; ++round) {
    std::vector<uint8_t> bytes(rng() % 64);
    for (auto& b : bytes) b = static_cast<uint8_t>(rng());
    // Bias towards known codes so the length paths are exercised.
    if (bytes.size() >= 4 && (round & 1)) {
      bytes[0] = bytes[1] = bytes[2] = 0;
      bytes[3] = static_cast<uint8_t>(rng() % 0x14);
    }
    auto r = ParseCtrlRequest(bytes);
    switch (r.kind) {
      case Kind::kRequest:
        ASSERT_GE(r.request.size, 4u);
        ASSERT_LE(r.request.size, bytes.size());
        break;
      case Kind::kNeedMore:
        ASSERT_GT(r.needed, bytes.size());
        break;
      case Kind::kMalformed:
        ASSERT_FALSE(r.error.empty());
        break;
    }
  }
}

// The command line and swtpm's argv are part of the contract with vtmd.
TEST(InstanceCommandLineTest, ParsesTheFullContract) {
  auto c = ParseCommandLine({"--vm",
                             "0f8fad5b-d9cb-469f-a165-70867728950e",
                             "--tpm-state-dir",
                             "/s",
                             "--run-dir",
                             "/r",
                             "--log-dir",
                             "/l",
                             "--uid",
                             "61234",
                             "--gid",
                             "61235",
                             "--socket-uid",
                             "107",
                             "--socket-gid",
                             "108",
                             "--socket-mode",
                             "0660",
                             "--keys-fd",
                             "5",
                             "--ready-fd",
                             "6",
                             "--swtpm",
                             "/usr/bin/swtpm"});
  ASSERT_TRUE(c.ok()) << c.error().ToString();
  EXPECT_EQ(c->uid, 61234u);
  EXPECT_EQ(c->gid, 61235u);
  EXPECT_EQ(c->socket_uid, 107u);
  EXPECT_EQ(c->socket_mode, 0660u);
  EXPECT_EQ(c->keys_fd, 5);
  EXPECT_EQ(c->ready_fd, 6);
  EXPECT_EQ(c->TpmSocketPath(), "/r/tpm.sock");

  auto argv = BuildSwtpmArgv(*c, 3, 4);
  std::string joined;
  for (const auto& a : argv) joined += a + " ";
  EXPECT_NE(joined.find("--key fd=3,mode=aes-256-cbc,format=binary"), std::string::npos) << joined;
  EXPECT_NE(joined.find("--migration-key fd=4,mode=aes-256-cbc,format=binary"), std::string::npos);
  EXPECT_NE(joined.find("--ctrl type=unixio,path=/r/swtpm-ctrl.sock,mode=0600"), std::string::npos);
  EXPECT_EQ(joined.find("--flags"), std::string::npos) << "QEMU sends INIT; no startup flags";
}

TEST(InstanceCommandLineTest, RejectsBadInput) {
  std::vector<std::string> base = {"--vm",  "abc", "--tpm-state-dir", "/s", "--run-dir", "/r", "--log-dir",  "/l",
                                   "--uid", "1",   "--gid",           "1",  "--keys-fd", "5",  "--ready-fd", "6"};
  EXPECT_TRUE(ParseCommandLine(base).ok());
  auto with = [&](std::vector<std::string> extra) {
    auto a = base;
    a.insert(a.end(), extra.begin(), extra.end());
    return ParseCommandLine(a);
  };
  EXPECT_FALSE(with({"--run-dir", "relative"}).ok());
  EXPECT_FALSE(with({"--tpm-state-dir", "/a,b"}).ok());
  EXPECT_FALSE(with({"--uid", "-1"}).ok());
  EXPECT_FALSE(with({"--socket-mode", "999"}).ok());
  EXPECT_FALSE(with({"--bogus", "1"}).ok());
  EXPECT_FALSE(with({"--vm", "x; rm"}).ok());
  EXPECT_FALSE(with({"--run-dir", "/" + std::string(120, 'r')}).ok());
  EXPECT_FALSE(with({"--ready-fd", "5"}).ok());  // same as keys fd
  EXPECT_FALSE(ParseCommandLine({"--vm"}).ok());
}

}  // namespace
}  // namespace vtm::instance

namespace vtm::instance {
namespace {

// vtmd builds the command line with ToCommandLine, vtm-instance parses it: one contract.
TEST(InstanceCommandLineTest, ToCommandLineRoundTripsThroughTheParser) {
  InstanceConfig c;
  c.vm_uuid = "6f1b2e6c-0a1b-4c2d-8e3f-00112233aabb";
  c.tpm_state_dir = "/var/lib/vtm/vms/x/tpm";
  c.run_dir = "/run/vtm/vms/x";
  c.log_dir = "/var/lib/vtm/vms/x/log";
  c.uid = 500000001;
  c.gid = 500000002;
  c.socket_uid = 64055;
  c.socket_gid = 108;
  c.socket_mode = 0660;
  c.keys_fd = 3;
  c.ready_fd = 4;
  c.swtpm_path = "/usr/bin/swtpm";
  c.seccomp = false;
  c.log_level = LogLevel::kDebug;
  c.manager_socket = "/run/vtm/manager/x.sock";
  c.incoming = true;
  c.peer_check = PeerCheckMode::kRequire;
  auto back = ParseCommandLine(ToCommandLine(c));
  ASSERT_TRUE(back.ok()) << back.error().ToString();
  EXPECT_EQ(back->vm_uuid, c.vm_uuid);
  EXPECT_EQ(back->tpm_state_dir, c.tpm_state_dir);
  EXPECT_EQ(back->run_dir, c.run_dir);
  EXPECT_EQ(back->log_dir, c.log_dir);
  EXPECT_EQ(back->uid, c.uid);
  EXPECT_EQ(back->gid, c.gid);
  EXPECT_EQ(back->socket_uid, c.socket_uid);
  EXPECT_EQ(back->socket_gid, c.socket_gid);
  EXPECT_EQ(back->socket_mode, c.socket_mode);
  EXPECT_EQ(back->keys_fd, c.keys_fd);
  EXPECT_EQ(back->ready_fd, c.ready_fd);
  EXPECT_EQ(back->swtpm_path, c.swtpm_path);
  EXPECT_EQ(back->seccomp, c.seccomp);
  EXPECT_EQ(back->log_level, c.log_level);
  EXPECT_EQ(back->manager_socket, c.manager_socket);
  EXPECT_EQ(back->incoming, c.incoming);
  EXPECT_EQ(back->peer_check, c.peer_check);
}


// The relay's policy on its own (relay_policy.h).
CtrlRequest StateBlobRequest(uint32_t flags, uint32_t type) {
  CtrlRequest r;
  r.code = static_cast<uint32_t>(CtrlCommand::kSetStateBlob);
  r.known = true;
  r.state_blob = StateBlobHeader{flags, type, 16};
  return r;
}
CtrlRequest Plain(CtrlCommand cmd) {
  CtrlRequest r;
  r.code = static_cast<uint32_t>(cmd);
  r.known = true;
  return r;
}

TEST(RelayPolicyTest, UnencryptedStateBlobIsRefusedInEveryMode) {
  for (RelayMode mode : {RelayMode::kActive, RelayMode::kIncoming, RelayMode::kFenced}) {
    RelayPolicyState s;
    s.mode = mode;
    s.incoming_admitted = true;
    auto refusal = CheckRequest(StateBlobRequest(0, kBlobTypePermanent), s);
    ASSERT_TRUE(refusal.has_value()) << RelayModeName(mode);
    EXPECT_NE(refusal->tpm_result, 0u);
    EXPECT_EQ(refusal->response_size, 4u);
  }
  RelayPolicyState active;
  EXPECT_FALSE(CheckRequest(StateBlobRequest(kStateFlagEncrypted, kBlobTypePermanent), active).has_value());
  auto r = CheckRequest(StateBlobRequest(1, kBlobTypeVolatile), active);
  ASSERT_TRUE(r.has_value());
  EXPECT_NE(r->reason.find("not encrypted"), std::string::npos);
  // What QEMU sends: no PTM flag, swtpm's header says encrypted with the migration key.
  auto migration_encrypted = StateBlobRequest(0, kBlobTypePermanent);
  migration_encrypted.state_blob->swtpm_blob_flags = kBlobFlagMigrationEncrypted | 0x10;
  EXPECT_FALSE(CheckRequest(migration_encrypted, active).has_value());
  // swtpm's header flags without the migration-key flag (plain, or state-key flag alone): refused.
  auto plain_header = StateBlobRequest(0, kBlobTypePermanent);
  plain_header.state_blob->swtpm_blob_flags = 0x04 | 0x01;
  EXPECT_TRUE(CheckRequest(plain_header, active).has_value());
}

TEST(RelayPolicyTest, IncomingNeedsAdmissionThenPermanentStateBeforeInit) {
  RelayPolicyState s;
  s.mode = RelayMode::kIncoming;
  EXPECT_TRUE(CheckRequest(StateBlobRequest(kStateFlagEncrypted, kBlobTypePermanent), s).has_value());
  EXPECT_TRUE(CheckRequest(Plain(CtrlCommand::kInit), s).has_value());
  EXPECT_FALSE(CheckRequest(Plain(CtrlCommand::kStop), s).has_value());
  EXPECT_FALSE(CheckRequest(Plain(CtrlCommand::kGetCapability), s).has_value());
  s.incoming_admitted = true;
  auto blob = StateBlobRequest(kStateFlagEncrypted, kBlobTypePermanent);
  ASSERT_FALSE(CheckRequest(blob, s).has_value());
  RecordPassed(blob, &s);
  EXPECT_EQ(s.imported_blob_types, 1u << kBlobTypePermanent);
  auto init = Plain(CtrlCommand::kInit);
  ASSERT_FALSE(CheckRequest(init, s).has_value());
  RecordPassed(init, &s);
  EXPECT_EQ(s.mode, RelayMode::kActive);
}

TEST(RelayPolicyTest, FencedRefusesInitAndStateExportWithTheSizesQemuReads) {
  RelayPolicyState s;
  s.mode = RelayMode::kFenced;
  auto init = CheckRequest(Plain(CtrlCommand::kInit), s);
  ASSERT_TRUE(init.has_value());
  EXPECT_EQ(RefusalResponse(*init).size(), 4u);
  auto get = CheckRequest(Plain(CtrlCommand::kGetStateBlob), s);
  ASSERT_TRUE(get.has_value());
  std::string answer = RefusalResponse(*get);
  ASSERT_EQ(answer.size(), 16u);  // ptm_getstate's response header
  EXPECT_EQ(static_cast<uint8_t>(answer[3]), kTpmFail);
  EXPECT_FALSE(CheckRequest(Plain(CtrlCommand::kGetTpmEstablished), s).has_value());
  RelayPolicyState active;
  EXPECT_FALSE(CheckRequest(Plain(CtrlCommand::kGetStateBlob), active).has_value());
  EXPECT_FALSE(CheckRequest(Plain(CtrlCommand::kInit), active).has_value());
}

}  // namespace
}  // namespace vtm::instance
