// Owning pointers for OpenSSL objects, freed with their own free function:
//   OsslPtr<EVP_PKEY, EVP_PKEY_free> key(EVP_PKEY_new());
// and the one place OpenSSL's error queue becomes a vtm Error.
#pragma once

#include <memory>
#include <string>

#include "vtm/error.h"

namespace vtm {

template <typename T, void (*Free)(T*)>
struct OsslDeleter {
  void operator()(T* p) const { Free(p); }
};
template <typename T, void (*Free)(T*)>
using OsslPtr = std::unique_ptr<T, OsslDeleter<T, Free>>;

// An Error whose message is `what` followed by OpenSSL's queued reasons; clears the queue so
// a later failure does not report stale reasons.
Error OpenSslError(ErrorCode code, const std::string& what);

}  // namespace vtm
