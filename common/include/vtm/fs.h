// File-system helpers with the durability and permission rules the daemon relies on.
#pragma once

#include <sys/types.h>

#include <optional>
#include <string>
#include <vector>

#include "vtm/error.h"

namespace vtm {

// Creates dir (and parents) if missing, then enforces mode and, if given, owner on dir itself.
Status MakeDir(const std::string& path, mode_t mode, std::optional<uid_t> uid = std::nullopt,
               std::optional<gid_t> gid = std::nullopt);
Result<std::string> ReadFile(const std::string& path);
// Writes a temp file, fsyncs it, renames it over path and fsyncs the directory.
Status WriteFileAtomic(const std::string& path, const std::string& data, mode_t mode);
// Renames from over to (atomic within one file system) and fsyncs to's directory, so the
// rename survives a crash once this returns.
Status RenameDurably(const std::string& from, const std::string& to);
// Removes path and everything below it; a missing path is not an error.
Status RemoveTree(const std::string& path);
bool PathExists(const std::string& path);

}  // namespace vtm
