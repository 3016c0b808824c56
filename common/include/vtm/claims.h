// Exclusive claims on string keys within one process (a VM's UUID, a migration ID): one holder
// per key at a time, released when its Claim is destroyed. A second claimant is refused at once
// (no waiting); the caller says what is in progress.
#pragma once

#include <optional>
#include <set>
#include <string>
#include <utility>

#include "vtm/mutex.h"

namespace vtm {

class Claims {
 public:
  class Claim {
   public:
    Claim(Claim&& other) noexcept : claims_(std::exchange(other.claims_, nullptr)), key_(std::move(other.key_)) {}
    Claim& operator=(Claim&&) = delete;
    Claim(const Claim&) = delete;
    Claim& operator=(const Claim&) = delete;
    ~Claim() {
      if (claims_ != nullptr) claims_->Release(key_);
    }

   private:
    friend class Claims;
    Claim(Claims* claims, std::string key) : claims_(claims), key_(std::move(key)) {}
    Claims* claims_;
    std::string key_;
  };

  // key's claim, or nullopt while another holder has it.
  std::optional<Claim> Try(const std::string& key) EXCLUDES(mu_) {
    MutexLock lock(mu_);
    if (!held_.insert(key).second) return std::nullopt;
    return Claim(this, key);
  }

 private:
  void Release(const std::string& key) EXCLUDES(mu_) {
    MutexLock lock(mu_);
    held_.erase(key);
  }
  Mutex mu_;
  std::set<std::string> held_ GUARDED_BY(mu_);
};

}  // namespace vtm
