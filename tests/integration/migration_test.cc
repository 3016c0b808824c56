// Sealed migration between two real vtmds on one machine (two simulated host TPMs, two state
// directories, loopback), under one fleet CA that certifies both host CAs: cold migration of a
// stopped vTPM end to end (`vtmctl migrate cold`), the identity it keeps (same EK/AK/IK keys),
// the certificates the destination's CA issues (checked with `openssl verify` up to the fleet
// CA) and writes into the vTPM's NV (read back from its state with tpm2-tools against a
// provisioning swtpm), what the source keeps (a tombstone, revoked certificates in its CRL);
// and the refusals: a destination failing the source's policy, a peer from an untrusted CA, a
// fleet certificate that is no vtmd's, a replayed transfer, a package for another migration,
// a start of the migrated VM on the source, two prepares of one VM at the same moment, and a
// commit while the destination vtmd is down (repeated once it is back).
#include <gtest/gtest.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include <chrono>
#include <fstream>
#include <functional>
#include <regex>
#include <thread>

#include "migration.pb.h"
#include "migration_peer.h"
#include "migration_rig.h"
#include "vtm/framing.h"
#include "vtm/fs.h"
#include "vtm/listener.h"
#include "vtm/tls.h"
#include "vtm/verifier.h"
#include "vtm/x509.h"
#include "vtmd_fixture.h"

namespace vtm::testing {
namespace {

class MigrationTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string error;
    ASSERT_TRUE(rig.SetUp(&error)) << error;
  }
  void TearDown() override {
    if (HasFailure()) std::cerr << rig.Logs();
  }
  std::string P(const std::string& name) const { return rig.P(name); }
  // The migration ID in `vtmctl --json migrate prepare` output; empty if there is none.
  static std::string MigrationIdIn(const std::string& json) {
    std::smatch m;
    return std::regex_search(json, m, std::regex("\"id\": \"(mig-[0-9a-f]+)\"")) ? m[1].str() : std::string();
  }
  std::string Pubkey(VtmdFixture& f, const std::string& vm, const std::string& kind) {
    return f.CertificatePublicKeyPem(vm, kind);
  }
  // Creates VM `name` on the source and migrates it cold to the destination up to `sent`; the
  // migration's ID (empty if a step failed).
  std::string PrepareAndSend(const std::string& name) {
    EXPECT_EQ(a.Vtmctl({"create", "--name", name}).exit_code, 0);
    auto prepared = a.Vtmctl({"--json", "migrate", "prepare", name, "--to", destination, "--cold"});
    const std::string id = MigrationIdIn(prepared.output);
    EXPECT_FALSE(id.empty()) << prepared.output;
    auto sent = a.Vtmctl({"migrate", "send", id});
    EXPECT_EQ(sent.exit_code, 0) << sent.output;
    return id;
  }
  // `vtmctl migrate commit ID --on-stdin` on the source, its stdin a fifo: once it said "ready"
  // (vtmd has opened the channel to the destination) before_cue runs, then the cue follows. Its
  // output: stdout, then stderr. No cue if it ended without "ready" (the write would raise
  // SIGPIPE). before_cue has until vtmctl's next keep-alive (5 s), which would replace the channel.
  CommandResult CommitOnCueAfter(const std::string& id, const std::function<void()>& before_cue) {
    const std::string cue = P(id + ".cue");
    const std::string said = P(id + ".stdout");
    EXPECT_EQ(mkfifo(cue.c_str(), 0600), 0);
    CommandResult cued;
    std::thread commit([&] {
      cued = RunCommand({"sh", "-c", "exec \"$0\" --socket \"$1\" migrate commit \"$2\" --on-stdin < \"$3\" > \"$4\"",
                         BuildPath("vtm-manager/vtmctl"), a.socket(), id, cue, said});
    });
    {
      std::ofstream to_vtmctl(cue);  // opens once vtmctl's shell opened the other end
      bool ready = false;
      const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
      while (!ready && std::chrono::steady_clock::now() < deadline) {
        auto out = ReadFile(said);
        ready = out.ok() && out->find("ready") != std::string::npos;
        if (!ready) std::this_thread::sleep_for(std::chrono::milliseconds(20));
      }
      if (ready) {
        before_cue();
        to_vtmctl << "commit" << std::endl;
      }
    }
    commit.join();
    auto out = ReadFile(said);
    cued.output = (out.ok() ? *out : std::string()) + cued.output;
    return cued;
  }

  MigrationRig rig;
  VtmdFixture& a = rig.a;
  VtmdFixture& b = rig.b;
  const std::string& destination = rig.destination;
};

