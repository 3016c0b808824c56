// Framing of swtpm's control protocol (tpm_ioctl.h, "non-CUSE" variant) as QEMU's
// tpm-emulator backend speaks it: a 4-byte big-endian command code and a command-specific
// request body. Pure functions over bytes so that policy can be added and fuzzed here.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>

namespace vtm::instance {

// Command codes (CMD_* in tpm_ioctl.h). Values outside this list are "unknown".
enum class CtrlCommand : uint32_t {
  kGetCapability = 0x01,
  kInit = 0x02,
  kShutdown = 0x03,
  kGetTpmEstablished = 0x04,
  kSetLocality = 0x05,
  kHashStart = 0x06,
  kHashData = 0x07,
  kHashEnd = 0x08,
  kCancelTpmCmd = 0x09,
  kStoreVolatile = 0x0a,
  kResetTpmEstablished = 0x0b,
  kGetStateBlob = 0x0c,
  kSetStateBlob = 0x0d,
  kStop = 0x0e,
  kGetConfig = 0x0f,
  kSetDataFd = 0x10,
  kSetBufferSize = 0x11,
  kGetInfo = 0x12,
};
inline constexpr uint32_t kMaxKnownCtrlCommand = 0x12;

// "GET_CAPABILITY", "SET_STATEBLOB", ... or "UNKNOWN(0x...)".
std::string CtrlCommandName(uint32_t code);

// Size of the command code that starts every request.
inline constexpr size_t kCtrlCodeSize = 4;
// Largest variable-length body accepted (SET_STATEBLOB data, HASH_DATA data). libtpms'
// state blobs are well below 1 MiB; the cap bounds what a hostile client makes us buffer.
inline constexpr uint32_t kMaxCtrlPayload = 8u << 20;

// Header of a SET_STATEBLOB request (ptm_setstate.u.req without data).
struct StateBlobHeader {
  uint32_t state_flags = 0;  // PTM_STATE_FLAG_ENCRYPTED (2): still encrypted with the state key
  uint32_t blob_type = 0;    // PTM_BLOB_TYPE_PERMANENT/VOLATILE/SAVESTATE
  uint32_t length = 0;       // bytes of blob data following the header
  // The flags of swtpm's own header at the start of the blob data (version, min_version,
  // hdrsize, flags, totlen; big-endian): BLOB_FLAG_MIGRATION_ENCRYPTED (2) says the data is
  // encrypted with the migration key. 0 when the blob is shorter than that header.
  uint16_t swtpm_blob_flags = 0;
};

// One complete request at the start of a byte stream.
struct CtrlRequest {
  uint32_t code = 0;
  bool known = false;                         // code is one of CtrlCommand
  size_t size = 0;                            // bytes of the whole request, code included
  std::optional<StateBlobHeader> state_blob;  // SET_STATEBLOB only
  std::optional<uint32_t> init_flags;         // INIT only
};

struct CtrlParseResult {
  enum class Kind {
    kRequest,    // `request` is complete; its `size` bytes may be consumed
    kNeedMore,   // the buffer ends inside a request; `needed` bytes in total are wanted
    kMalformed,  // the stream cannot be a valid request; `error` says why
  };
  Kind kind = Kind::kNeedMore;
  CtrlRequest request;
  size_t needed = 0;
  std::string error;
};

// Parses the request at the start of `bytes` (client -> swtpm direction).
//
// Request bodies follow what QEMU 7.2 sends, which for SET_LOCALITY and
// RESET_TPMESTABLISHED is the whole 4-byte union rather than the 1-byte request field
// (swtpm accepts both because it frames by read() boundaries).
//
// An unknown command code has no known length. QEMU writes each request with one
// write(), so an unknown request is taken to be everything buffered (`bytes.size()`);
// the caller decides whether to pass it on.
CtrlParseResult ParseCtrlRequest(std::span<const uint8_t> bytes);

// Body size of a fixed-size request, or nullopt for variable-size and unknown commands.
std::optional<size_t> FixedRequestBodySize(uint32_t code);

}  // namespace vtm::instance
