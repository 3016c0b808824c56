// Times as people and logs read them: RFC 3339 UTC ("2026-12-01T13:02:29Z").
#pragma once

#include <ctime>
#include <string>

namespace vtm {

std::string FormatUtc(std::time_t t);
inline std::string NowUtc() { return FormatUtc(std::time(nullptr)); }

}  // namespace vtm