TEST_F(MigrationTest, ColdMigrationMovesTheVtpmWithItsKeysAndRecertifiesIt) {
  ASSERT_EQ(a.Vtmctl({"create", "--name", "vm1", "--service", "web"}).exit_code, 0);
  const std::string uuid = Field(a.Vtmctl({"show", "vm1"}).output, "uuid");
  const std::string ek_before = Pubkey(a, "vm1", "ek-ecc");
  const std::string ak_before = Pubkey(a, "vm1", "ak");
  const std::string ik_before = Pubkey(a, "vm1", "ik");
  auto old_ik = ca::ParseCertificate(a.Vtmctl({"certs", "vm1", "--kind", "ik"}).output);
  ASSERT_TRUE(old_ik.ok());

  auto moved = a.Vtmctl({"migrate", "cold", "vm1", "--to", destination});
  ASSERT_EQ(moved.exit_code, 0) << moved.output;
  EXPECT_NE(moved.output.find("state:         committed"), std::string::npos) << moved.output;

  // The source: nothing left but the tombstone; a start of the VM is refused with where it went.
  auto gone = a.Vtmctl({"show", uuid});
  EXPECT_EQ(gone.exit_code, 3) << gone.output;
  EXPECT_NE(gone.output.find("migrated from this host to host-b"), std::string::npos) << gone.output;
  auto start_here = a.Vtmctl({"start", uuid});
  EXPECT_EQ(start_here.exit_code, 3) << start_here.output;
  EXPECT_FALSE(PathExists(a.state_dir() + "/vms/" + uuid));
  auto create_again = a.Vtmctl({"create", "--uuid", uuid});
  EXPECT_EQ(create_again.exit_code, 4) << create_again.output;
  // Its certificates are revoked in the source CA's CRL.
  ASSERT_TRUE(WriteFileAtomic(P("a-crl.pem"), a.Vtmctl({"ca", "crl"}).output, 0644).ok());
  auto crl = RunCommand({"openssl", "crl", "-in", P("a-crl.pem"), "-noout", "-text"});
  EXPECT_NE(crl.output.find("Serial Number: " + old_ik->serial_hex), std::string::npos) << crl.output;

  // The destination: stopped, same keys, certified by host-b's CA under the fleet CA.
  auto shown = b.Vtmctl({"show", uuid});
  ASSERT_EQ(shown.exit_code, 0) << shown.output;
  EXPECT_EQ(Field(shown.output, "state"), "stopped");
  EXPECT_EQ(Pubkey(b, uuid, "ek-ecc"), ek_before);
  EXPECT_EQ(Pubkey(b, uuid, "ak"), ak_before);
  EXPECT_EQ(Pubkey(b, uuid, "ik"), ik_before);
  auto certs = b.Vtmctl({"certs", uuid, "--kind", "ik"});
  ASSERT_TRUE(WriteFileAtomic(P("new-ik.pem"), certs.output, 0644).ok());
  auto verified = RunCommand({"openssl", "verify", "-CAfile", P("fleet.pem"), "-untrusted", P("b-ca.pem"), P("new-ik.pem")});
  EXPECT_EQ(verified.exit_code, 0) << verified.output;
  auto not_under_a = RunCommand({"openssl", "verify", "-CAfile", P("fleet.pem"), "-untrusted", P("a-ca.pem"),
                                 "-partial_chain", "-trusted", P("a-ca.pem"), P("new-ik.pem")});
  EXPECT_NE(not_under_a.exit_code, 0) << not_under_a.output;

  // Its first start here writes the new certificates into the vTPM's NV, then runs it.
  auto started = b.Vtmctl({"start", uuid});
  ASSERT_EQ(started.exit_code, 0) << started.output;
  EXPECT_NE(b.VtmdLog().find("certificates of this host's CA into its vTPM's NV"), std::string::npos);
  auto status = b.Vtmctl({"migrate", "status"});
  EXPECT_NE(status.output.find("committed"), std::string::npos) << status.output;
  ASSERT_EQ(b.Vtmctl({"stop", "--force", uuid}).exit_code, 0);
}

TEST_F(MigrationTest, DestinationFailingThePolicyIsRefusedAndNothingChanges) {
  // A policy that names another TPM manufacturer: b's EK certificate does not chain to it.
  auto policy = attest::ParsePolicyJson(*ReadFile(P("policy.json")));
  ASSERT_TRUE(policy.ok());
  policy->clear_host_ek_ca_pem();
  MakeTestCa(rig.dir.path(), "other-manufacturer");
  policy->add_host_ek_ca_pem(*ReadFile(P("other-manufacturer.pem")));
  policy->clear_activated_host_ak_names();
  ASSERT_TRUE(WriteFileAtomic(P("strict.json"), attest::PolicyToJson(*policy), 0644).ok());
  std::string error;
  ASSERT_TRUE(rig.RestartSource(P("strict.json"), &error)) << error;
  ASSERT_EQ(a.Vtmctl({"create", "--name", "vm2"}).exit_code, 0);
  auto refused = a.Vtmctl({"migrate", "prepare", "vm2", "--to", destination, "--cold"});
  EXPECT_EQ(refused.exit_code, 5) << refused.output;
  EXPECT_NE(refused.output.find("failed attestation"), std::string::npos) << refused.output;
  EXPECT_EQ(Field(a.Vtmctl({"show", "vm2"}).output, "state"), "provisioned");
  EXPECT_EQ(b.Vtmctl({"show", "vm2"}).exit_code, 3);
  // The destination dropped what it prepared.
  auto there = b.Vtmctl({"migrate", "status"});
  EXPECT_EQ(there.output.find("prepared"), std::string::npos) << there.output;
}

TEST_F(MigrationTest, PeersOtherThanFleetVtmdsAreRefused) {
  // A certificate from a CA outside the fleet: refused at the handshake.
  MakeTestCa(rig.dir.path(), "rogue-ca");
  IssueTestCertificate(rig.dir.path(), "rogue", "rogue-ca");
  auto rogue = ReadTlsCredentialFiles(P("rogue.pem"), P("rogue.key"), P("fleet.pem"));
  ASSERT_TRUE(rogue.ok());
  auto c1 = MigrationPeerClient::Connect(destination, *rogue, std::chrono::seconds(20));
  if (c1.ok()) {
    migration_api::PeerRequest req;
    req.mutable_status()->set_migration_id("mig-x");
    EXPECT_FALSE((*c1)->Call(req).ok());
  }
  // A fleet certificate that is not a vtmd's migration certificate (a VM's IK chains to the
  // fleet CA too): served nothing.
  auto imposter = rig.FleetPeer("imposter", "vm-service", "urn:uuid:00000000-0000-4000-8000-000000000001");
  auto fd = ConnectTcp(destination);
  ASSERT_TRUE(fd.ok());
  auto ctx = TlsContext::Create(TlsContext::Role::kClient, imposter);
  ASSERT_TRUE(ctx.ok());
  auto tls = (*ctx)->Connect(std::move(fd).value(), std::chrono::seconds(20));
  ASSERT_TRUE(tls.ok()) << tls.error().ToString();
  migration_api::PeerRequest req;
  req.mutable_status()->set_migration_id("mig-x");
  ASSERT_TRUE(WriteFrame(**tls, req.SerializeAsString()).ok());
  auto frame = ReadFrame(**tls);
  ASSERT_TRUE(frame.ok());
  migration_api::PeerResponse resp;
  ASSERT_TRUE(resp.ParseFromString(*frame));
  EXPECT_EQ(resp.status(), api::STATUS_PERMISSION_DENIED);
  EXPECT_NE(resp.error().find("not a vtmd migration certificate"), std::string::npos) << resp.error();
}

