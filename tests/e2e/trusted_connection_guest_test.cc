// ISO/IEC 27071 trusted connection end to end: a real QEMU guest whose vTPM vtmd created runs
// `openssl s_server` with its IK through the tpm2 provider (without demanding a client
// certificate: see the comment at the server's command line) (certificate chain from the vTPM's
// NV indices by vtm-service-identity), and vtm-tc-serve (the IK's signature alone in the vTPM:
// it demands the device's certificate and answers attestation challenges with an AK quote),
// once with a line-reversing echo and once as a front for a plain backend in the guest; all
// reached from the host over virtio-net + user-mode networking forwarded to loopback. The
// device side is vtm::tc with its key in a separate swtpm (the device TPM) and a certificate
// from a test device CA; it has the host's attestation endpoint (vtmd --attest-listen) link the
// guest's quote and appraises it before sending data, and refuses evidence from another TLS
// session. Data signed in the guest with the IK (vtm-sign-data) is verified on the host, also by
// `openssl cms -verify`.
#include <gtest/gtest.h>

#include <ctime>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <regex>
#include <thread>

#include "qemu_guest.h"
#include "test_env.h"
#include "vtm/fs.h"
#include "vtm/host_tpm.h"
#include "vtm/labelled_data.h"
#include "vtm/net.h"
#include "vtm/session_attestation.h"
#include "vtm/tls.h"
#include "vtm/trusted_connection.h"
#include "vtm/verifier.h"
#include "vtmd_fixture.h"

