// Command-line flags of vtm-connect and vtm-tc-serve: "--name value" pairs and bare switches,
// anything unknown refused. Thread safety: plain values.
#pragma once

#include <cstdlib>
#include <string>
#include <utility>
#include <vector>

#include "vtm/fs.h"

namespace vtm::tc::cli {

struct Flags {
  std::vector<std::pair<std::string, std::string>> values;
  std::vector<std::string> switches;
  std::string Get(const std::string& name) const {
    for (const auto& [n, v] : values) {
      if (n == name) return v;
    }
    return "";
  }
  std::vector<std::string> All(const std::string& name) const {
    std::vector<std::string> out;
    for (const auto& [n, v] : values) {
      if (n == name) out.push_back(v);
    }
    return out;
  }
  bool Has(const std::string& name) const {
    for (const auto& s : switches) {
      if (s == name) return true;
    }
    return false;
  }
};

// Flags from argv[first] on.
inline bool ParseFlags(int argc, char** argv, int first, const std::vector<std::string>& with_value,
                       const std::vector<std::string>& bare, Flags* out, std::string* error) {
  for (int i = first; i < argc; ++i) {
    std::string a = argv[i];
    bool known = false;
    for (const auto& n : with_value) {
      if (a == n) {
        if (i + 1 >= argc) {
          *error = a + " needs a value";
          return false;
        }
        out->values.emplace_back(a, argv[++i]);
        known = true;
      }
    }
    for (const auto& n : bare) {
      if (a == n) {
        out->switches.push_back(a);
        known = true;
      }
    }
    if (!known) {
      *error = "unknown argument '" + a + "'";
      return false;
    }
  }
  return true;
}

// A positive decimal number, or 0 if it is not one.
inline int PositiveNumber(const std::string& s) {
  char* end = nullptr;
  long v = std::strtol(s.c_str(), &end, 10);
  return (end != s.c_str() && *end == '\0' && v > 0 && v <= 1000000000) ? static_cast<int>(v) : 0;
}

inline vtm::Result<std::vector<std::string>> ReadAll(const std::vector<std::string>& paths) {
  std::vector<std::string> out;
  for (const auto& p : paths) {
    VTM_ASSIGN_OR_RETURN(std::string s, vtm::ReadFile(p));
    out.push_back(std::move(s));
  }
  return out;
}

}  // namespace vtm::tc::cli
