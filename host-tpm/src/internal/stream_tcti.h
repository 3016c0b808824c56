// A TCTI over a connected stream socket that carries raw TPM commands and responses, e.g.
// swtpm's data channel handed over with CMD_SET_DATAFD. tpm2-tss has no TCTI for an fd we
// already hold, and vtmd must reach a vTPM it provisions without a TCP port or a file path.
#pragma once

#include <tss2/tss2_tcti.h>

#include <cstddef>
#include <cstdint>
#include <memory>

#include "vtm/error.h"
#include "vtm/unique_fd.h"

namespace vtm::internal {

// The largest response the TCTI accepts. TPM 2.0 buffers are 4 KiB (libtpms, swtpm and
// hardware alike); anything claiming more is a broken or hostile peer.
inline constexpr uint32_t kMaxTpmResponse = 64 * 1024;

// Length of one TPM response given its first bytes (tag u16, size u32 big-endian, ...): 0 if
// fewer than 10 bytes are given, -1 if the size is below the 10-byte header or above
// kMaxTpmResponse. Pure, for the TCTI and its fuzzer.
int64_t TpmResponseLength(const uint8_t* bytes, size_t n);

// Takes ownership of fd; finalizing the TCTI closes it. The returned pointer's deleter
// finalizes and frees the context.
Result<std::unique_ptr<TSS2_TCTI_CONTEXT, void (*)(TSS2_TCTI_CONTEXT*)>> NewStreamTcti(UniqueFd fd);

}  // namespace vtm::internal