// A fleet CA rotation of a host CA key (`vtmctl ca rotate`, the fleet's certificate for the new
// key, `vtmctl ca install`) switches vtmd's migration identity in place, with no restart: the
// destination's endpoint presents a certificate of its new key to new connections (so the
// source's channel binding, the endpoint's certificate issued by the host CA in the
// destination's evidence, holds and a migration goes through), and the source presents one of
// its new key when it connects to a peer.
TEST_F(MigrationTest, AfterHostCaKeyRotationsBothPeersPresentCertificatesOfTheNewKeysWithoutARestart) {
  auto rotate = [&](VtmdFixture& host, const std::string& tag) {
    auto begun = host.Vtmctl({"ca", "rotate"});
    ASSERT_EQ(begun.exit_code, 0) << begun.output;
    ASSERT_TRUE(WriteFileAtomic(P(tag + "-next.csr"), begun.output, 0644).ok());
    auto signed_by_fleet = RunCommand({"openssl", "x509", "-req", "-in", P(tag + "-next.csr"), "-CA", P("fleet.pem"),
                                       "-CAkey", P("fleet.key"), "-CAcreateserial", "-out", P(tag + "-next-ca.pem"),
                                       "-days", "90", "-extfile", P("ca-ext.cnf"), "-copy_extensions", "copy"});
    ASSERT_EQ(signed_by_fleet.exit_code, 0) << signed_by_fleet.output;
    auto installed = host.Vtmctl({"ca", "install", P(tag + "-next-ca.pem"), P("fleet.pem")});
    ASSERT_EQ(installed.exit_code, 0) << installed.output;
    EXPECT_NE(installed.output.find("vtmd's migration endpoint presents TLS certificates of the new key"),
              std::string::npos)
        << installed.output;
    EXPECT_EQ(installed.output.find("estart vtmd"), std::string::npos) << installed.output;
  };
  // Whether the certificate (DER) chains to the fleet CA through the host CA certificate at ca_pem.
  auto chains_through = [&](const std::string& der, const std::string& ca_pem) {
    EXPECT_TRUE(WriteFileAtomic(P("presented.pem"), ca::DerToPem(der), 0644).ok());
    return RunCommand({"openssl", "verify", "-CAfile", P("fleet.pem"), "-untrusted", P(ca_pem), P("presented.pem")})
               .exit_code == 0;
  };
  // What the destination's endpoint presents to a new connection (a fleet client of the test's).
  const TlsCredentials probe = rig.FleetPeer("probe", "probe vtmd migration", "vtm:host:probe");
  auto presented_by_destination = [&]() -> std::string {
    auto ctx = TlsContext::Create(TlsContext::Role::kClient, probe);
    auto fd = ConnectTcp(destination);
    if (!ctx.ok() || !fd.ok()) return "";
    auto tls = (*ctx)->Connect(std::move(fd).value(), std::chrono::seconds(20));
    return tls.ok() ? (*tls)->peer_certificate_der() : std::string();
  };

  const std::string b_before = presented_by_destination();
  ASSERT_TRUE(chains_through(b_before, "b-ca.pem"));
  rotate(b, "b");
  if (HasFatalFailure()) return;
  const std::string b_after = presented_by_destination();
  EXPECT_NE(b_after, b_before);
  EXPECT_TRUE(chains_through(b_after, "b-next-ca.pem")) << "the destination presents a certificate of its new key";
  EXPECT_FALSE(chains_through(b_after, "b-ca.pem"));

  // The source, rotated too, connecting to a listener of the test's making (a fleet "vtmd
  // migration" identity) that keeps the certificate the source presents and hangs up.
  rotate(a, "a");
  if (HasFatalFailure()) return;
  auto server_ctx = TlsContext::Create(TlsContext::Role::kServer,
                                       rig.FleetPeer("fake-b", "fake-b vtmd migration", "vtm:host:fake-b"));
  ASSERT_TRUE(server_ctx.ok()) << server_ctx.error().ToString();
  auto listening = ListenTcp("127.0.0.1:0");
  ASSERT_TRUE(listening.ok()) << listening.error().ToString();
  auto fake_port = BoundTcpPort(listening->get());
  ASSERT_TRUE(fake_port.ok());
  std::string a_presented;
  std::thread taker([&, fd = std::move(listening).value()]() mutable {
    pollfd p{fd.get(), POLLIN, 0};
    if (poll(&p, 1, 60000) != 1) return;
    UniqueFd conn(accept4(fd.get(), nullptr, nullptr, SOCK_CLOEXEC));
    fd.reset();  // a retry of the source is refused at once
    if (!conn.valid()) return;
    auto tls = (*server_ctx)->Accept(std::move(conn), std::chrono::seconds(20));
    if (tls.ok()) a_presented = (*tls)->peer_certificate_der();
  });
  ASSERT_EQ(a.Vtmctl({"create", "--name", "vm6"}).exit_code, 0);
  auto to_fake = a.Vtmctl({"migrate", "prepare", "vm6", "--to", "127.0.0.1:" + std::to_string(*fake_port), "--cold"});
  taker.join();
  EXPECT_NE(to_fake.exit_code, 0) << to_fake.output;
  ASSERT_FALSE(a_presented.empty()) << to_fake.output;
  EXPECT_TRUE(chains_through(a_presented, "a-next-ca.pem")) << "the source presents a certificate of its new key";
  EXPECT_FALSE(chains_through(a_presented, "a-ca.pem"));

  // Both rotated, no restart: a migration between them goes through.
  EXPECT_EQ(Field(a.Vtmctl({"show", "vm6"}).output, "state"), "provisioned");
  auto moved = a.Vtmctl({"migrate", "cold", "vm6", "--to", destination});
  EXPECT_EQ(moved.exit_code, 0) << moved.output;
  EXPECT_NE(moved.output.find("state:         committed"), std::string::npos) << moved.output;
}

