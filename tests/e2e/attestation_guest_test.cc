// Deep attestation end to end with a real QEMU guest (issue 6): vtmd launches the VM's vTPM
// (measured into its log), the guest quotes its vTPM with its AK over PCRs 0-7 and 10 on the
// verifier's nonces (tpm2-tools in the guest, `tpm2_quote -m -s -o`) and hands over its firmware
// event log (SeaBIOS writes one, Linux exposes it); `vtmctl attest deep` links each guest quote
// to a host quote; `vtm-verify` learns a policy from the first evidence and accepts the second
// along the whole chain. Tools we did not write agree: tpm2_checkquote accepts the host quote
// (over the Merkle root) and the guest quote (with the AK certificate's key), tpm2_eventlog
// replays the guest log to the quoted PCRs. The same evidence is refused for another nonce,
// and with an EK certificate for the very same key that vtm-create-certs (issue_ek_cert) got.
#include <gtest/gtest.h>
#include <google/protobuf/struct.pb.h>
#include <google/protobuf/util/json_util.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "attestation.pb.h"
#include "qemu_guest.h"
#include "test_env.h"
#include "tpm2_tools.h"
#include "vtm/fs.h"
#include "vtm/hex.h"
#include "vtm/merkle.h"
#include "vtm/quote.h"
#include "vtm/tpm_structures.h"
#include "vtm/verifier.h"
#include "vtm/x509.h"
#include "vtmd_fixture.h"

