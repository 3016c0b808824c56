// libFuzzer target for what a migration peer sends a destination vtmd: arbitrary bytes as a
// request frame through ParsePeerRequest (protobuf parse + bounds), and as the peer's
// certificate through MigrationPeerHost. A request that passes names exactly one step and
// well-formed IDs; a certificate that passes names a host.
#include <cstdint>
#include <string>

#include <google/protobuf/stubs/logging.h>

#include "manager.h"
#include "migration_peer.h"

extern "C" int LLVMFuzzerInitialize(int* /*argc*/, char*** /*argv*/) {
  google::protobuf::SetLogHandler(nullptr);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string bytes(reinterpret_cast<const char*>(data), size);
  auto req = vtm::ParsePeerRequest(bytes);
  if (req.ok()) {
    if (req->step_case() == vtm::migration_api::PeerRequest::STEP_NOT_SET) __builtin_trap();
    if (req->has_prepare() && !vtm::NormalizeUuid(req->prepare().vm_uuid()).ok()) __builtin_trap();
  } else if (req.error().message().empty()) {
    __builtin_trap();
  }
  auto host = vtm::MigrationPeerHost(bytes);
  if (host.ok() && host->empty()) __builtin_trap();
  if (!host.ok() && host.error().message().empty()) __builtin_trap();
  return 0;
}
