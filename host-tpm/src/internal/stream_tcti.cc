// The stream TCTI: one TPM command out, one length-framed response back, over a socket we own.
// The response length comes from the peer, so it is checked before anything is buffered.
#include "internal/stream_tcti.h"

#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <new>
#include <vector>

namespace vtm::internal {
namespace {

constexpr uint64_t kMagic = 0x76746d2d73747231ULL;  // "vtm-str1"
constexpr size_t kHeaderSize = 10;                  // tag u16, size u32, response code u32

struct StreamTcti {
  TSS2_TCTI_CONTEXT_COMMON_V2 common;  // first member: tpm2-tss casts the context to this
  int fd = -1;
  bool awaiting_response = false;
  // After a transport error the byte stream can no longer be trusted to be in step with
  // the TPM; every later call fails rather than reading a stale half response.
  bool broken = false;
  std::vector<uint8_t> response;  // the bytes of the pending response received so far
};

StreamTcti* Cast(TSS2_TCTI_CONTEXT* ctx) {
  if (ctx == nullptr) return nullptr;
  auto* tcti = reinterpret_cast<StreamTcti*>(ctx);
  return tcti->common.v1.magic == kMagic ? tcti : nullptr;
}

TSS2_RC Transmit(TSS2_TCTI_CONTEXT* ctx, size_t size, const uint8_t* command) {
  StreamTcti* tcti = Cast(ctx);
  if (tcti == nullptr) return TSS2_TCTI_RC_BAD_CONTEXT;
  if (command == nullptr) return TSS2_TCTI_RC_BAD_REFERENCE;
  if (tcti->broken) return TSS2_TCTI_RC_IO_ERROR;
  if (tcti->awaiting_response) return TSS2_TCTI_RC_BAD_SEQUENCE;
  size_t sent = 0;
  while (sent < size) {
    // MSG_NOSIGNAL: a TPM process that died must give an error, not kill vtmd with SIGPIPE.
    ssize_t n = ::send(tcti->fd, command + sent, size - sent, MSG_NOSIGNAL);
    if (n < 0 && errno == ENOTSOCK) n = ::write(tcti->fd, command + sent, size - sent);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      tcti->broken = true;
      return TSS2_TCTI_RC_IO_ERROR;
    }
    sent += static_cast<size_t>(n);
  }
  tcti->awaiting_response = true;
  tcti->response.clear();
  return TSS2_RC_SUCCESS;
}

// Reads until the whole response is buffered, or the timeout (ms; -1 blocks) passes.
TSS2_RC Fill(StreamTcti* tcti, int32_t timeout) {
  using Clock = std::chrono::steady_clock;
  const auto deadline = Clock::now() + std::chrono::milliseconds(timeout < 0 ? 0 : timeout);
  for (;;) {
    int64_t want = TpmResponseLength(tcti->response.data(), tcti->response.size());
    if (want < 0) {
      tcti->broken = true;
      return TSS2_TCTI_RC_MALFORMED_RESPONSE;
    }
    size_t target = want == 0 ? kHeaderSize : static_cast<size_t>(want);
    if (want > 0 && tcti->response.size() == target) return TSS2_RC_SUCCESS;

    int wait_ms = -1;
    if (timeout >= 0) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
      wait_ms = left > 0 ? static_cast<int>(left) : 0;
    }
    pollfd p{tcti->fd, POLLIN, 0};
    int ready = ::poll(&p, 1, wait_ms);
    if (ready < 0 && errno == EINTR) continue;
    if (ready < 0) {
      tcti->broken = true;
      return TSS2_TCTI_RC_IO_ERROR;
    }
    if (ready == 0) return TSS2_TCTI_RC_TRY_AGAIN;  // partial bytes stay buffered for the next call

    size_t have = tcti->response.size();
    tcti->response.resize(target);
    ssize_t n = ::read(tcti->fd, tcti->response.data() + have, target - have);
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) {
      tcti->response.resize(have);
      continue;
    }
    if (n <= 0) {  // EOF: the TPM went away mid-response
      tcti->response.resize(have);
      tcti->broken = true;
      return TSS2_TCTI_RC_IO_ERROR;
    }
    tcti->response.resize(have + static_cast<size_t>(n));
  }
}

