// FdStream: the socket helpers of vtm/net.h behind the Stream interface.
#include "vtm/stream.h"

#include "vtm/net.h"

namespace vtm {

Status FdStream::WriteAll(const void* data, size_t len) { return vtm::WriteAll(fd_, data, len); }
Status FdStream::ReadAll(void* data, size_t len) { return vtm::ReadAll(fd_, data, len); }

}  // namespace vtm
