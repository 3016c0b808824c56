// libFuzzer target for vtm-instance's control-protocol parser: feeds arbitrary client
// bytes through ParseCtrlRequest the way ControlRelay consumes its buffer, and checks the
// parser's contract (progress, bounds) so a hostile QEMU cannot crash or stall the relay.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <span>

#include "ctrl_protocol.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using vtm::instance::CtrlParseResult;
  std::span<const uint8_t> rest(data, size);
  while (!rest.empty()) {
    CtrlParseResult r = vtm::instance::ParseCtrlRequest(rest);
    if (r.kind == CtrlParseResult::Kind::kNeedMore) {
      if (r.needed <= rest.size()) std::abort();  // must ask for more than it has
      break;
    }
    if (r.kind == CtrlParseResult::Kind::kMalformed) {
      if (r.error.empty()) std::abort();
      break;
    }
    if (r.request.size < vtm::instance::kCtrlCodeSize || r.request.size > rest.size()) std::abort();
    (void)vtm::instance::CtrlCommandName(r.request.code);
    rest = rest.subspan(r.request.size);
  }
  return 0;
}