TEST_F(MigrationTest, ReplayedOrForeignTransfersAreRefused) {
  ASSERT_EQ(a.Vtmctl({"create", "--name", "vm3"}).exit_code, 0);
  const std::string uuid = Field(a.Vtmctl({"show", "vm3"}).output, "uuid");
  auto prepared = a.Vtmctl({"--json", "migrate", "prepare", "vm3", "--to", destination, "--cold"});
  ASSERT_EQ(prepared.exit_code, 0) << prepared.output;
  const std::string id = MigrationIdIn(prepared.output);
  ASSERT_FALSE(id.empty()) << prepared.output;
  EXPECT_EQ(Field(a.Vtmctl({"show", "vm3"}).output, "state"), "migrating-out");
  // A second prepare of the same VM is refused while this one is open.
  auto twice = a.Vtmctl({"migrate", "prepare", "vm3", "--to", destination, "--cold"});
  EXPECT_EQ(twice.exit_code, 4) << twice.output;

  // Another fleet vtmd (a peer of our own) cannot act on a migration host-a prepared.
  auto other = rig.FleetPeer("host-c", "host-c vtmd migration", "vtm:host:host-c");
  auto c = MigrationPeerClient::Connect(destination, other, std::chrono::seconds(20));
  ASSERT_TRUE(c.ok()) << c.error().ToString();
  migration_api::PeerRequest commit;
  commit.mutable_commit()->set_migration_id(id);
  auto stolen = (*c)->Call(commit);
  ASSERT_FALSE(stolen.ok());
  EXPECT_NE(stolen.error().message().find("prepared for source host-a"), std::string::npos) << stolen.error().message();
  // ... nor hand in a package of its own making for it.
  migration_api::PeerRequest transfer;
  transfer.mutable_transfer()->set_migration_id(id);
  transfer.mutable_transfer()->set_sealed_package("not a package");
  EXPECT_FALSE((*c)->Call(transfer).ok());

  auto sent = a.Vtmctl({"migrate", "send", id});
  ASSERT_EQ(sent.exit_code, 0) << sent.output;
  EXPECT_EQ(Field(b.Vtmctl({"show", uuid}).output, "state"), "incoming");
  // The same step again is not applied twice (send reports what was done).
  auto resent = a.Vtmctl({"migrate", "send", id});
  EXPECT_EQ(resent.exit_code, 0) << resent.output;

  // Abort before commit: the destination destroys what arrived; the source carries on.
  auto aborted = a.Vtmctl({"migrate", "abort", id});
  ASSERT_EQ(aborted.exit_code, 0) << aborted.output;
  EXPECT_EQ(Field(a.Vtmctl({"show", "vm3"}).output, "state"), "provisioned");
  EXPECT_EQ(b.Vtmctl({"show", uuid}).exit_code, 3);
  EXPECT_FALSE(PathExists(b.state_dir() + "/vms/" + uuid));
  // A commit of the aborted migration is refused on both sides.
  EXPECT_EQ(a.Vtmctl({"migrate", "commit", id}).exit_code, 4);
  // And the VM can still be migrated afterwards.
  auto moved = a.Vtmctl({"migrate", "cold", "vm3", "--to", destination});
  EXPECT_EQ(moved.exit_code, 0) << moved.output;
}

TEST_F(MigrationTest, ConcurrentPreparesOfOneVmOpenExactlyOneMigration) {
  ASSERT_EQ(a.Vtmctl({"create", "--name", "vm4"}).exit_code, 0);
  const std::string uuid = Field(a.Vtmctl({"show", "vm4"}).output, "uuid");
  // Two orchestrators prepare the same VM at the same moment.
  CommandResult results[2];
  std::thread racers[2];
  for (int i = 0; i < 2; ++i) {
    racers[i] = std::thread(
        [&, i] { results[i] = a.Vtmctl({"--json", "migrate", "prepare", "vm4", "--to", destination, "--cold"}); });
  }
  for (auto& t : racers) t.join();
  const int winners = (results[0].exit_code == 0) + (results[1].exit_code == 0);
  ASSERT_EQ(winners, 1) << results[0].output << "\n---\n" << results[1].output;
  const CommandResult& won = results[0].exit_code == 0 ? results[0] : results[1];
  const CommandResult& lost = results[0].exit_code == 0 ? results[1] : results[0];
  EXPECT_NE(lost.output.find(uuid), std::string::npos) << "the refusal names the VM: " << lost.output;
  EXPECT_TRUE(lost.output.find("being migrated already") != std::string::npos ||
              lost.output.find("already has migration") != std::string::npos ||
              lost.output.find("in progress") != std::string::npos)
      << lost.output;
  const std::string id = MigrationIdIn(won.output);
  ASSERT_FALSE(id.empty()) << won.output;
  // One migration is open on each side, and it is the winner's.
  auto count = [](const std::string& text, const std::string& what) {
    size_t n = 0;
    for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
    return n;
  };
  const std::string here = a.Vtmctl({"--json", "migrate", "status"}).output;
  EXPECT_EQ(count(here, "\"prepared\""), 1u) << here;
  EXPECT_NE(here.find(id), std::string::npos) << here;
  const std::string there = b.Vtmctl({"--json", "migrate", "status"}).output;
  EXPECT_EQ(count(there, "\"prepared\""), 1u) << there;
  EXPECT_NE(there.find(id), std::string::npos) << there;
  // The winner's migration goes through; nothing of the loser's is left to trip over.
  auto sent = a.Vtmctl({"migrate", "send", id});
  ASSERT_EQ(sent.exit_code, 0) << sent.output;
  auto committed = a.Vtmctl({"migrate", "commit", id});
  ASSERT_EQ(committed.exit_code, 0) << committed.output;
  EXPECT_EQ(Field(b.Vtmctl({"show", uuid}).output, "state"), "stopped");
  EXPECT_EQ(a.Vtmctl({"show", uuid}).exit_code, 3);
}

