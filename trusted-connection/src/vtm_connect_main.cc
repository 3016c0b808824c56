// vtm-connect: the device side of a trusted connection (ISO/IEC 27071) as a command.
//   connect: mutual TLS 1.3 to a service in a VM, device key in the device TPM, the service's
//            IK certificate checked against the trusted CA, the CRLs, the expected VM and service;
//            then sends lines and prints the service's answers.
//   verify:  checks labelled data signed in a VM with its IK (vtm-sign-data).
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <iostream>
#include <string>
#include <vector>

#include "internal/cli_flags.h"
#include "vtm/fs.h"
#include "vtm/labelled_data.h"
#include "vtm/session_attestation.h"
#include "vtm/trusted_connection.h"

namespace {

using vtm::tc::cli::Flags;
using vtm::tc::cli::ParseFlags;
using vtm::tc::cli::PositiveNumber;
using vtm::tc::cli::ReadAll;

constexpr char kUsage[] = R"(usage:
  vtm-connect connect --port P [--host H] --cert DEVICE_CHAIN.pem --key URI [--tcti TCTI]
                      --ca TRUSTED_CA.pem (--crl CRL ... | --no-crl)
                      --expect-vm UUID --expect-service NAME
                      [--send LINE] [--timeout-ms N]
                      [--attest-server HOST:PORT --attest-tls-cert C.pem --attest-tls-key K.pem
                       --attest-tls-ca HOST_CA.pem --policy POLICY.json [--attest-pcrs SEL]]
      --key handle:0x81000010 uses a persistent key in the device TPM (tpm2 OpenSSL provider,
      TCTI from --tcti or TPM2OPENSSL_TCTI); a file path uses a software key (tests, anchors).
      Sends LINE (or each line of stdin) and prints one line of answer per line sent.
      With --attest-server, first asks the service for deep-attestation evidence bound to this
      TLS session (its vTPM quotes on a nonce from the session's exporter), has the host's
      attestation endpoint (vtmd --attest-listen) link it, appraises it against POLICY.json
      (vtm-verify's policy format) and sends nothing unless every check passes.
  vtm-connect verify --in SIGNED.cms --ca TRUSTED_CA.pem (--crl CRL ... | --no-crl)
                     [--expect-vm UUID] [--expect-service NAME] [--nonce HEX] [--data-out FILE]
      Checks signature, chain, revocation and label of data signed by vtm-sign-data; prints the
      label and writes the data to FILE (or stdout).
exit status: 0 done; 1 refused (the reason on stderr); 2 usage; 3 unreachable or failed
)";

int Usage(const std::string& why) {
  std::cerr << "vtm-connect: " << why << "\n" << kUsage;
  return 2;
}

int Fail(const vtm::Error& e, const std::string& what) {
  std::cerr << "vtm-connect: " << what << ": " << e.message() << "\n";
  switch (e.code()) {
    case vtm::ErrorCode::kPermissionDenied:
    case vtm::ErrorCode::kDataLoss:
    case vtm::ErrorCode::kInvalidArgument:
      return 1;
    default:
      return 3;
  }
}

// Deep attestation of the service over conn before any data (vtm/session_attestation.h).
int Attest(const Flags& f, vtm::tc::TrustedConnection& conn) {
  for (const char* required : {"--attest-tls-cert", "--attest-tls-key", "--attest-tls-ca", "--policy"}) {
    if (f.Get(required).empty()) return Usage(std::string("--attest-server needs ") + required);
  }
  auto creds = vtm::ReadTlsCredentialFiles(f.Get("--attest-tls-cert"), f.Get("--attest-tls-key"), f.Get("--attest-tls-ca"));
  if (!creds.ok()) return Fail(creds.error(), "reading the attestation endpoint credentials");
  auto policy_json = vtm::ReadFile(f.Get("--policy"));
  if (!policy_json.ok()) return Fail(policy_json.error(), "reading the policy");
  auto policy = vtm::attest::ParsePolicyJson(*policy_json);
  if (!policy.ok()) return Fail(policy.error(), "reading the policy " + f.Get("--policy"));
  auto verifier = vtm::attest::Verifier::Create(*policy);
  if (!verifier.ok()) return Fail(verifier.error(), "loading the policy");
  vtm::tc::HostAttestationEndpoint host{f.Get("--attest-server"), std::move(*creds)};
  const std::string pcrs = f.Get("--attest-pcrs").empty() ? vtm::tc::kDefaultPcrSelection : f.Get("--attest-pcrs");
  auto verdict = vtm::tc::AttestService(conn, host, **verifier, std::time(nullptr), pcrs);
  if (!verdict.ok()) return Fail(verdict.error(), "attesting the service");
  std::cerr << "vtm-connect: the service's environment is trusted (deep attestation bound to this TLS session, "
            << verdict->checks.size() << " checks passed)\n";
  return 0;
}

int Connect(int argc, char** argv) {
  Flags f;
  std::string error;
  if (!ParseFlags(argc, argv, 2,
                  {"--host", "--port", "--cert", "--key", "--tcti", "--ca", "--crl", "--expect-vm", "--expect-service",
                   "--send", "--timeout-ms", "--attest-server", "--attest-tls-cert", "--attest-tls-key",
                   "--attest-tls-ca", "--policy", "--attest-pcrs"},
                  {"--no-crl"}, &f, &error)) {
    return Usage(error);
  }
  for (const char* required : {"--port", "--cert", "--key", "--ca", "--expect-vm", "--expect-service"}) {
    if (f.Get(required).empty()) return Usage(std::string(required) + " is required");
  }
  vtm::tc::ConnectOptions o;
  if (!f.Get("--host").empty()) o.host = f.Get("--host");
  o.port = PositiveNumber(f.Get("--port"));
  auto chain = vtm::ReadFile(f.Get("--cert"));
  if (!chain.ok()) return Fail(chain.error(), "reading the device certificate");
  o.device.certificate_chain_pem = *chain;
  o.device.key_uri = f.Get("--key");
  o.device.tcti = f.Get("--tcti");
  auto ca = vtm::ReadFile(f.Get("--ca"));
  if (!ca.ok()) return Fail(ca.error(), "reading the trusted CA");
  o.expect.trusted_ca_pem = *ca;
  auto crls = ReadAll(f.All("--crl"));
  if (!crls.ok()) return Fail(crls.error(), "reading a CRL");
  o.expect.crls = *crls;
  o.expect.allow_missing_crl = f.Has("--no-crl");
  o.expect.vm_uuid = f.Get("--expect-vm");
  o.expect.service = f.Get("--expect-service");
  if (!f.Get("--timeout-ms").empty()) {
    int ms = PositiveNumber(f.Get("--timeout-ms"));
    if (ms == 0) return Usage("--timeout-ms wants a positive number of milliseconds");
    o.timeout = std::chrono::milliseconds(ms);
  }

  auto connector = vtm::tc::TrustedConnector::Create(o);
  if (!connector.ok()) return Fail(connector.error(), "setting up the connection");
  auto conn = (*connector)->Connect();
  if (!conn.ok()) return Fail(conn.error(), "connecting to " + o.host + ":" + std::to_string(o.port));
  std::cerr << "vtm-connect: connected to service '" << (*conn)->service().service << "' in VM "
            << (*conn)->service().vm_uuid << " (TLS 1.3, key exchange " << (*conn)->key_exchange_group() << ")\n";
  if (!f.Get("--attest-server").empty()) {
    int attested = Attest(f, **conn);
    if (attested != 0) return attested;
  }
  std::vector<std::string> lines;
  if (!f.Get("--send").empty()) {
    lines.push_back(f.Get("--send"));
  } else {
    for (std::string line; std::getline(std::cin, line);) lines.push_back(line);
  }
  for (const auto& line : lines) {
    auto w = (*conn)->Write(line + "\n");
    if (!w.ok()) return Fail(w.error(), "sending");
    auto answer = (*conn)->ReadUntil('\n', 1 << 20);
    if (!answer.ok()) return Fail(answer.error(), "receiving");
    if (answer->empty()) {
      std::cerr << "vtm-connect: the service closed the connection\n";
      return 3;
    }
    std::cout << *answer << std::flush;
  }
  return 0;
}

int Verify(int argc, char** argv) {
  Flags f;
  std::string error;
  if (!ParseFlags(argc, argv, 2, {"--in", "--ca", "--crl", "--expect-vm", "--expect-service", "--nonce", "--data-out"},
                  {"--no-crl"}, &f, &error)) {
    return Usage(error);
  }
  for (const char* required : {"--in", "--ca"}) {
    if (f.Get(required).empty()) return Usage(std::string(required) + " is required");
  }
  auto in = vtm::ReadFile(f.Get("--in"));
  if (!in.ok()) return Fail(in.error(), "reading the signed data");
  vtm::tc::SignedDataExpectation e;
  auto ca = vtm::ReadFile(f.Get("--ca"));
  if (!ca.ok()) return Fail(ca.error(), "reading the trusted CA");
  e.trusted_ca_pem = *ca;
  auto crls = ReadAll(f.All("--crl"));
  if (!crls.ok()) return Fail(crls.error(), "reading a CRL");
  e.crls = *crls;
  e.allow_missing_crl = f.Has("--no-crl");
  e.vm_uuid = f.Get("--expect-vm");
  e.service = f.Get("--expect-service");
  e.nonce = f.Get("--nonce");
  auto v = vtm::tc::VerifyLabelledData(*in, e);
  if (!v.ok()) return Fail(v.error(), "verifying " + f.Get("--in"));
  const vtm::tc::Label& l = v->content.label;
  std::cerr << "vtm-connect: verified: signed by " << v->signer_subject << "\n"
            << "vm: " << l.vm_uuid << "\nservice: " << l.service << "\nik-cert-sha256: " << l.ik_cert_sha256
            << "\ncreated: " << l.created << "\n";
  if (!l.nonce.empty()) std::cerr << "nonce: " << l.nonce << "\n";
  for (const auto& [name, value] : l.environment) std::cerr << "env." << name << ": " << value << "\n";
  if (!f.Get("--data-out").empty()) {
    auto w = vtm::WriteFileAtomic(f.Get("--data-out"), v->content.data, 0644);
    if (!w.ok()) return Fail(w.error(), "writing the data");
  } else {
    std::cout << v->content.data << std::flush;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) return Usage("no command");
  std::string cmd = argv[1];
  if (cmd == "connect") return Connect(argc, argv);
  if (cmd == "verify") return Verify(argc, argv);
  if (cmd == "--help" || cmd == "-h") {
    std::cout << kUsage;
    return 0;
  }
  return Usage("unknown command '" + cmd + "'");
}