namespace vtm::testing {
namespace {

constexpr char kService[] = "telemetry";
constexpr char kOtherVm[] = "0b7c2a4e-5d61-4f3a-9e8b-1c2d3e4f5a6b";
constexpr char kNonce[] = "0a0b0c0d";
constexpr char kDeviceKey[] = "handle:0x81000010";

void WriteBytes(const std::string& path, const std::string& bytes) { std::ofstream(path, std::ios::binary) << bytes; }

std::string Hex(const std::string& cmd_path) { return "$(od -An -tx1 -v " + cmd_path + " | tr -d ' \\n')"; }

// Waits until the console shows `marker` (the guest's servers are listening) or the run ends.
bool WaitForConsole(const std::string& path, const std::string& marker, std::chrono::seconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    auto text = ReadFile(path);
    if (text.ok() && text->find(marker) != std::string::npos) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  return false;
}

class TrustedConnectionGuestTest : public GuestImageTest {};

TEST_F(TrustedConnectionGuestTest, MutualTlsWithVtpmIkAndLabelledData) {
  TempDir dir;
  auto p = [&](const std::string& n) { return dir.path() + "/" + n; };
  VtmdFixture f;
  // The host's attestation endpoint; the device is one of its verifiers.
  MakeTestCa(dir.path(), "verifier-ca");
  IssueTestCertificate(dir.path(), "device-verifier", "verifier-ca");
  ASSERT_TRUE(f.StartVtmd({"--attest-listen", "127.0.0.1:0", "--attest-verifier-ca", p("verifier-ca.pem")}))
      << f.VtmdLog();
  std::smatch endpoint;
  const std::string vtmd_log = f.VtmdLog();
  ASSERT_TRUE(std::regex_search(vtmd_log, endpoint, std::regex("attestation endpoint on 127.0.0.1:0 \\(port ([0-9]+)\\)")))
      << vtmd_log;
  auto created = f.Vtmctl({"create", "--name", "tcguest", "--service", kService});
  ASSERT_EQ(created.exit_code, 0) << created.output << f.VtmdLog();
  const std::string vm = Field(created.output, "uuid");
  ASSERT_FALSE(vm.empty()) << created.output;
  auto started = f.Vtmctl({"start", "tcguest"});
  ASSERT_EQ(started.exit_code, 0) << started.output;
  auto ca = f.Vtmctl({"ca", "show"});
  ASSERT_EQ(ca.exit_code, 0) << ca.output;
  WriteBytes(p("ca.pem"), ca.output);
  auto crl = f.Vtmctl({"ca", "crl"});
  ASSERT_EQ(crl.exit_code, 0) << crl.output;

  // The device: a P-256 signing key persistent in its own TPM (a separate swtpm), certified by
  // a test device CA through a CSR signed inside that TPM.
  auto device_tpm = SimulatedHostTpm::Start(p("device-tpm"));
  ASSERT_TRUE(device_tpm.ok()) << device_tpm.error().ToString();
  const std::string tcti = (*device_tpm)->tcti();
  auto run = [&](const std::vector<std::string>& argv) {
    auto r = RunCommand(argv);
    EXPECT_EQ(r.exit_code, 0) << argv[0] << " " << (argv.size() > 1 ? argv[1] : "") << ": " << r.output;
    return r.exit_code == 0;
  };
  ASSERT_TRUE(run({"tpm2_createprimary", "-T", tcti, "-C", "o", "-G", "ecc256", "-c", p("dev.ctx"), "-a",
                   "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|sign"}));
  ASSERT_TRUE(run({"tpm2_evictcontrol", "-T", tcti, "-C", "o", "-c", p("dev.ctx"), "0x81000010"}));
  // The swtpm has no resource manager (a device would use /dev/tpmrm0): free the three object
  // slots the tools left in use, the TLS handshake needs them.
  ASSERT_TRUE(run({"tpm2_flushcontext", "-T", tcti, "-t"}));
  ASSERT_TRUE(run({"openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                   "-keyout", p("devca.key"), "-subj", "/CN=vtm test device CA", "-days", "2", "-out", p("devca.pem")}));
  ASSERT_TRUE(run({"env", "TPM2OPENSSL_TCTI=" + tcti, "openssl", "req", "-new", "-provider", "tpm2", "-provider",
                   "default", "-key", kDeviceKey, "-subj", "/CN=device-0001", "-out", p("dev.csr")}));
  ASSERT_TRUE(run({"tpm2_flushcontext", "-T", tcti, "-t"}));
  ASSERT_TRUE(run({"openssl", "x509", "-req", "-in", p("dev.csr"), "-CA", p("devca.pem"), "-CAkey", p("devca.key"),
                   "-set_serial", "7", "-days", "1", "-out", p("dev.pem")}));
  // A device the service does not know: software key, certificate from another CA.
  ASSERT_TRUE(run({"openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                   "-keyout", p("rogue.key"), "-subj", "/CN=rogue", "-days", "2", "-out", p("rogue.pem")}));
  auto devca_pem = ReadFile(p("devca.pem"));
  ASSERT_TRUE(devca_pem.ok());

  auto ports = std::map<int, int>{};
  for (int guest_port : {4433, 4434, 4435, 4436, 4499}) {
    auto port = PickFreeTcpPort();
    ASSERT_TRUE(port.ok());
    ports[guest_port] = *port;
  }
  GuestOptions o;
  o.tpm_socket = Field(started.output, "tpm socket");
  o.tcp_forwards = ports;
  o.work_dir = p("guest");
  o.timeout = std::chrono::seconds(900);
  o.extra_files = GuestProgram(BuildPath("trusted-connection/vtm-tc-serve"));
  o.script =
      "vtm-service-identity -o /run/id || exit 1\n"
      ". /run/id/identity.env\n"
      "echo ID_VM=$VTM_VM_UUID\n"
      "printf 'reading 42\\n' > /tmp/data\n"
      "vtm-sign-data -d /run/id -i /tmp/data -o /tmp/signed --nonce " + std::string(kNonce) +
      " --pcrs sha256:0,10 --env attestation-verdict-sha256=" + std::string(64, 'a') + " && echo SIGNED=" +
      Hex("/tmp/signed") + "\n"
      // A forged label: another VM's UUID, signed with this VM's IK.
      "mkdir /run/forged && cp /run/id/* /run/forged/ && "
      "sed -i \"s/^VTM_VM_UUID=.*/VTM_VM_UUID='" + std::string(kOtherVm) + "'/\" /run/forged/identity.env && "
      "vtm-sign-data -d /run/forged -i /tmp/data -o /tmp/forged && echo FORGED=" + Hex("/tmp/forged") + "\n"
      "cat > /run/devca.pem <<'PEM'\n" + *devca_pem + "PEM\n"
      // Stock s_server (OpenSSL 3.0 + tpm2-openssl 1.1.1) signs with the vTPM key only when the
      // tpm2 provider is preferred, and then also verifies the client's signature in the vTPM,
      // which runs out of TPM object slots (TPM_RC_OBJECT_MEMORY): it cannot demand a client
      // certificate (-Verify) here. See docs/trusted-connection.md "Limits".
      "tls='-provider tpm2 -provider default -propquery ?provider=tpm2,tpm2.digest!=yes -tls1_3 -num_tickets 0 -rev'\n"
      "openssl s_server $tls -key \"$VTM_KEY_URI\" -cert /run/id/fullchain.pem -accept 4433 >/tmp/ik.log 2>&1 &\n"
      // The same vTPM's AK with its certificate (same CA, VM and service): not the IK.
      "tpm2_nvread 0x01C10002 -C o -o /tmp/ak.der && openssl x509 -inform DER -in /tmp/ak.der -out /tmp/ak.pem && "
      "cat /tmp/ak.pem /run/id/ca-chain.pem > /run/ak-full.pem\n"
      "openssl s_server $tls -key handle:0x81000002 -cert /run/ak-full.pem -accept 4434 >/tmp/ak.log 2>&1 &\n"
      // vtm-tc-serve: the IK as server key with only its signature in the vTPM, so it verifies
      // the device's CertificateVerify in software and demands a device certificate; answers
      // attestation challenges with tpm2_quote by the AK on the session's nonce.
      "vtm-tc-serve --port 4435 --cert /run/id/fullchain.pem --key \"$VTM_KEY_URI\" --device-ca /run/devca.pem "
      "--no-crl --reverse --timeout-ms 300000 >/tmp/serve.log 2>&1 &\n"
      // The same as a TLS-terminating front for a plain backend in the VM (busybox nc + tr).
      "nc -ll -p 8080 -e tr a-z A-Z &\n"
      "vtm-tc-serve --port 4436 --cert /run/id/fullchain.pem --key \"$VTM_KEY_URI\" --device-ca /run/devca.pem "
      "--no-crl --forward 127.0.0.1:8080 --timeout-ms 300000 >/tmp/front.log 2>&1 &\n"
      "i=0; while [ $i -lt 600 ]; do\n"
      "  [ $(netstat -ltn | grep -cE ':(443[3456]|8080) ') -eq 5 ] && break; sleep 0.1; i=$((i+1)); done\n"
      "echo TC-READY\n"
      "nc -l -p 4499 >/dev/null\n"
      "echo '--- ik server'; cat /tmp/ik.log; echo '--- ak server'; cat /tmp/ak.log; "
      "echo '--- vtm-tc-serve'; cat /tmp/serve.log; echo '--- vtm-tc-serve --forward'; cat /tmp/front.log\n";
  GuestRun guest;
  std::thread guest_thread([&] { guest = RunGuest(o); });
  // Releases the guest from its wait (it powers off) and joins, also when an assertion failed.
  auto release_guest = [&] {
    if (!guest_thread.joinable()) return;
    (void)RunCommand({"bash", "-c", "echo done >/dev/tcp/127.0.0.1/" + std::to_string(ports[4499])});
    guest_thread.join();
  };
  struct AtExit {
    std::function<void()> f;
    ~AtExit() { f(); }
  } at_exit{[&] {
    release_guest();
    if (::testing::Test::HasFailure()) ADD_FAILURE() << "the guest's side:\n" << guest.Describe();
  }};
  ASSERT_TRUE(WaitForConsole(p("guest/console.log"), "TC-READY", std::chrono::seconds(400)))
      << ReadFile(p("guest/console.log")).value();

  tc::ConnectOptions good;
  good.port = ports[4433];
  good.device.certificate_chain_pem = ReadFile(p("dev.pem")).value();
  good.device.key_uri = kDeviceKey;
  good.device.tcti = tcti;
  good.expect.trusted_ca_pem = ca.output;
  good.expect.crls = {crl.output};
  good.expect.vm_uuid = vm;
  good.expect.service = kService;
  good.timeout = std::chrono::seconds(120);  // TCG guest: a TPM signature takes a while

  auto connect = [](const tc::ConnectOptions& opts) -> Result<std::unique_ptr<tc::TrustedConnection>> {
    VTM_ASSIGN_OR_RETURN(auto connector, tc::TrustedConnector::Create(opts));
    return connector->Connect();
  };


  {  // Mutual TLS 1.3, the device key in the device TPM, the service key the vTPM's IK.
    auto conn = connect(good);
    if (!conn.ok()) {
      release_guest();  // the guest prints its servers' logs on the way out
      FAIL() << conn.error().ToString() << "\n" << guest.Describe();
    }
    EXPECT_EQ((*conn)->service().vm_uuid, vm);
    EXPECT_EQ((*conn)->service().service, kService);
    ASSERT_TRUE((*conn)->Write("hello service\n").ok());
    auto answer = (*conn)->ReadUntil('\n', 4096);
    ASSERT_TRUE(answer.ok()) << answer.error().ToString();
    EXPECT_EQ(*answer, "ecivres olleh\n");
  }
  {  // The CLI, as a device maker would run it.
    auto cli = RunCommand({BuildPath("trusted-connection/vtm-connect"), "connect", "--port",
                           std::to_string(ports[4433]), "--cert", p("dev.pem"), "--key", kDeviceKey, "--tcti", tcti,
                           "--ca", p("ca.pem"), "--no-crl", "--expect-vm", vm, "--expect-service", kService, "--send",
                           "cli", "--timeout-ms", "120000"});
    EXPECT_EQ(cli.exit_code, 0) << cli.output;
    EXPECT_NE(cli.output.find("ilc"), std::string::npos) << cli.output;
  }
  {  // The client refuses the IK certificate of another VM / another service.
    tc::ConnectOptions o2 = good;
    o2.expect.vm_uuid = kOtherVm;
    auto r = connect(o2);
    ASSERT_FALSE(r.ok());
    EXPECT_NE(r.error().message().find("is for VM " + vm + ", not the expected VM " + kOtherVm), std::string::npos)
        << r.error().ToString();
    o2 = good;
    o2.expect.service = "billing";
    r = connect(o2);
    ASSERT_FALSE(r.ok());
    EXPECT_NE(r.error().message().find("not the expected service 'billing'"), std::string::npos) << r.error().ToString();
  }
  {  // A chain from a CA the device does not trust.
    tc::ConnectOptions o2 = good;
    o2.expect.trusted_ca_pem = ReadFile(p("rogue.pem")).value();
    o2.expect.crls.clear();
    o2.expect.allow_missing_crl = true;
    auto r = connect(o2);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.error().code(), ErrorCode::kPermissionDenied);
    EXPECT_NE(r.error().message().find("does not chain to a trusted CA"), std::string::npos) << r.error().ToString();
  }
  {  // A server key that is not the vTPM's IK: the AK, with its (genuine, same VM) certificate.
    tc::ConnectOptions o2 = good;
    o2.port = ports[4434];
    auto r = connect(o2);
    ASSERT_FALSE(r.ok());
    EXPECT_NE(r.error().message().find("not a vTPM IK certificate"), std::string::npos) << r.error().ToString();
  }
  // vtm-tc-serve in the guest: the service checks the device (issue 9: "the service refuses a
  // device without a valid key"), and deep attestation over the same connection, bound to it.
  tc::ConnectOptions svc = good;
  svc.port = ports[4435];
  {  // A device from a CA the service does not trust: the TLS 1.3 client finishes its side, the
     // service's refusal arrives as an alert on the first read.
    tc::ConnectOptions rogue = svc;
    rogue.device.certificate_chain_pem = ReadFile(p("rogue.pem")).value();
    rogue.device.key_uri = p("rogue.key");
    rogue.device.tcti.clear();
    auto conn = connect(rogue);
    Status refused = conn.ok() ? (*conn)->Write("let me in\n") : conn.error();
    if (refused.ok()) {
      auto r = (*conn)->ReadUntil('\n', 4096);
      refused = r.ok() ? Status(Error(ErrorCode::kInternal, "the service answered: " + *r)) : r.error();
    }
    ASSERT_FALSE(refused.ok());
    EXPECT_EQ(refused.error().code(), ErrorCode::kPermissionDenied) << refused.error().ToString();
    EXPECT_NE(refused.error().message().find("the service refused this device"), std::string::npos)
        << refused.error().ToString();
  }
  {  // No device certificate at all, with a tool we did not write.
    auto s_client = RunCommand({"bash", "-c",
                                "echo hi | timeout 120 openssl s_client -tls1_3 -quiet -connect 127.0.0.1:" +
                                    std::to_string(ports[4435]) + " 2>&1"});
    EXPECT_NE(s_client.output.find("alert certificate required"), std::string::npos) << s_client.output;
    EXPECT_EQ(s_client.output.find("ih"), std::string::npos) << s_client.output;
  }
  tc::HostAttestationEndpoint host;
  host.server = "127.0.0.1:" + endpoint[1].str();
  auto verifier_creds =
      ReadTlsCredentialFiles(p("device-verifier.pem"), p("device-verifier.key"), p("ca.pem"));
  ASSERT_TRUE(verifier_creds.ok()) << verifier_creds.error().ToString();
  host.credentials = std::move(*verifier_creds);
  host.timeout = std::chrono::seconds(120);
  std::unique_ptr<attest::Verifier> verifier;
  tc::ChallengeExchange first_exchange;
  {  // Session 1: the trusted device's certificate admitted; evidence on this session's nonce,
     // linked by the host; a policy learned from it (trust on first use, as an operator would).
    auto conn = connect(svc);
    ASSERT_TRUE(conn.ok()) << conn.error().ToString();
    auto x = tc::ChallengeService(**conn, std::time(nullptr));
    ASSERT_TRUE(x.ok()) << x.error().ToString();
    ASSERT_TRUE(x->answer.quoted) << x->answer.reason;
    EXPECT_FALSE(x->answer.event_log.empty()) << "the guest's firmware event log did not come along";
    first_exchange = *x;
    auto ev = tc::LinkToHost(**conn, *x, host);
    ASSERT_TRUE(ev.ok()) << ev.error().ToString() << f.VtmdLog();
    EXPECT_EQ(ev->evidence.vtpm().vm_uuid(), vm);
    attest::AttestationPolicy policy = attest::LearnPolicy(ev->evidence.host(), &ev->evidence);
    const std::string manufacturer =
        std::filesystem::path(f.state_dir()).parent_path().string() + "/host-tpm/test-manufacturer-ca.pem";
    policy.add_host_ek_ca_pem(ReadFile(manufacturer).value());
    WriteBytes(p("policy.json"), attest::PolicyToJson(policy));
    auto created_verifier = attest::Verifier::Create(policy);
    ASSERT_TRUE(created_verifier.ok()) << created_verifier.error().ToString();
    verifier = std::move(*created_verifier);
    auto verdict = tc::AppraiseSessionEvidence(**conn, *ev, *verifier, std::time(nullptr));
    EXPECT_TRUE(verdict.ok()) << verdict.error().ToString();
    {  // A policy that expects another guest PCR 0: refused, naming the check, before any data.
      attest::AttestationPolicy other = policy;
      ASSERT_GT(other.guest_pcrs_size(), 0);
      for (auto& ref : *other.mutable_guest_pcrs()) {
        if (ref.pcr() == 0) ref.set_values(0, std::string(64, 'f'));
      }
      auto strict = attest::Verifier::Create(other);
      ASSERT_TRUE(strict.ok());
      auto refused = tc::AppraiseSessionEvidence(**conn, *ev, **strict, std::time(nullptr));
      ASSERT_FALSE(refused.ok());
      EXPECT_EQ(refused.error().code(), ErrorCode::kPermissionDenied);
      EXPECT_NE(refused.error().message().find("not trusted (failed: guest_pcrs)"), std::string::npos)
          << refused.error().ToString();
    }
    ASSERT_TRUE((*conn)->Write("attested\n").ok());
    auto answer = (*conn)->ReadUntil('\n', 4096);
    ASSERT_TRUE(answer.ok()) << answer.error().ToString();
    EXPECT_EQ(*answer, "detsetta\n");
  }
  {  // Session 2: the whole flow before any data; every check passes, including that the
     // attested vTPM is the one whose IK holds this session.
    auto conn = connect(svc);
    ASSERT_TRUE(conn.ok()) << conn.error().ToString();
    auto verdict = tc::AttestService(**conn, host, *verifier, std::time(nullptr));
    ASSERT_TRUE(verdict.ok()) << verdict.error().ToString();
    for (const char* name : {"nonce_match", "nonce_fresh", "host_quote", "merkle_proof", "measured_instance",
                             "vtpm_ak_certificate", "guest_quote", "guest_pcrs", "guest_event_log",
                             "service_identity"}) {
      const attest::Check* c = verdict->Find(name);
      EXPECT_TRUE(c != nullptr && c->passed) << name << "\n" << verdict->ToText();
    }
    ASSERT_TRUE((*conn)->Write("reading 43\n").ok());
    auto answer = (*conn)->ReadUntil('\n', 4096);
    ASSERT_TRUE(answer.ok()) << answer.error().ToString();
    EXPECT_EQ(*answer, "34 gnidaer\n");
  }
  {  // Session 3: session 1's evidence presented here (a relay or replay) is refused as bound
     // to another TLS session, before the host is even asked.
    auto conn = connect(svc);
    ASSERT_TRUE(conn.ok()) << conn.error().ToString();
    auto relayed = tc::LinkToHost(**conn, first_exchange, host);
    ASSERT_FALSE(relayed.ok());
    EXPECT_EQ(relayed.error().code(), ErrorCode::kPermissionDenied);
    EXPECT_NE(relayed.error().message().find("bound to another TLS session"), std::string::npos)
        << relayed.error().ToString();
  }
  {  // vtm-tc-serve --forward: attested through the front, then the backend answers.
    tc::ConnectOptions front = svc;
    front.port = ports[4436];
    auto conn = connect(front);
    ASSERT_TRUE(conn.ok()) << conn.error().ToString();
    auto verdict = tc::AttestService(**conn, host, *verifier, std::time(nullptr));
    ASSERT_TRUE(verdict.ok()) << verdict.error().ToString();
    ASSERT_TRUE((*conn)->Write("hello backend\n").ok());
    auto answer = (*conn)->ReadUntil('\n', 4096);
    ASSERT_TRUE(answer.ok()) << answer.error().ToString();
    EXPECT_EQ(*answer, "HELLO BACKEND\n");
  }
  {  // The CLI: attests, then sends.
    auto cli = RunCommand({BuildPath("trusted-connection/vtm-connect"), "connect", "--port",
                           std::to_string(ports[4435]), "--cert", p("dev.pem"), "--key", kDeviceKey, "--tcti", tcti,
                           "--ca", p("ca.pem"), "--no-crl", "--expect-vm", vm, "--expect-service", kService,
                           "--attest-server", host.server, "--attest-tls-cert", p("device-verifier.pem"),
                           "--attest-tls-key", p("device-verifier.key"), "--attest-tls-ca", p("ca.pem"), "--policy",
                           p("policy.json"), "--send", "cli", "--timeout-ms", "120000"});
    EXPECT_EQ(cli.exit_code, 0) << cli.output;
    EXPECT_NE(cli.output.find("environment is trusted"), std::string::npos) << cli.output;
    std::cout << "vtm-connect with --attest-server:\n" << cli.output;
    EXPECT_NE(cli.output.find("ilc"), std::string::npos) << cli.output;
  }

  // Release the guest and let it power off.
  release_guest();
  ASSERT_TRUE(guest.booted) << guest.Describe();
  std::string out = guest.ScriptOutput();
  EXPECT_EQ(GuestMarker(out, "ID_VM"), vm) << out;

  // Labelled data signed in the guest verifies on the host...
  std::string signed_data = HexToBytes(GuestMarker(out, "SIGNED"));
  ASSERT_FALSE(signed_data.empty()) << guest.Describe();
  tc::SignedDataExpectation e;
  e.trusted_ca_pem = ca.output;
  e.crls = {crl.output};
  e.vm_uuid = vm;
  e.service = kService;
  e.nonce = kNonce;
  auto v = tc::VerifyLabelledData(signed_data, e);
  ASSERT_TRUE(v.ok()) << v.error().ToString();
  EXPECT_EQ(v->content.data, "reading 42\n");
  EXPECT_EQ(v->content.label.vm_uuid, vm);
  bool has_pcr10 = false;
  for (const auto& [k, val] : v->content.label.environment) has_pcr10 |= (k == "pcr.sha256.10" && val.size() == 64);
  EXPECT_TRUE(has_pcr10) << out;
  // ...also with a tool we did not write.
  WriteBytes(p("signed.cms"), signed_data);
  auto ossl = RunCommand({"openssl", "cms", "-verify", "-purpose", "any", "-binary", "-inform", "DER", "-in",
                          p("signed.cms"), "-CAfile", p("ca.pem"), "-out", p("content")});
  EXPECT_EQ(ossl.exit_code, 0) << ossl.output;
  auto cli = RunCommand({BuildPath("trusted-connection/vtm-connect"), "verify", "--in", p("signed.cms"), "--ca",
                         p("ca.pem"), "--no-crl", "--expect-vm", vm, "--nonce", kNonce});
  EXPECT_EQ(cli.exit_code, 0) << cli.output;
  EXPECT_NE(cli.output.find("reading 42"), std::string::npos) << cli.output;

  auto refused = [&](const std::string& data, const tc::SignedDataExpectation& ex, const std::string& reason) {
    auto r = tc::VerifyLabelledData(data, ex);
    ASSERT_FALSE(r.ok()) << "accepted, expected: " << reason;
    EXPECT_NE(r.error().message().find(reason), std::string::npos) << r.error().ToString();
  };
  {  // One flipped bit in the data.
    std::string t = signed_data;
    size_t at = t.find("reading 42");
    ASSERT_NE(at, std::string::npos);
    t[at + 8] = static_cast<char>(t[at + 8] ^ 0x01);
    refused(t, e, "the signature does not verify");
  }
  {  // A changed label.
    std::string t = signed_data;
    size_t at = t.find(std::string("service: ") + kService);
    ASSERT_NE(at, std::string::npos);
    t[at + 9] = 'T';
    refused(t, e, "the signature does not verify");
  }
  refused(HexToBytes(GuestMarker(out, "FORGED")), tc::SignedDataExpectation{ca.output, {crl.output}, false, "", "", ""},
          "the label names VM " + std::string(kOtherVm) + " but the data was signed by the IK of VM " + vm);
  {  // Expected another VM (another VM's certificate signed it), another nonce (replay).
    tc::SignedDataExpectation e2 = e;
    e2.vm_uuid = kOtherVm;
    refused(signed_data, e2, "not the expected VM " + std::string(kOtherVm));
    e2 = e;
    e2.nonce = "ffee";
    refused(signed_data, e2, "a replay of older data");
    e2 = e;
    e2.trusted_ca_pem = ReadFile(p("rogue.pem")).value();
    refused(signed_data, e2, "does not chain to a trusted CA");
  }
  // Revoked: deleting the VM revokes its certificates; the CRL then lists the IK.
  ASSERT_EQ(f.Vtmctl({"stop", "tcguest"}).exit_code, 0);
  auto deleted = f.Vtmctl({"delete", "tcguest"});
  ASSERT_EQ(deleted.exit_code, 0) << deleted.output;
  auto crl2 = f.Vtmctl({"ca", "crl"});
  ASSERT_EQ(crl2.exit_code, 0);
  tc::SignedDataExpectation e3 = e;
  e3.crls = {crl2.output};
  refused(signed_data, e3, "is revoked");
}

}  // namespace
}  // namespace vtm::testing
