// vtmd's network attestation endpoint against a real vtmd (swtpm host TPM), driven by the
// remote verifier's own tools: `vtm-verify fetch` over mutual TLS 1.3 gets host evidence that
// `vtm-verify host` accepts once `vtm-verify activate` has bound the host AK to the host EK by
// a credential activation (until then the same evidence is refused for that one reason);
// verifiers with a certificate from another CA are refused at the handshake; a verifier may not
// use management requests over the network; the endpoint's certificate is issued by the host
// CA of the evidence, and a host CA other than the one that answered is detected; evidence
// equals what the local `vtmctl attest host` gives for the same host.
#include <gtest/gtest.h>

#include <regex>

#include "attestation.pb.h"
#include "remote_client.h"
#include "vtm.pb.h"
#include "vtm/framing.h"
#include "vtm/credential.h"
#include "vtm/fs.h"
#include "vtm/tpm_structures.h"
#include "vtm/verifier.h"
#include "vtm/x509.h"
#include "vtm/listener.h"
#include "vtm/tls.h"
#include "vtmd_fixture.h"

namespace vtm::testing {
namespace {

class AttestationEndpointTest : public ::testing::Test {
 protected:
  void SetUp() override {
    MakeTestCa(dir.path(), "verifier-ca");
    IssueTestCertificate(dir.path(), "verifier", "verifier-ca");
    MakeTestCa(dir.path(), "rogue-ca");
    IssueTestCertificate(dir.path(), "rogue", "rogue-ca");
    ASSERT_TRUE(f.StartVtmd({"--attest-listen", "127.0.0.1:0", "--attest-verifier-ca", P("verifier-ca.pem")}))
        << f.VtmdLog();
    std::smatch m;
    const std::string log = f.VtmdLog();
    ASSERT_TRUE(std::regex_search(log, m, std::regex("attestation endpoint on 127.0.0.1:0 \\(port ([0-9]+)\\)")))
        << log;
    server = "127.0.0.1:" + m[1].str();
    // The endpoint certificate chains to the host CA: what verifiers trust for the server.
    auto ca = f.Vtmctl({"ca", "show"});
    ASSERT_EQ(ca.exit_code, 0) << ca.output;
    ASSERT_TRUE(WriteFileAtomic(P("host-ca.pem"), ca.output, 0644).ok());
  }
  void TearDown() override {
    if (HasFailure()) std::cerr << "---- vtmd log ----\n" << f.VtmdLog();
  }
  std::string P(const std::string& name) const { return dir.path() + "/" + name; }
  CommandResult Verify(std::vector<std::string> args) {
    args.insert(args.begin(), BuildPath("attest/vtm-verify"));
    return RunCommand(args);
  }
  std::vector<std::string> Tls(const std::string& who) {
    return {"--server", server, "--tls-cert", P(who + ".pem"), "--tls-key", P(who + ".key"), "--tls-ca", P("host-ca.pem")};
  }
  std::string Nonce() {
    auto r = Verify({"nonce"});
    EXPECT_EQ(r.exit_code, 0) << r.output;
    return r.output.substr(0, r.output.find('\n'));
  }
  std::unique_ptr<RemoteAttestationClient> Client() {
    auto creds = ReadTlsCredentialFiles(P("verifier.pem"), P("verifier.key"), P("host-ca.pem"));
    EXPECT_TRUE(creds.ok()) << creds.error().ToString();
    auto c = RemoteAttestationClient::Connect(server, *creds, std::chrono::seconds(30));
    EXPECT_TRUE(c.ok()) << c.error().ToString();
    return c.ok() ? std::move(c).value() : nullptr;
  }

