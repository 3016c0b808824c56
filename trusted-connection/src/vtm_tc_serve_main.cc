// vtm-tc-serve: the service's end of an ISO/IEC 27071 trusted connection, run in the VM. Mutual
// TLS 1.3 with the vTPM's IK (only its signature in the vTPM, vtm/trusted_service.h), devices
// admitted only with a certificate from a trusted device CA, and the device's attestation
// challenge answered with a quote of the vTPM by its AK (tpm2_quote) on the session's nonce,
// plus the guest's firmware event log. Behind it, either a plain TCP backend in the VM
// (--forward: a TLS-terminating front for an existing service) or a line-reversing echo
// (--reverse: tests, demos); a service may also embed vtm::tc::TrustedService itself.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <cstdlib>
#include <iostream>
#include <string>
#include <vector>

#include "internal/cli_flags.h"
#include "vtm/fs.h"
#include "vtm/hex.h"
#include "vtm/net.h"
#include "vtm/trusted_service.h"

namespace {

using vtm::tc::cli::Flags;

constexpr char kUsage[] = R"(usage:
  vtm-tc-serve --port P [--address A] --cert FULLCHAIN.pem --key URI [--tcti TCTI]
               --device-ca CA.pem (--device-crl CRL ... | --no-crl)
               [--ak HANDLE] [--event-log FILE] [--connections N] [--timeout-ms N]
               (--forward HOST:PORT | --reverse)
      --cert/--key: the IK through the tpm2 provider (vtm-service-identity writes both:
      fullchain.pem, key-uri = handle:0x81000003). Devices must present a certificate chaining
      to --device-ca. An attestation challenge is answered with tpm2_quote by the AK (--ak,
      default 0x81000002; tpm2-tools reach the vTPM through TPM2TOOLS_TCTI) and the firmware log
      (--event-log, default /sys/kernel/security/tpm0/binary_bios_measurements, if readable).
      --forward: pass each device's bytes to a plain TCP backend (e.g. 127.0.0.1:8080 in the VM)
      and back; a challenge is answered only before the device's first data byte.
      --reverse: answer each line with the line reversed (challenges at any line start).
      --connections N: stop after N devices were admitted.
exit status: 0 done; 2 usage; 3 cannot start
)";

int Usage(const std::string& why) {
  std::cerr << "vtm-tc-serve: " << why << "\n" << kUsage;
  return 2;
}

// Answers a challenge and logs what; false if the connection cannot go on.
bool Answer(vtm::tc::ServiceConnection& conn, const std::string& first, const vtm::tc::Quoter& quoter,
            const std::string& event_log) {
  auto answered = vtm::tc::AnswerAttestationChallenge(conn, first, quoter, event_log);
  if (!answered.ok()) {
    std::cerr << "vtm-tc-serve: malformed attestation challenge, connection closed: " << answered.error().message()
              << "\n";
    return false;
  }
  std::cerr << "vtm-tc-serve: attestation challenge "
            << (answered->quoted ? std::string("answered") : "refused: " + answered->reason) << "\n";
  return true;
}

// One device, until it closes: attestation challenges (a frame starting with NUL) and lines.
void Serve(vtm::tc::ServiceConnection& conn, const vtm::tc::Quoter& quoter, const std::string& event_log_path) {
  for (;;) {
    auto first = conn.Read(1);
    if (!first.ok()) {
      std::cerr << "vtm-tc-serve: " << first.error().message() << "\n";
      return;
    }
    if (first->empty()) return;
    if ((*first)[0] == '\0') {
      auto log = vtm::ReadFile(event_log_path);  // read each time: the kernel's log grows
      if (!Answer(conn, *first, quoter, log.ok() ? *log : "")) return;
      continue;
    }
    std::string line = *first;
    if (line != "\n") {
      auto rest = conn.ReadUntil('\n', 1 << 16);
      if (!rest.ok()) return;
      line += *rest;
    }
    std::string text = line.substr(0, line.find('\n'));
    std::reverse(text.begin(), text.end());
    if (!conn.Write(text + "\n").ok()) return;
  }
}