namespace vtm::testing {
namespace {

void WriteBytes(const std::string& path, const std::string& bytes) { std::ofstream(path, std::ios::binary) << bytes; }

// check name -> passed, from `vtm-verify --json`.
std::map<std::string, bool> ChecksOf(const std::string& json) {
  google::protobuf::Struct verdict;
  std::map<std::string, bool> out;
  if (!google::protobuf::util::JsonStringToMessage(json, &verdict).ok()) return out;
  auto checks = verdict.fields().find("checks");
  if (checks == verdict.fields().end()) return out;
  for (const auto& c : checks->second.list_value().values()) {
    const auto& fields = c.struct_value().fields();
    auto name = fields.find("name");
    auto passed = fields.find("passed");
    if (name != fields.end() && passed != fields.end()) out[name->second.string_value()] = passed->second.bool_value();
  }
  return out;
}

std::set<std::string> Failed(const std::map<std::string, bool>& checks) {
  std::set<std::string> out;
  for (const auto& [name, passed] : checks) {
    if (!passed) out.insert(name);
  }
  return out;
}

// The "  N : 0x..." lines of tpm2_eventlog's final "pcrs: sha256:" block: PCR -> lower-case hex.
std::map<int, std::string> EventlogSha256Pcrs(const std::string& out) {
  std::map<int, std::string> pcrs;
  const size_t block = out.rfind("\npcrs:");
  if (block == std::string::npos) return pcrs;
  const size_t bank = out.find("sha256:", block);
  if (bank == std::string::npos) return pcrs;
  std::istringstream in(out.substr(bank + 7));
  std::string line;
  std::getline(in, line);  // the rest of the "sha256:" line
  while (std::getline(in, line)) {
    const size_t colon = line.find(':');
    const size_t x = line.find("0x");
    if (colon == std::string::npos || x == std::string::npos) break;  // the next bank
    std::string value = line.substr(x + 2);
    for (char& c : value) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    pcrs[std::stoi(line.substr(0, colon))] = value;
  }
  return pcrs;
}

class AttestationGuestTest : public GuestImageTest {};

TEST_F(AttestationGuestTest, VerifierAcceptsTheWholeChainFromARealGuestAndOutsideToolsAgree) {
  VtmdFixture f;
  ASSERT_TRUE(f.StartVtmd()) << f.VtmdLog();
  ASSERT_EQ(f.Vtmctl({"create", "--name", "ra-guest"}).exit_code, 0) << f.VtmdLog();
  auto started = f.Vtmctl({"start", "ra-guest"});
  ASSERT_EQ(started.exit_code, 0) << started.output << f.VtmdLog();
  const std::string vm_uuid = Field(f.Vtmctl({"show", "ra-guest"}).output, "uuid");
  ASSERT_EQ(vm_uuid.size(), 36u);

  const std::string verify = BuildPath("attest/vtm-verify");
  std::string nonce[2];
  for (auto& n : nonce) {
    auto issued = RunCommand({verify, "nonce"});
    ASSERT_EQ(issued.exit_code, 0) << issued.output;
    n = issued.output.substr(0, issued.output.find_first_of("\r\n"));
    ASSERT_EQ(n.size(), 64u) << issued.output;
  }

  // In the guest: one quote first so that IMA has measured tpm2_quote and its libraries before
  // the quotes that count (PCR 10 then stays put between them), the firmware log, two quotes.
  GuestOptions o;
  o.tpm_socket = Field(started.output, "tpm socket");
  o.timeout = std::chrono::seconds(300);
  o.script =
      "hex() { od -An -tx1 -v $1 | tr -d ' \\n'; }\n"
      "q() { tpm2_quote -c 0x81000002 -l sha256:0,1,2,3,4,5,6,7,10 -q $1 -g sha256 "
      "-m /tmp/$2.msg -s /tmp/$2.sig -o /tmp/$2.pcrs >/dev/null && "
      "echo $2MSG=$(hex /tmp/$2.msg) && echo $2SIG=$(hex /tmp/$2.sig) && echo $2PCRS=$(hex /tmp/$2.pcrs); }\n"
      "q 00 W\n"
      "cat /sys/kernel/security/tpm0/binary_bios_measurements > /tmp/log && echo LOG=$(hex /tmp/log)\n"
      "q " + nonce[0] + " A\n"
      "q " + nonce[1] + " B\n";
  GuestRun run = RunGuest(o);
  ASSERT_TRUE(run.booted) << run.Describe();
  ASSERT_EQ(run.exit_code, 0) << run.Describe();
  const std::string out = run.ScriptOutput();

  TempDir dir;
  auto p = [&](const std::string& n) { return dir.path() + "/" + n; };
  const std::string guest_log = HexToBytes(GuestMarker(out, "LOG"));
  ASSERT_FALSE(guest_log.empty()) << "the guest exposes no firmware event log\n" << out;
  WriteBytes(p("guest.log"), guest_log);
  for (const char* q : {"A", "B"}) {
    for (const char* part : {"MSG", "SIG", "PCRS"}) {
      const std::string bytes = HexToBytes(GuestMarker(out, std::string(q) + part));
      ASSERT_FALSE(bytes.empty()) << q << part << "\n" << out;
      WriteBytes(p(std::string(q) + "." + part), bytes);
    }
  }

  // Deep evidence for each guest quote.
  for (int i = 0; i < 2; ++i) {
    const std::string q = i == 0 ? "A" : "B";
    auto ev = f.Vtmctl({"--json", "attest", "deep", "ra-guest", "--nonce", nonce[i], "--quote-message", p(q + ".MSG"),
                        "--quote-signature", p(q + ".SIG"), "--quote-pcrs", p(q + ".PCRS"), "--guest-event-log",
                        p("guest.log"), "--output", p(q + ".pb")});
    ASSERT_EQ(ev.exit_code, 0) << ev.output << f.VtmdLog();
    EXPECT_NE(ev.output.find("\"kind\": \"deep\""), std::string::npos) << ev.output;
  }

  // A policy learned from the first (trust on first use, as an operator would), plus the
  // host EK's manufacturer CA (here vtmd's test manufacturer).
  auto learned = RunCommand({verify, "learn", "--deep", "--evidence", p("A.pb")});
  ASSERT_EQ(learned.exit_code, 0) << learned.output;
  auto policy = attest::ParsePolicyJson(learned.output);
  ASSERT_TRUE(policy.ok()) << policy.error().ToString() << "\n" << learned.output;
  const std::string manufacturer =
      std::filesystem::path(f.state_dir()).parent_path().string() + "/host-tpm/test-manufacturer-ca.pem";
  auto manufacturer_pem = ReadFile(manufacturer);
  ASSERT_TRUE(manufacturer_pem.ok()) << manufacturer;
  policy->add_host_ek_ca_pem(*manufacturer_pem);
  EXPECT_EQ(policy->guest_pcrs_size(), 9) << learned.output;  // sha256 0-7 and 10
  WriteBytes(p("policy.json"), attest::PolicyToJson(*policy));

  // The second evidence is accepted along every link of the chain.
  auto accepted = RunCommand(
      {verify, "deep", "--evidence", p("B.pb"), "--policy", p("policy.json"), "--nonce", nonce[1], "--json"});
  EXPECT_EQ(accepted.exit_code, 0) << accepted.output;
  auto checks = ChecksOf(accepted.output);
  for (const char* name : {"evidence_format", "nonce_match", "nonce_fresh", "host_tpm_kind", "host_ek_certificate",
                           "host_ak_binding", "host_ca_certify", "host_quote", "merkle_proof", "host_pcrs",
                           "measurement_log", "measured_instance", "vtpm_ek_certificate", "vtpm_ak_certificate",
                           "guest_quote", "guest_pcrs", "guest_event_log"}) {
    EXPECT_TRUE(checks.count(name) == 1 && checks[name]) << name << "\n" << accepted.output;
  }
  EXPECT_NE(accepted.output.find("replays to the guest's quoted PCRs"), std::string::npos) << accepted.output;

  attest::DeepEvidence deep;
  ASSERT_TRUE(deep.ParseFromString(ReadFile(p("B.pb")).value()));
  EXPECT_EQ(deep.vtpm().vm_uuid(), vm_uuid);

  // tpm2_checkquote accepts the host quote with the Merkle root as qualifying data...
  auto ek_name = TpmNameOfPublic(deep.vtpm().ek_public());
  auto ak_name = TpmNameOfPublic(deep.vtpm().ak_public());
  ASSERT_TRUE(ek_name.ok() && ak_name.ok());
  auto root = attest::MerkleRootFromProof(
      attest::DeepLeaf(HexToBytes(nonce[1]), vm_uuid, *ek_name, *ak_name, deep.guest_quote().attest()),
      deep.host().proof());
  ASSERT_TRUE(root.ok()) << root.error().ToString();
  auto host_check = Tpm2Checkquote(deep.host().host_quote(), deep.host().host().ak_public(), *root, dir.path());
  EXPECT_EQ(host_check.exit_code, 0) << host_check.output;
  // ...and the guest's own tpm2_quote files with the key of the AK certificate vtmd issued.
  WriteBytes(p("akpub.pem"), f.CertificatePublicKeyPem("ra-guest", "ak"));
  auto guest_check = RunCommand({"tpm2_checkquote", "-u", p("akpub.pem"), "-m", p("B.MSG"), "-s", p("B.SIG"), "-f",
                                 p("B.PCRS"), "-g", "sha256", "-q", nonce[1]});
  EXPECT_EQ(guest_check.exit_code, 0) << guest_check.output;

  // tpm2_eventlog replays the guest's firmware log to the PCR values the guest quoted.
  auto quoted = attest::ParseQuote(deep.guest_quote());
  ASSERT_TRUE(quoted.ok()) << quoted.error().ToString();
  auto replayed = RunCommand({"tpm2_eventlog", p("guest.log")});
  ASSERT_EQ(replayed.exit_code, 0) << replayed.output;
  auto tool_pcrs = EventlogSha256Pcrs(replayed.output);
  int compared = 0;
  for (uint32_t pcr = 0; pcr <= 7; ++pcr) {
    const std::string* value = quoted->pcrs.Find(TPM2_ALG_SHA256, pcr);
    ASSERT_NE(value, nullptr);
    if (tool_pcrs.count(static_cast<int>(pcr)) == 0) continue;  // a PCR the firmware never extended
    EXPECT_EQ(tool_pcrs[static_cast<int>(pcr)], HexEncode(*value)) << "PCR " << pcr;
    ++compared;
  }
  EXPECT_GE(compared, 4) << replayed.output.substr(replayed.output.size() > 1500 ? replayed.output.size() - 1500 : 0);

  // The first evidence answered another nonce: a replay, refused for that alone.
  auto replay = RunCommand(
      {verify, "deep", "--evidence", p("A.pb"), "--policy", p("policy.json"), "--nonce", nonce[1], "--json"});
  EXPECT_EQ(replay.exit_code, 1) << replay.output;
  EXPECT_EQ(Failed(ChecksOf(replay.output)), std::set<std::string>{"nonce_match"}) << replay.output;

  // The same vTPM EK key certified through swtpm_setup's certificate tool path (root may ask;
  // the host CA signs it) is refused as a vTPM EK certificate, and nothing else changes.
  auto ek = ParseTpm2bPublic(deep.vtpm().ek_public(), "vTPM EK");
  ASSERT_TRUE(ek.ok()) << ek.error().ToString();
  std::string ek_param;
  if (ek->publicArea.type == TPM2_ALG_ECC) {
    const auto& pt = ek->publicArea.unique.ecc;
    ek_param = "x=" + HexEncode(std::string(reinterpret_cast<const char*>(pt.x.buffer), pt.x.size)) +
               ",y=" + HexEncode(std::string(reinterpret_cast<const char*>(pt.y.buffer), pt.y.size));
  } else {
    const auto& n = ek->publicArea.unique.rsa;
    ek_param = HexEncode(std::string(reinterpret_cast<const char*>(n.buffer), n.size));
  }
  WriteBytes(p("tool.conf"), "socket = " + f.socket() + "\n");
  auto outside = RunCommand({BuildPath("vtm-manager/vtm-create-certs"), "--type", "ek", "--ek", ek_param, "--dir",
                             dir.path(), "--configfile", p("tool.conf")});
  ASSERT_EQ(outside.exit_code, 0) << outside.output;
  auto outside_cert = ReadFile(p("ek.cert"));
  ASSERT_TRUE(outside_cert.ok());
  attest::DeepEvidence swapped = deep;
  swapped.mutable_vtpm()->set_ek_certificate(*outside_cert);
  WriteBytes(p("swapped.pb"), swapped.SerializeAsString());
  auto refused = RunCommand(
      {verify, "deep", "--evidence", p("swapped.pb"), "--policy", p("policy.json"), "--nonce", nonce[1], "--json"});
  EXPECT_EQ(refused.exit_code, 1) << refused.output;
  EXPECT_EQ(Failed(ChecksOf(refused.output)), std::set<std::string>{"vtpm_ek_certificate"}) << refused.output;
  EXPECT_NE(refused.output.find("swtpm_setup certificate tool"), std::string::npos) << refused.output;
}

}  // namespace
}  // namespace vtm::testing