  VtmdFixture f;
  TempDir dir;
  std::string server;
};

TEST_F(AttestationEndpointTest, RemoteVerifierFetchesActivatesAndAppraises) {
  const std::string nonce = Nonce();
  std::vector<std::string> fetch = {"fetch", "host", "--nonce", nonce, "--output", P("host.pb")};
  auto tls = Tls("verifier");
  fetch.insert(fetch.end(), tls.begin(), tls.end());
  auto fetched = Verify(fetch);
  ASSERT_EQ(fetched.exit_code, 0) << fetched.output;

  // A starting policy from this known-good host, naming the (test) manufacturer of its TPM, but
  // without the AK that learn trusts on first use: this verifier proves it by activation.
  const std::string manufacturer = f.state_dir() + "/../host-tpm/test-manufacturer-ca.pem";
  auto learned = Verify({"learn", "--evidence", P("host.pb"), "--host-ek-ca", manufacturer});
  ASSERT_EQ(learned.exit_code, 0) << learned.output;
  auto policy = attest::ParsePolicyJson(learned.output);
  ASSERT_TRUE(policy.ok()) << policy.error().ToString();
  ASSERT_EQ(policy->host_ek_ca_pem_size(), 1);
  EXPECT_EQ(policy->host_ek_ca_pem(0), *ReadFile(manufacturer));
  policy->clear_activated_host_ak_names();
  // A trust anchor that is not a certificate is bad input, not an empty trust list.
  auto not_pem = Verify({"learn", "--evidence", P("host.pb"), "--host-ek-ca", P("host.pb")});
  EXPECT_EQ(not_pem.exit_code, 2) << not_pem.output;
  ASSERT_TRUE(WriteFileAtomic(P("policy.json"), attest::PolicyToJson(*policy), 0644).ok());

  auto refused = Verify({"host", "--evidence", P("host.pb"), "--policy", P("policy.json"), "--nonce", nonce});
  EXPECT_EQ(refused.exit_code, 1) << refused.output;
  EXPECT_NE(refused.output.find("FAIL  host_ak_binding"), std::string::npos) << refused.output;
  EXPECT_EQ(refused.output.find("FAIL  host_quote"), std::string::npos) << refused.output;

  std::vector<std::string> activate = {"activate", "--evidence", P("host.pb"), "--policy", P("policy.json")};
  activate.insert(activate.end(), tls.begin(), tls.end());
  auto activated = Verify(activate);
  ASSERT_EQ(activated.exit_code, 0) << activated.output;
  EXPECT_NE(activated.output.find("recorded in"), std::string::npos) << activated.output;
  EXPECT_NE(f.VtmdLog().find("activate_host_credential: answered"), std::string::npos);

  auto trusted = Verify({"host", "--evidence", P("host.pb"), "--policy", P("policy.json"), "--nonce", nonce});
  EXPECT_EQ(trusted.exit_code, 0) << trusted.output;
  // The same evidence a second time with a replay file: accepted once, then refused.
  auto once = Verify({"host", "--evidence", P("host.pb"), "--policy", P("policy.json"), "--nonce", nonce,
                      "--replay-file", P("replay")});
  EXPECT_EQ(once.exit_code, 0) << once.output;
  auto twice = Verify({"host", "--evidence", P("host.pb"), "--policy", P("policy.json"), "--nonce", nonce,
                       "--replay-file", P("replay")});
  EXPECT_EQ(twice.exit_code, 1) << twice.output;

  // Local and remote evidence come from the same host identity.
  auto local = f.Vtmctl({"attest", "host", "--nonce", Nonce(), "--output", P("local.pb")});
  ASSERT_EQ(local.exit_code, 0) << local.output;
  attest::HostEvidence remote_ev, local_ev;
  ASSERT_TRUE(remote_ev.ParseFromString(*ReadFile(P("host.pb"))));
  ASSERT_TRUE(local_ev.ParseFromString(*ReadFile(P("local.pb"))));
  EXPECT_EQ(remote_ev.host().SerializeAsString(), local_ev.host().SerializeAsString());
}

TEST_F(AttestationEndpointTest, VerifierFromAnotherCaIsRefusedAtTheHandshake) {
  std::vector<std::string> fetch = {"fetch", "host", "--nonce", Nonce(), "--output", P("host.pb")};
  auto tls = Tls("rogue");
  fetch.insert(fetch.end(), tls.begin(), tls.end());
  auto r = Verify(fetch);
  EXPECT_NE(r.exit_code, 0) << r.output;
  EXPECT_FALSE(PathExists(P("host.pb")));
  // The client sees the refusal (an alert after its own handshake finished) before vtmd logs it.
  EXPECT_TRUE(f.WaitForVtmdLog("attestation endpoint: refused a connection")) << f.VtmdLog();
}

TEST_F(AttestationEndpointTest, ManagementRequestsAreNotServedOverTheNetwork) {
  auto creds = ReadTlsCredentialFiles(P("verifier.pem"), P("verifier.key"), P("host-ca.pem"));
  ASSERT_TRUE(creds.ok());
  auto ctx = TlsContext::Create(TlsContext::Role::kClient, *creds);
  ASSERT_TRUE(ctx.ok());
  auto fd = ConnectTcp(server);
  ASSERT_TRUE(fd.ok());
  auto tls = (*ctx)->Connect(std::move(fd).value(), std::chrono::seconds(30));
  ASSERT_TRUE(tls.ok()) << tls.error().ToString();
  for (int op = 0; op < 3; ++op) {  // (ca_crl is allowed: see the CRL test)
    api::Request req;
    if (op == 0) req.mutable_list();
    if (op == 1) req.mutable_create()->set_name("from-the-network");
    if (op == 2) req.mutable_ca_csr();
    ASSERT_TRUE(WriteFrame(**tls, req.SerializeAsString()).ok());
    auto frame = ReadFrame(**tls);
    ASSERT_TRUE(frame.ok()) << frame.error().ToString();
    api::Response resp;
    ASSERT_TRUE(resp.ParseFromString(*frame));
    EXPECT_EQ(resp.status(), api::STATUS_PERMISSION_DENIED) << resp.error();
  }
  // Nothing was created.
  auto list = f.Vtmctl({"list"});
  EXPECT_EQ(list.output.find("from-the-network"), std::string::npos) << list.output;
}

// Relying parties fetch the host CA's CRL over the endpoint; `openssl crl` checks its signature
// with the host CA certificate, and a deleted VM's certificate serial is in it.
TEST_F(AttestationEndpointTest, CrlIsFetchedOverTheEndpointAndListsRevocations) {
  ASSERT_EQ(f.Vtmctl({"create", "--name", "gone"}).exit_code, 0);
  auto certs = f.Vtmctl({"certs", "gone", "--kind", "ak"});
  ASSERT_EQ(certs.exit_code, 0);
  auto ak = ca::ParseCertificate(certs.output);
  ASSERT_TRUE(ak.ok());
  ASSERT_EQ(f.Vtmctl({"delete", "gone"}).exit_code, 0);
  std::vector<std::string> fetch = {"fetch", "crl", "--output", P("crl.pem")};
  auto tls = Tls("verifier");
  fetch.insert(fetch.end(), tls.begin(), tls.end());
  auto fetched = Verify(fetch);
  ASSERT_EQ(fetched.exit_code, 0) << fetched.output;
  auto checked = RunCommand({"openssl", "crl", "-in", P("crl.pem"), "-CAfile", P("host-ca.pem"), "-noout", "-text"});
  ASSERT_EQ(checked.exit_code, 0) << checked.output;
  EXPECT_NE(checked.output.find("verify OK"), std::string::npos) << checked.output;
  std::string serial = ak->serial_hex;
  EXPECT_NE(checked.output.find("Serial Number: " + serial), std::string::npos) << serial << "\n" << checked.output;
}

TEST_F(AttestationEndpointTest, EndpointCertificateBindsTheChannelToTheAttestedHostCa) {
  auto client = Client();
  ASSERT_TRUE(client);
  auto ev = client->HostEvidence(std::string(32, 'n'));
  ASSERT_TRUE(ev.ok()) << ev.error().ToString();
  EXPECT_TRUE(client->CheckServedBy(ev->host()).ok());
  // Evidence relayed from another host (another host CA) does not match this channel.
  attest::HostIdentity other = ev->host();
  auto rogue_ca = ReadFile(P("rogue-ca.pem"));
  ASSERT_TRUE(rogue_ca.ok());
  other.set_ca_certificate(*ca::CertificateToDer(*rogue_ca));
  auto refused = client->CheckServedBy(other);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.error().code(), ErrorCode::kPermissionDenied);
  // An activation with a credential made for another AK name is refused by the host TPM.
  auto ak_name = TpmNameOfPublic(ev->host().ak_public());
  ASSERT_TRUE(ak_name.ok());
  std::string other_name = *ak_name;
  other_name.back() ^= 0x01;
  auto made = attest::MakeCredential(ev->host().ek_public(), std::string(32, 's'), other_name);
  ASSERT_TRUE(made.ok()) << made.error().ToString();
  auto wrong = client->ActivateCredential(made->id_object, made->encrypted_secret);
  EXPECT_FALSE(wrong.ok());
  // ActivateHostAk does the right one.
  auto bound = ActivateHostAk(*client, ev->host());
  ASSERT_TRUE(bound.ok()) << bound.error().ToString();
  EXPECT_EQ(*bound, *ak_name);
  // Malformed requests get their error and the connection stays usable.
  auto bad_nonce = client->HostEvidence("short");
  ASSERT_FALSE(bad_nonce.ok());
  EXPECT_EQ(bad_nonce.error().code(), ErrorCode::kInvalidArgument);
  EXPECT_TRUE(client->HostEvidence(std::string(16, 'm')).ok());
}

// After a rotation of the host CA key a relying party fetches both CRLs where it fetches
// evidence: the one of the key in use and the final CRL of the retired key (ca_crl retired),
// the same the local `vtmctl ca crl --retired` prints; each verifies (openssl) under its CA
// certificate. The endpoint presents a certificate of the new key at once (no restart): a
// verifier trusting only the new CA certificate connects.
TEST_F(AttestationEndpointTest, RetiredCaFinalCrlIsServedAfterARotation) {
  ASSERT_TRUE(WriteFileAtomic(P("old-ca.pem"), *ReadFile(P("host-ca.pem")), 0644).ok());
  {
    auto client = Client();
    ASSERT_NE(client, nullptr);
    auto none = client->Crl(/*retired=*/true);
    ASSERT_FALSE(none.ok());
    EXPECT_EQ(none.error().code(), ErrorCode::kNotFound) << none.error().ToString();
  }
  auto rotated = f.Vtmctl({"ca", "rotate"});
  ASSERT_EQ(rotated.exit_code, 0) << rotated.output;
  EXPECT_EQ(rotated.output.find("estart vtmd"), std::string::npos) << rotated.output;
  ASSERT_TRUE(WriteFileAtomic(P("host-ca.pem"), f.Vtmctl({"ca", "show"}).output, 0644).ok());
  auto client = Client();
  ASSERT_NE(client, nullptr);
  auto final_crl = client->Crl(/*retired=*/true);
  ASSERT_TRUE(final_crl.ok()) << final_crl.error().ToString();
  EXPECT_EQ(*final_crl, f.Vtmctl({"ca", "crl", "--retired"}).output);
  auto crl = client->Crl();
  ASSERT_TRUE(crl.ok()) << crl.error().ToString();
  ASSERT_TRUE(WriteFileAtomic(P("final.crl"), *final_crl, 0644).ok());
  ASSERT_TRUE(WriteFileAtomic(P("crl.pem"), *crl, 0644).ok());
  auto old_ok = RunCommand({"openssl", "crl", "-noout", "-CAfile", P("old-ca.pem"), "-in", P("final.crl")});
  EXPECT_NE(old_ok.output.find("verify OK"), std::string::npos) << old_ok.output;
  auto new_ok = RunCommand({"openssl", "crl", "-noout", "-CAfile", P("host-ca.pem"), "-in", P("crl.pem")});
  EXPECT_NE(new_ok.output.find("verify OK"), std::string::npos) << new_ok.output;
}

// The leaf certificate (PEM) the endpoint presents to a new connection, as `openssl s_client`
// receives it; *verify_result: s_client's "Verify return code" line against trusted_ca.
std::string PresentedCertificate(const std::string& server, const std::string& client_cert,
                                 const std::string& client_key, const std::string& trusted_ca,
                                 std::string* verify_result) {
  auto r = RunCommand({"openssl", "s_client", "-connect", server, "-cert", client_cert, "-key", client_key, "-CAfile",
                       trusted_ca, "-tls1_3"},
                      "Q\n");
  const size_t begin = r.output.find("-----BEGIN CERTIFICATE-----");
  const std::string end_marker = "-----END CERTIFICATE-----\n";
  const size_t end = r.output.find(end_marker, begin);
  std::smatch m;
  *verify_result = std::regex_search(r.output, m, std::regex("Verify return code: [^\n]*")) ? m[0].str() : r.output;
  if (begin == std::string::npos || end == std::string::npos) return "";
  return r.output.substr(begin, end + end_marker.size() - begin);
}

// A rotation of the host CA key needs no restart of vtmd: new connections to the endpoint get a
// certificate the new key issued (checked with openssl s_client and openssl verify), not the old
// one, which the old key's final CRL revokes; a connection opened before the rotation finishes on
// the old one; a verifier trusting only the new CA certificate fetches evidence whose channel
// binding holds. A restart (as after a crash) presents a certificate of the new key too.
TEST_F(AttestationEndpointTest, AfterACaKeyRotationNewConnectionsGetACertificateOfTheNewKey) {
  std::string verdict;
  const std::string before =
      PresentedCertificate(server, P("verifier.pem"), P("verifier.key"), P("host-ca.pem"), &verdict);
  ASSERT_FALSE(before.empty()) << verdict;
  EXPECT_EQ(verdict, "Verify return code: 0 (ok)");
  ASSERT_TRUE(WriteFileAtomic(P("old-ca.pem"), *ReadFile(P("host-ca.pem")), 0644).ok());
  ASSERT_TRUE(WriteFileAtomic(P("old-endpoint.pem"), before, 0644).ok());
  auto open_before = Client();
  ASSERT_NE(open_before, nullptr);

  auto rotated = f.Vtmctl({"ca", "rotate"});
  ASSERT_EQ(rotated.exit_code, 0) << rotated.output << f.VtmdLog();
  EXPECT_NE(rotated.output.find("vtmd's attestation endpoint presents TLS certificates of the new key"),
            std::string::npos)
      << rotated.output;
  EXPECT_EQ(rotated.output.find("estart vtmd"), std::string::npos) << rotated.output;
  ASSERT_TRUE(WriteFileAtomic(P("new-ca.pem"), f.Vtmctl({"ca", "show"}).output, 0644).ok());

  const std::string after =
      PresentedCertificate(server, P("verifier.pem"), P("verifier.key"), P("new-ca.pem"), &verdict);
  ASSERT_FALSE(after.empty()) << verdict;
  EXPECT_EQ(verdict, "Verify return code: 0 (ok)");
  EXPECT_NE(after, before);
  ASSERT_TRUE(WriteFileAtomic(P("new-endpoint.pem"), after, 0644).ok());
  auto under_new = RunCommand({"openssl", "verify", "-CAfile", P("new-ca.pem"), P("new-endpoint.pem")});
  EXPECT_EQ(under_new.exit_code, 0) << under_new.output;
  EXPECT_NE(RunCommand({"openssl", "verify", "-CAfile", P("old-ca.pem"), P("new-endpoint.pem")}).exit_code, 0);
  EXPECT_NE(RunCommand({"openssl", "verify", "-CAfile", P("new-ca.pem"), P("old-endpoint.pem")}).exit_code, 0);
  ASSERT_TRUE(WriteFileAtomic(P("final.crl"), f.Vtmctl({"ca", "crl", "--retired"}).output, 0644).ok());
  auto revoked = RunCommand({"openssl", "verify", "-crl_check", "-CRLfile", P("final.crl"), "-CAfile", P("old-ca.pem"),
                             P("old-endpoint.pem")});
  EXPECT_NE(revoked.output.find("certificate revoked"), std::string::npos) << revoked.output;

  // The connection opened before the rotation still answers.
  EXPECT_TRUE(open_before->HostEvidence(std::string(16, 'o')).ok());
  // A verifier that trusts the new CA certificate: evidence, and the channel bound to its host CA.
  ASSERT_TRUE(WriteFileAtomic(P("host-ca.pem"), *ReadFile(P("new-ca.pem")), 0644).ok());
  std::vector<std::string> fetch = {"fetch", "host", "--nonce", Nonce(), "--output", P("host.pb")};
  auto tls = Tls("verifier");
  fetch.insert(fetch.end(), tls.begin(), tls.end());
  auto fetched = Verify(fetch);
  EXPECT_EQ(fetched.exit_code, 0) << fetched.output;

  // vtmd's next start (after a crash, say) issues from the new key as well.
  f.StopVtmd();
  ASSERT_TRUE(f.StartVtmd({"--attest-listen", "127.0.0.1:0", "--attest-verifier-ca", P("verifier-ca.pem")}))
      << f.VtmdLog();
  const std::string log = f.VtmdLog();
  const std::regex port("\\(port ([0-9]+)\\)");
  std::string last;  // the log holds the first start's lines too
  for (auto it = std::sregex_iterator(log.begin(), log.end(), port); it != std::sregex_iterator(); ++it) {
    last = (*it)[1].str();
  }
  ASSERT_FALSE(last.empty()) << log;
  server = "127.0.0.1:" + last;
  const std::string restarted =
      PresentedCertificate(server, P("verifier.pem"), P("verifier.key"), P("new-ca.pem"), &verdict);
  EXPECT_FALSE(restarted.empty());
  EXPECT_EQ(verdict, "Verify return code: 0 (ok)");
}

// Joining a fleet (`ca install` of a fleet certificate for the current key) needs no restart
// either: new connections get a certificate whose chain leads to the fleet CA.
TEST_F(AttestationEndpointTest, AfterJoiningAFleetNewConnectionsPresentTheFleetChain) {
  std::string verdict;
  ASSERT_FALSE(PresentedCertificate(server, P("verifier.pem"), P("verifier.key"), P("host-ca.pem"), &verdict).empty());
  ASSERT_EQ(RunCommand({"openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                        "-keyout", P("fleet.key"), "-out", P("fleet.pem"), "-subj", "/CN=fleet root", "-days", "30"})
                .exit_code,
            0);
  ASSERT_TRUE(WriteFileAtomic(P("ca-ext.cnf"),
                              "basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign\n",
                              0644)
                  .ok());
  ASSERT_TRUE(WriteFileAtomic(P("host.csr"), f.Vtmctl({"ca", "csr"}).output, 0644).ok());
  auto signed_ca = RunCommand({"openssl", "x509", "-req", "-in", P("host.csr"), "-CA", P("fleet.pem"), "-CAkey",
                               P("fleet.key"), "-CAcreateserial", "-out", P("fleet-host-ca.pem"), "-days", "30",
                               "-extfile", P("ca-ext.cnf"), "-copy_extensions", "copy"});
  ASSERT_EQ(signed_ca.exit_code, 0) << signed_ca.output;
  // Before the install the fleet CA does not vouch for the endpoint.
  (void)PresentedCertificate(server, P("verifier.pem"), P("verifier.key"), P("fleet.pem"), &verdict);
  EXPECT_NE(verdict, "Verify return code: 0 (ok)");
  auto installed = f.Vtmctl({"ca", "install", P("fleet-host-ca.pem"), P("fleet.pem")});
  ASSERT_EQ(installed.exit_code, 0) << installed.output << f.VtmdLog();
  const std::string after =
      PresentedCertificate(server, P("verifier.pem"), P("verifier.key"), P("fleet.pem"), &verdict);
  ASSERT_FALSE(after.empty()) << verdict;
  EXPECT_EQ(verdict, "Verify return code: 0 (ok)");
}

}  // namespace
}  // namespace vtm::testing
