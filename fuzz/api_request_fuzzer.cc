// libFuzzer target for vtmd's API request path: arbitrary bytes as a request frame payload
// through ParseRequest (protobuf parse + field validation). A request that passes must name
// exactly one operation and only well-formed UUIDs/names.
#include <cstdint>
#include <string>

#include <google/protobuf/stubs/logging.h>

#include "api_service.h"
#include "manager.h"

extern "C" int LLVMFuzzerInitialize(int* /*argc*/, char*** /*argv*/) {
  // protobuf logs every invalid UTF-8 string it refuses; at millions of inputs that is noise.
  google::protobuf::SetLogHandler(nullptr);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto req = vtm::ParseRequest(std::string(reinterpret_cast<const char*>(data), size));
  if (!req.ok()) {
    if (req.error().message().empty()) __builtin_trap();
    return 0;
  }
  if (req->op_case() == vtm::api::Request::OP_NOT_SET) __builtin_trap();
  if (req->has_create() && !req->create().uuid().empty() && !vtm::NormalizeUuid(req->create().uuid()).ok()) {
    __builtin_trap();
  }
  return 0;
}