TSS2_RC Receive(TSS2_TCTI_CONTEXT* ctx, size_t* size, uint8_t* response, int32_t timeout) {
  StreamTcti* tcti = Cast(ctx);
  if (tcti == nullptr) return TSS2_TCTI_RC_BAD_CONTEXT;
  if (size == nullptr) return TSS2_TCTI_RC_BAD_REFERENCE;
  if (tcti->broken) return TSS2_TCTI_RC_IO_ERROR;
  if (!tcti->awaiting_response) return TSS2_TCTI_RC_BAD_SEQUENCE;
  if (timeout < TSS2_TCTI_TIMEOUT_BLOCK) return TSS2_TCTI_RC_BAD_VALUE;
  TSS2_RC rc = Fill(tcti, timeout);
  if (rc != TSS2_RC_SUCCESS) return rc;
  // A NULL buffer asks only for the size; the response stays pending.
  if (response == nullptr) {
    *size = tcti->response.size();
    return TSS2_RC_SUCCESS;
  }
  if (*size < tcti->response.size()) {
    *size = tcti->response.size();
    return TSS2_TCTI_RC_INSUFFICIENT_BUFFER;
  }
  std::memcpy(response, tcti->response.data(), tcti->response.size());
  *size = tcti->response.size();
  tcti->response.clear();
  tcti->awaiting_response = false;
  return TSS2_RC_SUCCESS;
}

void Finalize(TSS2_TCTI_CONTEXT* ctx) {
  StreamTcti* tcti = Cast(ctx);
  if (tcti == nullptr) return;
  if (tcti->fd >= 0) ::close(tcti->fd);
  tcti->fd = -1;
  tcti->broken = true;
}

TSS2_RC Cancel(TSS2_TCTI_CONTEXT* ctx) {
  return Cast(ctx) == nullptr ? TSS2_TCTI_RC_BAD_CONTEXT : TSS2_TCTI_RC_NOT_IMPLEMENTED;
}

TSS2_RC GetPollHandles(TSS2_TCTI_CONTEXT* ctx, TSS2_TCTI_POLL_HANDLE* handles, size_t* num_handles) {
  StreamTcti* tcti = Cast(ctx);
  if (tcti == nullptr) return TSS2_TCTI_RC_BAD_CONTEXT;
  if (num_handles == nullptr) return TSS2_TCTI_RC_BAD_REFERENCE;
  if (handles == nullptr) {
    *num_handles = 1;
    return TSS2_RC_SUCCESS;
  }
  if (*num_handles < 1) return TSS2_TCTI_RC_INSUFFICIENT_BUFFER;
  handles[0] = pollfd{tcti->fd, POLLIN, 0};
  *num_handles = 1;
  return TSS2_RC_SUCCESS;
}

// Locality is a property of swtpm's control channel, not of the data stream.
TSS2_RC SetLocality(TSS2_TCTI_CONTEXT* ctx, uint8_t /*locality*/) {
  return Cast(ctx) == nullptr ? TSS2_TCTI_RC_BAD_CONTEXT : TSS2_TCTI_RC_NOT_IMPLEMENTED;
}

// Sticky handles are a resource manager's business; we talk to the TPM directly.
TSS2_RC MakeSticky(TSS2_TCTI_CONTEXT* ctx, TPM2_HANDLE* /*handle*/, uint8_t /*sticky*/) {
  return Cast(ctx) == nullptr ? TSS2_TCTI_RC_BAD_CONTEXT : TSS2_TCTI_RC_NOT_IMPLEMENTED;
}

void Destroy(TSS2_TCTI_CONTEXT* ctx) {
  if (ctx == nullptr) return;
  Finalize(ctx);
  delete reinterpret_cast<StreamTcti*>(ctx);
}

}  // namespace

int64_t TpmResponseLength(const uint8_t* bytes, size_t n) {
  if (bytes == nullptr || n < kHeaderSize) return 0;
  uint32_t size = (uint32_t{bytes[2]} << 24) | (uint32_t{bytes[3]} << 16) | (uint32_t{bytes[4]} << 8) | bytes[5];
  if (size < kHeaderSize || size > kMaxTpmResponse) return -1;
  return size;
}

Result<std::unique_ptr<TSS2_TCTI_CONTEXT, void (*)(TSS2_TCTI_CONTEXT*)>> NewStreamTcti(UniqueFd fd) {
  auto* tcti = new (std::nothrow) StreamTcti();
  if (tcti == nullptr) return Error(ErrorCode::kInternal, "out of memory for a TCTI context");
  tcti->common.v1.magic = kMagic;
  tcti->common.v1.version = 2;
  tcti->common.v1.transmit = Transmit;
  tcti->common.v1.receive = Receive;
  tcti->common.v1.finalize = Finalize;
  tcti->common.v1.cancel = Cancel;
  tcti->common.v1.getPollHandles = GetPollHandles;
  tcti->common.v1.setLocality = SetLocality;
  tcti->common.makeSticky = MakeSticky;
  tcti->fd = fd.release();
  return std::unique_ptr<TSS2_TCTI_CONTEXT, void (*)(TSS2_TCTI_CONTEXT*)>(reinterpret_cast<TSS2_TCTI_CONTEXT*>(tcti),
                                                                          Destroy);
}

}  // namespace vtm::internal
