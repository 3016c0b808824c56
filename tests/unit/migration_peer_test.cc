// What a destination vtmd accepts from a migration peer before any step runs: ParsePeerRequest
// (one step; UUIDs, names, IDs, nonces and sizes within bounds, each refusal saying what) and
// MigrationPeerHost (only a vtmd migration certificate is a peer). Also keeps the fuzzer's seeds
// (fuzz/corpus/migration_request_fuzzer) current: VTM_WRITE_FUZZ_SEEDS=1 rewrites them.
#include <gtest/gtest.h>

#include <cstdlib>
#include <ctime>

#include "migration_peer.h"
#include "test_env.h"
#include "vtm/fs.h"
#include "vtm/x509.h"

namespace vtm {
namespace {

migration_api::PeerRequest Prepare() {
  migration_api::PeerRequest r;
  auto* p = r.mutable_prepare();
  p->set_vm_uuid("0d6f3b1e-7c2a-4b8e-9f10-2233445566aa");
  p->set_generation(7);
  p->set_source_nonce(std::string(32, 'n'));
  p->set_mode("live");
  p->set_vm_name("web-1");
  return r;
}

std::string RefusalOf(const migration_api::PeerRequest& r) {
  auto parsed = ParsePeerRequest(r.SerializeAsString());
  return parsed.ok() ? "" : parsed.error().message();
}

TEST(MigrationPeerTest, WellFormedStepsParse) {
  EXPECT_TRUE(ParsePeerRequest(Prepare().SerializeAsString()).ok());
  migration_api::PeerRequest t;
  t.mutable_transfer()->set_migration_id("mig-0123abcd");
  t.mutable_transfer()->set_sealed_package("package");
  EXPECT_TRUE(ParsePeerRequest(t.SerializeAsString()).ok());
  migration_api::PeerRequest c;
  c.mutable_commit()->set_migration_id("mig-0123abcd");
  EXPECT_TRUE(ParsePeerRequest(c.SerializeAsString()).ok());
}

TEST(MigrationPeerTest, MalformedRequestsAreRefusedSayingWhat) {
  EXPECT_NE(ParsePeerRequest("\xff\xff garbage").error().message().find("malformed"), std::string::npos);
  EXPECT_NE(ParsePeerRequest("").error().message().find("names no step"), std::string::npos);
  auto bad_uuid = Prepare();
  bad_uuid.mutable_prepare()->set_vm_uuid("../../etc");
  EXPECT_NE(RefusalOf(bad_uuid).find("not a UUID"), std::string::npos);
  auto no_generation = Prepare();
  no_generation.mutable_prepare()->set_generation(0);
  EXPECT_NE(RefusalOf(no_generation).find("generation"), std::string::npos);
  auto short_nonce = Prepare();
  short_nonce.mutable_prepare()->set_source_nonce("abc");
  EXPECT_NE(RefusalOf(short_nonce).find("nonce"), std::string::npos);
  auto mode = Prepare();
  mode.mutable_prepare()->set_mode("teleport");
  EXPECT_NE(RefusalOf(mode).find("live or cold"), std::string::npos);
  auto name = Prepare();
  name.mutable_prepare()->set_vm_name("a/b");
  EXPECT_FALSE(RefusalOf(name).empty());
  migration_api::PeerRequest id;
  id.mutable_commit()->set_migration_id("MIG/../x");
  EXPECT_NE(RefusalOf(id).find("migration ID"), std::string::npos);
  migration_api::PeerRequest empty_package;
  empty_package.mutable_transfer()->set_migration_id("mig-1");
  EXPECT_NE(RefusalOf(empty_package).find("no sealed package"), std::string::npos);
}

TEST(MigrationPeerTest, OnlyVtmdMigrationCertificatesArePeers) {
  testing::TempDir dir;
  const std::string p = dir.path() + "/";
  testing::MakeTestCa(dir.path(), "fleet");
  auto issue = [&](const std::string& name, const std::string& cn, const std::string& uri) {
    EXPECT_TRUE(WriteFileAtomic(p + name + ".ext", "subjectAltName=URI:" + uri + "\n", 0644).ok());
    testing::RunCommand({"openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout",
                         p + name + ".key", "-out", p + name + ".csr", "-subj", "/CN=" + cn + "/O=vtm"});
    testing::RunCommand({"openssl", "x509", "-req", "-in", p + name + ".csr", "-CA", p + "fleet.pem", "-CAkey",
                         p + "fleet.key", "-CAcreateserial", "-out", p + name + ".pem", "-days", "2", "-extfile",
                         p + name + ".ext"});
    return *ReadFile(p + name + ".pem");
  };
  auto host = MigrationPeerHost(*ca::CertificateToDer(issue("vtmd", "host-b vtmd migration", "vtm:host:host-b")));
  ASSERT_TRUE(host.ok()) << host.error().ToString();
  EXPECT_EQ(*host, "host-b");
  // An attestation endpoint of the same host, a VM's IK, a certificate naming another host.
  for (const auto& [cn, uri] : std::vector<std::pair<std::string, std::string>>{
           {"host-b vtmd attestation", "vtm:host:host-b"},
           {"web", "urn:uuid:0d6f3b1e-7c2a-4b8e-9f10-2233445566aa"},
           {"host-c vtmd migration", "vtm:host:host-b"}}) {
    auto refused = MigrationPeerHost(*ca::CertificateToDer(issue("other", cn, uri)));
    ASSERT_FALSE(refused.ok()) << cn;
    EXPECT_EQ(refused.error().code(), ErrorCode::kPermissionDenied);
  }
  EXPECT_FALSE(MigrationPeerHost("not a certificate").ok());
}

TEST(MigrationPeerTest, FuzzSeedsAreCurrent) {
  const std::string dir = std::string(VTM_SOURCE_DIR) + "/fuzz/corpus/migration_request_fuzzer/";
  migration_api::PeerRequest transfer;
  transfer.mutable_transfer()->set_migration_id("mig-0123abcd");
  transfer.mutable_transfer()->set_sealed_package("package");
  auto* cert = transfer.mutable_transfer()->add_certificates();
  cert->set_kind("ek-ecc");
  cert->set_pem("-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n");
  migration_api::PeerRequest commit;
  commit.mutable_commit()->set_migration_id("mig-0123abcd");
  migration_api::PeerRequest abort;
  abort.mutable_abort()->set_migration_id("mig-0123abcd");
  abort.mutable_abort()->set_reason("operator");
  const std::pair<const char*, std::string> seeds[] = {{"prepare", Prepare().SerializeAsString()},
                                                      {"transfer", transfer.SerializeAsString()},
                                                      {"commit", commit.SerializeAsString()},
                                                      {"abort", abort.SerializeAsString()}};
  if (std::getenv("VTM_WRITE_FUZZ_SEEDS") != nullptr) {
    for (const auto& [name, bytes] : seeds) ASSERT_TRUE(WriteFileAtomic(dir + name, bytes, 0644).ok());
  }
  for (const auto& [name, bytes] : seeds) {
    auto on_disk = ReadFile(dir + name);
    ASSERT_TRUE(on_disk.ok()) << name;
    EXPECT_TRUE(ParsePeerRequest(*on_disk).ok()) << name;
  }
}

}  // namespace
}  // namespace vtm