// Two orchestrators: one commits a sent migration while the other aborts it. One of them wins
// and the other is refused; the migration ends the same on both hosts, and the VM is on exactly
// one of them. Repeated, so both orders (and both overlapping) happen.
TEST_F(MigrationTest, CommitAndAbortAtTheSameMomentSettleOneWay) {
  int committed = 0, aborted = 0;
  for (int round = 0; round < 6; ++round) {
    SCOPED_TRACE("round " + std::to_string(round));
    const std::string name = "race" + std::to_string(round);
    ASSERT_EQ(a.Vtmctl({"create", "--name", name}).exit_code, 0);
    const std::string uuid = Field(a.Vtmctl({"show", name}).output, "uuid");
    auto prepared = a.Vtmctl({"--json", "migrate", "prepare", name, "--to", destination, "--cold"});
    ASSERT_EQ(prepared.exit_code, 0) << prepared.output;
    const std::string id = MigrationIdIn(prepared.output);
    ASSERT_EQ(a.Vtmctl({"migrate", "send", id}).exit_code, 0);
    CommandResult commit, abort;
    std::thread committer([&] { commit = a.Vtmctl({"migrate", "commit", id}); });
    std::thread aborter([&] { abort = a.Vtmctl({"migrate", "abort", id}); });
    committer.join();
    aborter.join();
    ASSERT_NE(commit.exit_code == 0, abort.exit_code == 0) << commit.output << "\n---\n" << abort.output;
    const bool moved = commit.exit_code == 0;
    (moved ? committed : aborted) += 1;
    const std::string state = moved ? "committed" : "aborted";
    EXPECT_EQ(LastMigrationOf(a, uuid).second, state);
    EXPECT_EQ(LastMigrationOf(b, uuid).second, state);
    auto here = a.Vtmctl({"show", uuid});
    auto there = b.Vtmctl({"show", uuid});
    EXPECT_EQ(here.exit_code == 0, !moved) << here.output;
    EXPECT_EQ(there.exit_code == 0, moved) << there.output;
    EXPECT_EQ(Field((moved ? there : here).output, "state"), moved ? "stopped" : "provisioned");
  }
  std::cerr << "commit won " << committed << " times, abort " << aborted << " times\n";
}

TEST_F(MigrationTest, PrepareTheSourceLetExpireIsAbortedAndItsKeyDropped) {
  std::string error;
  ASSERT_TRUE(rig.RestartDestination(&error, true, {"--migration-prepare-ttl", "1"})) << error;
  ASSERT_EQ(a.Vtmctl({"create", "--name", "vm5"}).exit_code, 0);
  const std::string uuid = Field(a.Vtmctl({"show", "vm5"}).output, "uuid");
  auto prepared = a.Vtmctl({"--json", "migrate", "prepare", "vm5", "--to", destination, "--cold"});
  ASSERT_EQ(prepared.exit_code, 0) << prepared.output;
  const std::string id = MigrationIdIn(prepared.output);
  ASSERT_FALSE(id.empty()) << prepared.output;
  std::this_thread::sleep_for(std::chrono::milliseconds(2500));  // past the 1 s TTL (timestamps in seconds)
  auto late = a.Vtmctl({"migrate", "send", id});
  EXPECT_NE(late.exit_code, 0) << late.output;
  EXPECT_NE(late.output.find("expired"), std::string::npos) << late.output;
  EXPECT_NE(b.VtmdLog().find("its import key is dropped"), std::string::npos) << b.VtmdLog();
  auto there = b.Vtmctl({"--json", "migrate", "status"});
  EXPECT_EQ(there.output.find("\"prepared\""), std::string::npos) << there.output;
  EXPECT_EQ(b.Vtmctl({"show", uuid}).exit_code, 3);
  // The source gives up cleanly and keeps its VM.
  auto aborted = a.Vtmctl({"migrate", "abort", id});
  EXPECT_EQ(aborted.exit_code, 0) << aborted.output;
  EXPECT_EQ(Field(a.Vtmctl({"show", "vm5"}).output, "state"), "provisioned");
}

