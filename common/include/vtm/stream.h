// A byte stream under vtm's framing (vtm/framing.h): a plain socket (FdStream) or a mutual
// TLS 1.3 connection (TlsStream, vtm/tls.h). The vtmd API, the RA client's network service
// and the manager-to-manager migration channel all speak frames over a Stream.
//
// Thread safety: a Stream is used by one thread at a time.
#pragma once

#include <cstddef>
#include <string>

#include "vtm/error.h"
#include "vtm/unique_fd.h"

namespace vtm {

class Stream {
 public:
  virtual ~Stream() = default;
  // Writes all len bytes (retrying short writes).
  virtual Status WriteAll(const void* data, size_t len) = 0;
  // Reads exactly len bytes; kUnavailable on EOF before len bytes.
  virtual Status ReadAll(void* data, size_t len) = 0;
};

// A stream socket. Owns the fd if constructed from a UniqueFd; borrows it from an int.
class FdStream : public Stream {
 public:
  explicit FdStream(int fd) : fd_(fd) {}
  explicit FdStream(UniqueFd fd) : owned_(std::move(fd)), fd_(owned_.get()) {}
  Status WriteAll(const void* data, size_t len) override;
  Status ReadAll(void* data, size_t len) override;
  int fd() const { return fd_; }

 private:
  UniqueFd owned_;
  int fd_;
};

}  // namespace vtm