// Connects to the backend HOST:PORT (IPv4 literal).
vtm::Result<vtm::UniqueFd> ConnectBackend(const std::string& target) {
  const size_t colon = target.rfind(':');
  const int port = colon == std::string::npos ? 0 : vtm::tc::cli::PositiveNumber(target.substr(colon + 1));
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_port = htons(static_cast<uint16_t>(port));
  if (port == 0 || port > 65535 || inet_pton(AF_INET, target.substr(0, colon).c_str(), &sa.sin_addr) != 1) {
    return vtm::Error(vtm::ErrorCode::kInvalidArgument, "--forward wants IPV4:PORT, not '" + target + "'");
  }
  vtm::UniqueFd fd(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd.valid() || connect(fd.get(), reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0) {
    return vtm::Error(vtm::ErrorCode::kUnavailable,
                      "cannot reach the backend " + target + ": " + std::strerror(errno));
  }
  int one = 1;
  setsockopt(fd.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  return fd;
}

// One device, passed through to the backend until either side closes. A challenge is answered
// if it comes before the first data byte (after that the stream is the backend's protocol).
void Forward(vtm::tc::ServiceConnection& conn, const std::string& backend, const vtm::tc::Quoter& quoter,
             const std::string& event_log_path) {
  std::string first;
  for (;;) {
    auto b = conn.Read(1);
    if (!b.ok() || b->empty()) return;
    if ((*b)[0] != '\0') {
      first = *b;
      break;
    }
    auto log = vtm::ReadFile(event_log_path);
    if (!Answer(conn, *b, quoter, log.ok() ? *log : "")) return;
  }
  auto up = ConnectBackend(backend);
  if (!up.ok()) {
    std::cerr << "vtm-tc-serve: " << up.error().message() << "\n";
    return;
  }
  if (!vtm::WriteAll(up->get(), first.data(), first.size()).ok()) return;
  char buf[16384];
  for (;;) {
    if (!conn.has_buffered_data()) {
      pollfd fds[2] = {{conn.fd(), POLLIN, 0}, {up->get(), POLLIN, 0}};
      if (poll(fds, 2, -1) < 0) {
        if (errno == EINTR) continue;
        return;
      }
      if ((fds[1].revents & (POLLIN | POLLHUP | POLLERR)) != 0) {
        const ssize_t n = read(up->get(), buf, sizeof buf);
        if (n <= 0 || !conn.Write(std::string_view(buf, static_cast<size_t>(n))).ok()) return;
      }
      if ((fds[0].revents & (POLLIN | POLLHUP | POLLERR)) == 0) continue;
    }
    auto data = conn.Read(sizeof buf);
    if (!data.ok() || data->empty()) return;
    if (!vtm::WriteAll(up->get(), data->data(), data->size()).ok()) return;
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc >= 2 && (std::string(argv[1]) == "--help" || std::string(argv[1]) == "-h")) {
    std::cout << kUsage;
    return 0;
  }
  Flags f;
  std::string error;
  if (!vtm::tc::cli::ParseFlags(argc, argv, 1,
                                {"--port", "--address", "--cert", "--key", "--tcti", "--device-ca", "--device-crl",
                                 "--ak", "--event-log", "--connections", "--timeout-ms", "--forward"},
                                {"--no-crl", "--reverse"}, &f, &error)) {
    return Usage(error);
  }
  for (const char* required : {"--port", "--cert", "--key", "--device-ca"}) {
    if (f.Get(required).empty()) return Usage(std::string(required) + " is required");
  }
  if (f.Has("--reverse") == !f.Get("--forward").empty()) {
    return Usage("say what is behind the service: --forward HOST:PORT or --reverse");
  }
  const int port = vtm::tc::cli::PositiveNumber(f.Get("--port"));
  if (port == 0 || port > 65535) return Usage("--port wants a port number");
  vtm::tc::ServiceOptions o;
  auto chain = vtm::ReadFile(f.Get("--cert"));
  auto ca = vtm::ReadFile(f.Get("--device-ca"));
  auto crls = vtm::tc::cli::ReadAll(f.All("--device-crl"));
  if (!chain.ok() || !ca.ok() || !crls.ok()) {
    std::cerr << "vtm-tc-serve: "
              << (!chain.ok() ? chain.error() : !ca.ok() ? ca.error() : crls.error()).message() << "\n";
    return 3;
  }
  o.certificate_chain_pem = *chain;
  o.key_uri = f.Get("--key");
  o.tcti = f.Get("--tcti");
  o.trusted_device_ca_pem = *ca;
  o.device_crls = *crls;
  o.allow_missing_crl = f.Has("--no-crl");
  if (!f.Get("--timeout-ms").empty()) {
    const int ms = vtm::tc::cli::PositiveNumber(f.Get("--timeout-ms"));
    if (ms == 0) return Usage("--timeout-ms wants a positive number");
    o.timeout = std::chrono::milliseconds(ms);
  }
  int connections = 0;
  if (!f.Get("--connections").empty()) {
    connections = vtm::tc::cli::PositiveNumber(f.Get("--connections"));
    if (connections == 0) return Usage("--connections wants a positive number");
  }
  const std::string ak = f.Get("--ak").empty() ? "0x81000002" : f.Get("--ak");
  const std::string event_log =
      f.Get("--event-log").empty() ? "/sys/kernel/security/tpm0/binary_bios_measurements" : f.Get("--event-log");

  auto service = vtm::tc::TrustedService::Create(o);
  if (!service.ok()) {
    std::cerr << "vtm-tc-serve: " << service.error().message() << "\n";
    return 3;
  }
  int bound = 0;
  auto listener = vtm::tc::ListenTcp(f.Get("--address"), port, &bound);
  if (!listener.ok()) {
    std::cerr << "vtm-tc-serve: " << listener.error().message() << "\n";
    return 3;
  }
  std::cerr << "vtm-tc-serve: listening on port " << bound << std::endl;
  const vtm::tc::Quoter quoter = vtm::tc::TpmToolsQuoter(ak, "");
  for (int served = 0; connections == 0 || served < connections;) {
    auto conn = (*service)->Accept(listener->get());
    if (!conn.ok()) {
      std::cerr << "vtm-tc-serve: " << conn.error().message() << std::endl;
      continue;
    }
    ++served;
    std::cerr << "vtm-tc-serve: accepted device " << (*conn)->device().subject << std::endl;
    if (f.Has("--reverse")) {
      Serve(**conn, quoter, event_log);
    } else {
      Forward(**conn, f.Get("--forward"), quoter, event_log);
    }
  }
  return 0;
}