// `vtmctl migrate commit --on-stdin` (what vtm-live-migrate starts before QEMU's migration, so
// that the commit in the guest's pause needs neither a new process nor a TLS handshake):
// nothing is committed without its cue; the channel to the destination stays open past the
// destination's 10 s idle limit while it waits; a channel that went stale (the destination
// vtmd restarted) is replaced and the commit still goes through.
TEST_F(MigrationTest, CommitOnStdinWaitsForItsCueOverAChannelKeptOpen) {
  // "commit" on stdin after `delay`; the shell's exit status is vtmctl's.
  auto commit_on_cue = [&](const std::string& id, const std::string& delay) {
    return RunCommand({"sh", "-c",
                       "(sleep " + delay + "; echo commit) | \"$0\" --socket \"$1\" migrate commit \"$2\" --on-stdin",
                       BuildPath("vtm-manager/vtmctl"), a.socket(), id});
  };

  const std::string first = PrepareAndSend("vm6");
  ASSERT_FALSE(first.empty());
  // stdin closed before the cue: nothing happens.
  auto uncued = a.Vtmctl({"migrate", "commit", first, "--on-stdin"});
  EXPECT_EQ(uncued.exit_code, 1) << uncued.output;
  EXPECT_NE(uncued.output.find("nothing was committed"), std::string::npos) << uncued.output;
  EXPECT_NE(a.Vtmctl({"migrate", "status", first}).output.find(" sent "), std::string::npos);
  // The cue after 12 s: the keep-alives held the channel open the whole time.
  auto late = commit_on_cue(first, "12");
  EXPECT_EQ(late.exit_code, 0) << late.output;
  EXPECT_EQ(late.output.rfind("ready\n", 0), 0u) << late.output;
  const std::string log = a.VtmdLog();
  EXPECT_NE(log.find("migration " + first + " activated on the destination: channel open"), std::string::npos) << log;
  EXPECT_EQ(log.find("migration " + first + ": the commit channel failed"), std::string::npos) << log;
  EXPECT_NE(a.Vtmctl({"migrate", "status", first}).output.find(" committed "), std::string::npos);

  // The destination restarts after the channel was opened, before the cue: the commit reconnects.
  const std::string second = PrepareAndSend("vm7");
  ASSERT_FALSE(second.empty());
  auto cued = CommitOnCueAfter(second, [&] {
    std::string error;
    EXPECT_TRUE(rig.RestartDestination(&error)) << error;
  });
  EXPECT_EQ(cued.output.rfind("ready\n", 0), 0u) << cued.output;
  EXPECT_EQ(cued.exit_code, 0) << cued.output;
  EXPECT_NE(a.VtmdLog().find("migration " + second + ": the commit channel failed"), std::string::npos) << a.VtmdLog();
  EXPECT_NE(a.Vtmctl({"migrate", "status", second}).output.find(" committed "), std::string::npos);
  EXPECT_EQ(Field(b.Vtmctl({"show", "vm7"}).output, "state"), "stopped");
}

// The destination's vtmd is down when the source commits: the commit is refused, naming the
// destination it cannot reach, and nothing changes: the migration is `sent`, the VM stays on the
// source (its files, no tombstone) and what arrived stays on the destination. Both when the
// commit cannot connect, and when a channel opened before (`--on-stdin`) meets the destination
// gone at the readiness question, after `committing` was recorded (the migration returns to
// `sent`); either way the reason is the migration's last error. Once the destination is back, the
// commit goes through.
TEST_F(MigrationTest, CommitWhileTheDestinationIsDownChangesNothingAndGoesThroughOnceItIsBack) {
  const std::string id = PrepareAndSend("vm8");
  ASSERT_FALSE(id.empty());
  const std::string uuid = Field(a.Vtmctl({"show", "vm8"}).output, "uuid");
  const std::string unreachable = "cannot reach the destination's migration endpoint " + destination;
  // What a refused commit leaves; recorded_error: what the migration's last error contains.
  auto expect_unchanged = [&](const std::string& recorded_error) {
    const std::string status = a.Vtmctl({"--json", "migrate", "status", id}).output;
    EXPECT_NE(status.find("\"state\": \"sent\""), std::string::npos) << status;
    std::smatch last_error;
    ASSERT_TRUE(std::regex_search(status, last_error, std::regex("\"last_error\": \"([^\"]*)\""))) << status;
    EXPECT_NE(last_error[1].str().find(recorded_error), std::string::npos) << status;
    auto here = a.Vtmctl({"show", uuid});
    EXPECT_EQ(here.exit_code, 0) << here.output;
    EXPECT_EQ(Field(here.output, "state"), "migrating-out");
    EXPECT_TRUE(PathExists(a.state_dir() + "/vms/" + uuid));
    EXPECT_TRUE(PathExists(b.state_dir() + "/vms/" + uuid));
  };

  // Down before the commit connects.
  b.StopVtmd();
  auto refused = a.Vtmctl({"migrate", "commit", id});
  EXPECT_EQ(refused.exit_code, 6) << refused.output;
  EXPECT_NE(refused.output.find(unreachable), std::string::npos) << refused.output;
  expect_unchanged(unreachable);
  std::string error;
  ASSERT_TRUE(rig.RestartDestination(&error, /*running=*/false)) << error;
  EXPECT_EQ(Field(b.Vtmctl({"show", uuid}).output, "state"), "incoming");
  EXPECT_EQ(LastMigrationOf(b, uuid).second, "received");

  // Down after the commit's channel was opened: the readiness question finds it gone.
  auto cued = CommitOnCueAfter(id, [&] { b.StopVtmd(); });
  ASSERT_EQ(cued.output.rfind("ready\n", 0), 0u) << cued.output;
  EXPECT_EQ(cued.exit_code, 6) << cued.output;
  EXPECT_NE(cued.output.find("asking the destination whether it can take over migration " + id), std::string::npos)
      << cued.output;
  EXPECT_NE(cued.output.find(unreachable), std::string::npos) << cued.output;
  EXPECT_NE(a.VtmdLog().find("migration " + id + ": the commit channel failed"), std::string::npos) << a.VtmdLog();
  expect_unchanged(unreachable);

  // Back (same state directory): the commit goes through.
  ASSERT_TRUE(rig.RestartDestination(&error, /*running=*/false)) << error;
  auto committed = a.Vtmctl({"migrate", "commit", id});
  ASSERT_EQ(committed.exit_code, 0) << committed.output;
  EXPECT_EQ(Field(committed.output, "state"), "committed");
  EXPECT_EQ(LastMigrationOf(a, uuid).second, "committed");
  EXPECT_EQ(LastMigrationOf(b, uuid).second, "committed");
  auto gone = a.Vtmctl({"show", uuid});
  EXPECT_EQ(gone.exit_code, 3) << gone.output;
  EXPECT_NE(gone.output.find("migrated from this host to host-b"), std::string::npos) << gone.output;
  EXPECT_FALSE(PathExists(a.state_dir() + "/vms/" + uuid));
  EXPECT_EQ(Field(b.Vtmctl({"show", uuid}).output, "state"), "stopped");
}

