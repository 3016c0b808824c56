// vtm-connect: the device side of a trusted connection (ISO/IEC 27071) as a command.
//   connect: mutual TLS 1.3 to a service in a VM, device key in the device TPM, the service's
//            IK certificate checked against the trusted CA, the CRLs, the expected VM and service;
//            then sends lines and prints the service's answers.
//   verify:  checks labelled data signed in a VM with its IK (vtm-sign-data).
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <string>
#include <vector>

#include "vtm/fs.h"
#include "vtm/labelled_data.h"
#include "vtm/trusted_connection.h"

namespace {

constexpr char kUsage[] = R"(usage:
  vtm-connect connect --port P [--host H] --cert DEVICE_CHAIN.pem --key URI [--tcti TCTI]
                      --ca TRUSTED_CA.pem (--crl CRL ... | --no-crl)
                      --expect-vm UUID --expect-service NAME
                      [--send LINE] [--timeout-ms N]
      --key handle:0x81000010 uses a persistent key in the device TPM (tpm2 OpenSSL provider,
      TCTI from --tcti or TPM2OPENSSL_TCTI); a file path uses a software key (tests, anchors).
      Sends LINE (or each line of stdin) and prints one line of answer per line sent.
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

struct Flags {
  std::vector<std::pair<std::string, std::string>> values;
  std::vector<std::string> switches;
  std::string Get(const std::string& name) const {
    for (const auto& [n, v] : values) {
      if (n == name) return v;
    }
    return "";
  }
  std::vector<std::string> All(const std::string& name) const {
    std::vector<std::string> out;
    for (const auto& [n, v] : values) {
      if (n == name) out.push_back(v);
    }
    return out;
  }
  bool Has(const std::string& name) const {
    for (const auto& s : switches) {
      if (s == name) return true;
    }
    return false;
  }
};

bool ParseFlags(int argc, char** argv, const std::vector<std::string>& with_value, const std::vector<std::string>& bare,
                Flags* out, std::string* error) {
  for (int i = 2; i < argc; ++i) {
    std::string a = argv[i];
    bool known = false;
    for (const auto& n : with_value) {
      if (a == n) {
        if (i + 1 >= argc) {
          *error = a + " needs a value";
          return false;
        }
        out->values.emplace_back(a, argv[++i]);
        known = true;
      }
    }
    for (const auto& n : bare) {
      if (a == n) {
        out->switches.push_back(a);
        known = true;
      }
    }
    if (!known) {
      *error = "unknown argument '" + a + "'";
      return false;
    }
  }
  return true;
}

// A positive decimal number, or 0 if it is not one.
int PositiveNumber(const std::string& s) {
  char* end = nullptr;
  long v = std::strtol(s.c_str(), &end, 10);
  return (end != s.c_str() && *end == '\0' && v > 0 && v <= 1000000000) ? static_cast<int>(v) : 0;
}

vtm::Result<std::vector<std::string>> ReadAll(const std::vector<std::string>& paths) {
  std::vector<std::string> out;
  for (const auto& p : paths) {
    VTM_ASSIGN_OR_RETURN(std::string s, vtm::ReadFile(p));
    out.push_back(std::move(s));
  }
  return out;
}

int Connect(int argc, char** argv) {
  Flags f;
  std::string error;
  if (!ParseFlags(argc, argv,
                  {"--host", "--port", "--cert", "--key", "--tcti", "--ca", "--crl", "--expect-vm", "--expect-service",
                   "--send", "--timeout-ms"},
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
  if (!ParseFlags(argc, argv, {"--in", "--ca", "--crl", "--expect-vm", "--expect-service", "--nonce", "--data-out"},
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
