// Key material in memory: zeroized when destroyed, never printed.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "vtm/error.h"

namespace vtm {

class SecretBytes {
 public:
  SecretBytes() = default;
  explicit SecretBytes(size_t n) : data_(n) {}
  SecretBytes(const uint8_t* p, size_t n) : data_(p, p + n) {}
  ~SecretBytes() { Wipe(); }
  SecretBytes(SecretBytes&& o) noexcept : data_(std::move(o.data_)) { o.data_.clear(); }
  SecretBytes& operator=(SecretBytes&& o) noexcept {
    if (this != &o) {
      Wipe();
      data_ = std::move(o.data_);
      o.data_.clear();
    }
    return *this;
  }
  SecretBytes(const SecretBytes&) = delete;
  SecretBytes& operator=(const SecretBytes&) = delete;

  SecretBytes Clone() const { return SecretBytes(data_.data(), data_.size()); }
  uint8_t* data() { return data_.data(); }
  const uint8_t* data() const { return data_.data(); }
  size_t size() const { return data_.size(); }
  bool empty() const { return data_.empty(); }
  void Wipe();

 private:
  std::vector<uint8_t> data_;
};

// n bytes from the OS's CSPRNG (OpenSSL RAND_priv_bytes).
Result<SecretBytes> RandomSecret(size_t n);

// Keeps this process's keys out of core dumps: not dumpable (no core, no ptrace or
// /proc/<pid>/mem for other processes of the same uid) and a core size limit of 0, soft and
// hard. The limit is what survives execve: every child, swtpm included (which exec makes
// dumpable again), inherits it and cannot raise it. Call first thing in main.
Status KeepSecretsOutOfCoreDumps();

}  // namespace vtm
