// Request framing for swtpm's control channel. Sizes come from the request halves of the
// structs in tpm_ioctl.h (big-endian on the wire) and from what QEMU 7.2 actually writes.
#include "ctrl_protocol.h"

#include <array>
#include <cstdio>

namespace vtm::instance {
namespace {

uint32_t ReadBe32(std::span<const uint8_t> b, size_t off) {
  return (uint32_t{b[off]} << 24) | (uint32_t{b[off + 1]} << 16) | (uint32_t{b[off + 2]} << 8) | uint32_t{b[off + 3]};
}

constexpr std::array<const char*, kMaxKnownCtrlCommand + 1> kNames = {
    nullptr,          "GET_CAPABILITY",       "INIT",           "SHUTDOWN",      "GET_TPMESTABLISHED",
    "SET_LOCALITY",   "HASH_START",           "HASH_DATA",      "HASH_END",      "CANCEL_TPM_CMD",
    "STORE_VOLATILE", "RESET_TPMESTABLISHED", "GET_STATEBLOB",  "SET_STATEBLOB", "STOP",
    "GET_CONFIG",     "SET_DATAFD",           "SET_BUFFERSIZE", "GET_INFO",
};

// ptm_setstate.u.req up to data: state_flags, type, length.
constexpr size_t kSetStateHeaderSize = 12;
// ptm_hdata.u.req up to data: length.
constexpr size_t kHashDataHeaderSize = 4;

CtrlParseResult NeedMore(size_t needed) {
  CtrlParseResult r;
  r.kind = CtrlParseResult::Kind::kNeedMore;
  r.needed = needed;
  return r;
}

CtrlParseResult Malformed(std::string why) {
  CtrlParseResult r;
  r.kind = CtrlParseResult::Kind::kMalformed;
  r.error = std::move(why);
  return r;
}

}  // namespace

std::string CtrlCommandName(uint32_t code) {
  if (code >= 1 && code <= kMaxKnownCtrlCommand) return kNames[code];
  char buf[32];
  std::snprintf(buf, sizeof buf, "UNKNOWN(0x%08x)", code);
  return buf;
}

std::optional<size_t> FixedRequestBodySize(uint32_t code) {
  switch (static_cast<CtrlCommand>(code)) {
    case CtrlCommand::kGetCapability:
    case CtrlCommand::kShutdown:
    case CtrlCommand::kGetTpmEstablished:
    case CtrlCommand::kHashStart:
    case CtrlCommand::kHashEnd:
    case CtrlCommand::kCancelTpmCmd:
    case CtrlCommand::kStoreVolatile:
    case CtrlCommand::kStop:
    case CtrlCommand::kGetConfig:
    case CtrlCommand::kSetDataFd:  // the data socket travels as SCM_RIGHTS, not in the body
      return 0;
    case CtrlCommand::kInit:           // init_flags
    case CtrlCommand::kSetBufferSize:  // buffersize
    // QEMU sends sizeof(ptm_loc) / sizeof(ptm_reset_est): the 1-byte locality padded to the
    // 4-byte union. swtpm only reads the first byte.
    case CtrlCommand::kSetLocality:
    case CtrlCommand::kResetTpmEstablished:
      return 4;
    case CtrlCommand::kGetStateBlob:  // state_flags, type, offset
      return 12;
    case CtrlCommand::kGetInfo:  // flags (u64), offset, pad
      return 16;
    case CtrlCommand::kHashData:
    case CtrlCommand::kSetStateBlob:
      return std::nullopt;
  }
  return std::nullopt;
}

CtrlParseResult ParseCtrlRequest(std::span<const uint8_t> bytes) {
  if (bytes.size() < kCtrlCodeSize) return NeedMore(kCtrlCodeSize);
  CtrlRequest req;
  req.code = ReadBe32(bytes, 0);
  req.known = req.code >= 1 && req.code <= kMaxKnownCtrlCommand;

  if (!req.known) {
    // No length to go by: take what the client wrote in one go (see header).
    req.size = bytes.size();
    CtrlParseResult r;
    r.kind = CtrlParseResult::Kind::kRequest;
    r.request = req;
    return r;
  }

  size_t body = 0;
  if (auto fixed = FixedRequestBodySize(req.code)) {
    body = *fixed;
  } else if (req.code == static_cast<uint32_t>(CtrlCommand::kSetStateBlob)) {
    if (bytes.size() < kCtrlCodeSize + kSetStateHeaderSize) {
      return NeedMore(kCtrlCodeSize + kSetStateHeaderSize);
    }
    StateBlobHeader h;
    h.state_flags = ReadBe32(bytes, 4);
    h.blob_type = ReadBe32(bytes, 8);
    h.length = ReadBe32(bytes, 12);
    if (h.length > kMaxCtrlPayload) {
      return Malformed("SET_STATEBLOB announces " + std::to_string(h.length) + " bytes, more than the " +
                       std::to_string(kMaxCtrlPayload) + " accepted");
    }
    req.state_blob = h;
    body = kSetStateHeaderSize + h.length;
  } else {  // HASH_DATA
    if (bytes.size() < kCtrlCodeSize + kHashDataHeaderSize) {
      return NeedMore(kCtrlCodeSize + kHashDataHeaderSize);
    }
    uint32_t len = ReadBe32(bytes, 4);
    if (len > kMaxCtrlPayload) {
      return Malformed("HASH_DATA announces " + std::to_string(len) + " bytes, more than the " +
                       std::to_string(kMaxCtrlPayload) + " accepted");
    }
    body = kHashDataHeaderSize + len;
  }

  size_t total = kCtrlCodeSize + body;
  if (bytes.size() < total) return NeedMore(total);
  if (req.code == static_cast<uint32_t>(CtrlCommand::kInit)) req.init_flags = ReadBe32(bytes, 4);
  constexpr size_t kSwtpmBlobHeaderSize = 10;  // version, min_version, hdrsize(2), flags(2), totlen(4)
  if (req.state_blob && req.state_blob->length >= kSwtpmBlobHeaderSize) {
    const size_t at = kCtrlCodeSize + kSetStateHeaderSize + 4;
    req.state_blob->swtpm_blob_flags = static_cast<uint16_t>((bytes[at] << 8) | bytes[at + 1]);
  }
  req.size = total;
  CtrlParseResult r;
  r.kind = CtrlParseResult::Kind::kRequest;
  r.request = req;
  return r;
}

}  // namespace vtm::instance
