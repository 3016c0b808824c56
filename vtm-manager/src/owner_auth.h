// The host TPM's owner hierarchy password, from a file only root can read or from a systemd
// credential (LoadCredential=vtm-owner-auth:..., read from $CREDENTIALS_DIRECTORY), never from
// argv or the environment, where other users (ps, /proc/<pid>/environ of a child) could see it.
//
// Thread safety: stateless.
#pragma once

#include <string>

#include "vtm/error.h"
#include "vtm/secret.h"

namespace vtm {

// The name of the systemd credential vtmd reads when no --owner-auth-file is given.
inline constexpr const char* kOwnerAuthCredential = "vtm-owner-auth";

// file: the --owner-auth-file option (empty: not given). Returns the password bytes as the
// file holds them, less one trailing newline (so `echo secret > file` works); an empty result
// if neither a file nor the credential is there (the TPM's default: no owner password). The
// file must be a regular file that only its owner (root or vtmd's user) can read or write.
Result<SecretBytes> LoadOwnerAuth(const std::string& file);

}  // namespace vtm
