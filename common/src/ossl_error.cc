// OpenSSL's error queue as a vtm Error.
#include <openssl/err.h>

#include "vtm/ossl_ptr.h"

namespace vtm {

Error OpenSslError(ErrorCode code, const std::string& what) {
  std::string msg = what;
  unsigned long e;
  bool first = true;
  while ((e = ERR_get_error()) != 0) {
    char buf[256];
    ERR_error_string_n(e, buf, sizeof buf);
    msg += first ? " (" : "; ";
    msg += buf;
    first = false;
  }
  if (!first) msg += ")";
  return Error(code, msg);
}

}  // namespace vtm
