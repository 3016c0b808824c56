// Owning pointers for OpenSSL objects, freed with their own free function:
//   OsslPtr<EVP_PKEY, EVP_PKEY_free> key(EVP_PKEY_new());
#pragma once

#include <memory>

namespace vtm {

template <typename T, void (*Free)(T*)>
struct OsslDeleter {
  void operator()(T* p) const { Free(p); }
};
template <typename T, void (*Free)(T*)>
using OsslPtr = std::unique_ptr<T, OsslDeleter<T, Free>>;

}  // namespace vtm