// The destination's vtmd is down when the source sends: refused with the destination named,
// the migration stays `prepared` with that reason as its last error; sent once it is back.
TEST_F(MigrationTest, SendWhileTheDestinationIsDownRecordsWhyAndGoesThroughOnceItIsBack) {
  ASSERT_EQ(a.Vtmctl({"create", "--name", "vm11"}).exit_code, 0);
  auto prepared = a.Vtmctl({"--json", "migrate", "prepare", "vm11", "--to", destination, "--cold"});
  const std::string id = MigrationIdIn(prepared.output);
  ASSERT_FALSE(id.empty()) << prepared.output;
  b.StopVtmd();
  auto refused = a.Vtmctl({"migrate", "send", id});
  EXPECT_EQ(refused.exit_code, 6) << refused.output;
  const std::string unreachable = "cannot reach the destination's migration endpoint " + destination;
  EXPECT_NE(refused.output.find(unreachable), std::string::npos) << refused.output;
  const std::string status = a.Vtmctl({"--json", "migrate", "status", id}).output;
  EXPECT_NE(status.find("\"state\": \"prepared\""), std::string::npos) << status;
  EXPECT_NE(status.find("\"last_error\": \"" + unreachable), std::string::npos) << status;
  std::string error;
  ASSERT_TRUE(rig.RestartDestination(&error, /*running=*/false)) << error;
  auto sent = a.Vtmctl({"migrate", "send", id});
  EXPECT_EQ(sent.exit_code, 0) << sent.output;
  EXPECT_NE(a.Vtmctl({"migrate", "status", id}).output.find(" sent "), std::string::npos);
  EXPECT_EQ(a.Vtmctl({"migrate", "commit", id}).exit_code, 0);
}

// Drives vtm-live-migrate's own functions as `finish` does, without QEMU: arm_commit (on vtmd's
// API socket: ApiCommit, the bindings the build generates from proto/vtm.proto), a wait, then
// commit() (fire, "resume", the completing commit through vtmctl). `wait` is "sleep:SECONDS", or
// a path: the script creates PATH.armed once armed and fires when PATH exists.
class ScriptCommitTest : public MigrationTest {
 protected:
  CommandResult DriveScript(const std::string& id, const std::string& wait) {
    static const char* kDrive = R"(
import importlib.machinery, os, sys, time, types
path, sock, mid, vtmctl, wait = sys.argv[1:6]
script = importlib.machinery.SourceFileLoader("vtm_live_migrate", path).load_module()
opts = types.SimpleNamespace(socket=sock, vtmctl=vtmctl, commit_via="api")
armed = script.arm_commit(opts, mid)
print("armed:", type(armed).__name__, flush=True)
if wait.startswith("sleep:"):
    time.sleep(float(wait[6:]))
else:
    open(wait + ".armed", "w").close()
    while not os.path.exists(wait):
        time.sleep(0.05)
print("ended early:", armed.ended_early(), flush=True)
times = script.commit(opts, mid, lambda: print("resumed", flush=True), "nothing to roll back", armed)
print("committed:", times is not None, flush=True)
)";
    return RunCommand({"/usr/bin/python3", "-c", kDrive, BuildPath("sbin/vtm-live-migrate"), a.socket(), id,
                       BuildPath("vtm-manager/vtmctl"), wait});
  }
};

// The script arms on vtmd's API socket, not through vtmctl; its keep-alive thread holds the
// channel past the destination's 10 s idle limit; the commit goes over that channel.
TEST_F(ScriptCommitTest, ArmsTheCommitOnVtmdsApiSocketAndKeepsTheChannelOpen) {
  const std::string id = PrepareAndSend("vm9");
  ASSERT_FALSE(id.empty());
  auto drove = DriveScript(id, "sleep:12");
  EXPECT_EQ(drove.exit_code, 0) << drove.output;
  EXPECT_NE(drove.output.find("commit armed on vtmd's API socket " + a.socket()), std::string::npos) << drove.output;
  EXPECT_NE(drove.output.find("armed: ApiCommit"), std::string::npos) << drove.output;
  EXPECT_NE(drove.output.find("ended early: None"), std::string::npos) << drove.output;
  EXPECT_NE(drove.output.find("resumed"), std::string::npos) << drove.output;
  EXPECT_NE(drove.output.find("committed: True"), std::string::npos) << drove.output;
  const std::string log = a.VtmdLog();
  EXPECT_NE(log.find("migration " + id + " activated on the destination, the guest may continue there: channel open"),
            std::string::npos)
      << log;
  EXPECT_EQ(log.find("migration " + id + ": the commit channel failed"), std::string::npos) << log;
  EXPECT_NE(a.Vtmctl({"migrate", "status", id}).output.find(" committed "), std::string::npos);
  EXPECT_EQ(a.Vtmctl({"show", "vm9"}).exit_code, 3);
}

// The source vtmd restarts after the commit was armed (its API connection is gone): the script
// says so and commits once more through vtmctl; the migration completes.
TEST_F(ScriptCommitTest, ACommitArmedBeforeTheSourceVtmdRestartedGoesThroughAfterIt) {
  const std::string id = PrepareAndSend("vm10");
  ASSERT_FALSE(id.empty());
  const std::string go = P("go");
  CommandResult drove;
  std::thread script([&] { drove = DriveScript(id, go); });
  for (int i = 0; i < 600 && !PathExists(go + ".armed"); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_TRUE(PathExists(go + ".armed"));
  std::string error;
  EXPECT_TRUE(rig.RestartSource(P("policy.json"), &error)) << error;
  EXPECT_TRUE(WriteFileAtomic(go, "", 0644).ok());
  script.join();
  EXPECT_EQ(drove.exit_code, 0) << drove.output;
  EXPECT_NE(drove.output.find("armed: ApiCommit"), std::string::npos) << drove.output;
  // Found broken at the commit, or by a keep-alive before it: either way through vtmctl.
  EXPECT_TRUE(drove.output.find("the armed commit's connection to vtmd failed") != std::string::npos ||
              drove.output.find("the prepared commit ended early") != std::string::npos)
      << drove.output;
  EXPECT_NE(drove.output.find("committed: True"), std::string::npos) << drove.output;
  EXPECT_NE(a.Vtmctl({"migrate", "status", id}).output.find(" committed "), std::string::npos);
  EXPECT_EQ(Field(b.Vtmctl({"show", "vm10"}).output, "state"), "stopped");
}

// libvirt's qemu hook on both hosts during a live migration, called as libvirtd calls it when
// `virsh migrate` carries the domain (the e2e under real libvirtds is issue 8's): the
// destination's `migrate` points the XML at its incoming instance, its `prepare` lets QEMU
// attach there without starting anything, and `release` on either side (the source's QEMU
// leaving, a destination QEMU that failed) leaves the vTPM to the migration's commit or abort.
TEST_F(MigrationTest, LibvirtHookFollowsALiveMigration) {
  ASSERT_TRUE(WriteFileAtomic(P("qemu.conf"), "user = \"root\"\n", 0644).ok());
  auto hook = [&](VtmdFixture& f, const std::string& op, const std::string& xml) {
    return RunCommand({BuildPath("vtm-manager/vtmctl"), "--socket", f.socket(), "libvirt", "hook", "--qemu-conf",
                       P("qemu.conf"), "web6", op, op == "release" ? "end" : "begin", "-"},
                      xml);
  };
  ASSERT_EQ(a.Vtmctl({"create", "--name", "vm6"}).exit_code, 0);
  const std::string uuid = Field(a.Vtmctl({"show", "vm6"}).output, "uuid");
  const std::string plain = "<domain type='qemu'><name>web6</name><uuid>" + uuid +
                            "</uuid><memory unit='KiB'>131072</memory><devices/></domain>";
  auto patched = RunCommand({BuildPath("vtm-manager/vtmctl"), "--socket", a.socket(), "libvirt", "patch", "-"}, plain);
  ASSERT_EQ(patched.exit_code, 0) << patched.output;
  const std::string source_xml = patched.output;
  ASSERT_EQ(hook(a, "prepare", source_xml).exit_code, 0);
  const std::string source_pid = Field(a.Vtmctl({"show", uuid}).output, "instance pid");
  ASSERT_FALSE(source_pid.empty());

  // Before vtm's migration has moved the keys, the destination refuses the domain.
  auto early = hook(b, "migrate", source_xml);
  EXPECT_NE(early.exit_code, 0) << early.output;
  EXPECT_NE(early.output.find("move the vTPM with vtm's migration first"), std::string::npos) << early.output;

  auto prepared = a.Vtmctl({"--json", "migrate", "prepare", uuid, "--to", destination});
  ASSERT_EQ(prepared.exit_code, 0) << prepared.output;
  const std::string id = MigrationIdIn(prepared.output);
  ASSERT_FALSE(id.empty()) << prepared.output;
  auto sent = a.Vtmctl({"migrate", "send", id});
  ASSERT_EQ(sent.exit_code, 0) << sent.output;
  ASSERT_EQ(Field(b.Vtmctl({"show", uuid}).output, "state"), "incoming");
  const std::string incoming_socket = b.run_dir() + "/vms/" + uuid + "/tpm.sock";
  ASSERT_TRUE(PathExists(incoming_socket));

  // migrate (destination): the XML now names the incoming instance's socket.
  auto rewritten = hook(b, "migrate", source_xml);
  ASSERT_EQ(rewritten.exit_code, 0) << rewritten.output;
  EXPECT_NE(rewritten.output.find("path=\"" + incoming_socket + "\""), std::string::npos) << rewritten.output;
  EXPECT_EQ(rewritten.output.find(a.run_dir()), std::string::npos) << rewritten.output;
  const std::string destination_xml = rewritten.output.substr(rewritten.output.find("<domain"));
  // prepare (destination): nothing is started, the incoming instance stays as it is.
  const std::string incoming_pid = Field(b.Vtmctl({"show", uuid}).output, "instance pid");
  auto prepare_there = hook(b, "prepare", destination_xml);
  EXPECT_EQ(prepare_there.exit_code, 0) << prepare_there.output;
  EXPECT_NE(prepare_there.output.find("arriving by vtm's migration"), std::string::npos) << prepare_there.output;
  EXPECT_EQ(Field(b.Vtmctl({"show", uuid}).output, "state"), "incoming");
  EXPECT_EQ(Field(b.Vtmctl({"show", uuid}).output, "instance pid"), incoming_pid);
  // release (source, its QEMU gone after the migration): the vTPM is the commit's to end.
  auto released = hook(a, "release", source_xml);
  EXPECT_EQ(released.exit_code, 0) << released.output;
  EXPECT_NE(released.output.find("leaving by vtm's migration"), std::string::npos) << released.output;
  EXPECT_EQ(Field(a.Vtmctl({"show", uuid}).output, "state"), "migrating-out");
  EXPECT_EQ(Field(a.Vtmctl({"show", uuid}).output, "instance pid"), source_pid);
  // release (destination, a QEMU that failed to take over): the incoming instance stays too.
  EXPECT_EQ(hook(b, "release", destination_xml).exit_code, 0);
  EXPECT_EQ(Field(b.Vtmctl({"show", uuid}).output, "state"), "incoming");

  // QEMU's migration failed: abort, and the source's vTPM carries on with its domain.
  auto aborted = a.Vtmctl({"migrate", "abort", id});
  ASSERT_EQ(aborted.exit_code, 0) << aborted.output;
  EXPECT_EQ(Field(a.Vtmctl({"show", uuid}).output, "state"), "running");
  EXPECT_EQ(Field(a.Vtmctl({"show", uuid}).output, "instance pid"), source_pid);
  EXPECT_EQ(b.Vtmctl({"show", uuid}).exit_code, 3);
  EXPECT_EQ(hook(a, "release", source_xml).exit_code, 0);
  EXPECT_EQ(Field(a.Vtmctl({"show", uuid}).output, "state"), "stopped");
}

}  // namespace
}  // namespace vtm::testing
