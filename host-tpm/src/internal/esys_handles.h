// RAII owners for what ESAPI hands out: output buffers, transient TPM objects and sessions,
// ESAPI references to persistent objects and NV indices, and stack copies of secrets. Shared
// by every file of the ESAPI implementation so an early error return never leaks any of them.
#pragma once

#include <openssl/crypto.h>
#include <tss2/tss2_esys.h>

#include <utility>

#include "internal/tpm_error.h"
#include "vtm/log.h"

namespace vtm::internal {

// Owns a buffer that ESAPI allocated for an output parameter. With kWipe the buffer is
// zeroized before it is freed, for outputs that hold secrets (TPM2B_SENSITIVE_DATA).
template <typename T, bool kWipe = false>
class EsysOut {
 public:
  EsysOut() = default;
  ~EsysOut() {
    if (p_ != nullptr && kWipe) OPENSSL_cleanse(p_, sizeof(T));
    Esys_Free(p_);
  }
  EsysOut(const EsysOut&) = delete;
  EsysOut& operator=(const EsysOut&) = delete;

  T** out() { return &p_; }  // pass to ESAPI; call at most once per object
  const T* operator->() const { return p_; }
  const T& operator*() const { return *p_; }

 private:
  T* p_ = nullptr;
};

// A transient object or session in the TPM, flushed when this goes out of scope: TPMs have
// only a handful of slots, and a leaked one makes later commands fail with TPM_RC_OBJECT_MEMORY.
class ScopedTr {
 public:
  explicit ScopedTr(ESYS_CONTEXT* esys) : esys_(esys) {}
  ~ScopedTr() { Flush(); }
  ScopedTr(ScopedTr&& o) noexcept : esys_(o.esys_), tr_(std::exchange(o.tr_, ESYS_TR_NONE)) {}
  ScopedTr& operator=(ScopedTr&&) = delete;
  ScopedTr(const ScopedTr&) = delete;
  ScopedTr& operator=(const ScopedTr&) = delete;

  ESYS_TR* out() { return &tr_; }
  ESYS_TR get() const { return tr_; }
  // Hands the object over to a caller that flushes it itself (e.g. a TpmKey).
  ESYS_TR release() { return std::exchange(tr_, ESYS_TR_NONE); }

 private:
  void Flush() {
    if (tr_ == ESYS_TR_NONE) return;
    TSS2_RC rc = Esys_FlushContext(esys_, tr_);
    if (rc != TSS2_RC_SUCCESS) {
      LOG_WARNING << TpmError("TPM2_FlushContext", rc).message() << " (a TPM object slot may stay in use)";
      Esys_TR_Close(esys_, &tr_);  // at least release ESAPI's bookkeeping
    }
    tr_ = ESYS_TR_NONE;
  }

  ESYS_CONTEXT* esys_;
  ESYS_TR tr_ = ESYS_TR_NONE;
};

// ESAPI's reference to something that lives on in the TPM (a persistent object, an NV index):
// only ESAPI's bookkeeping is released, the TPM entity stays.
class ScopedTrRef {
 public:
  explicit ScopedTrRef(ESYS_CONTEXT* esys) : esys_(esys) {}
  ~ScopedTrRef() {
    if (tr_ != ESYS_TR_NONE) Esys_TR_Close(esys_, &tr_);
  }
  ScopedTrRef(const ScopedTrRef&) = delete;
  ScopedTrRef& operator=(const ScopedTrRef&) = delete;

  ESYS_TR* out() { return &tr_; }
  ESYS_TR get() const { return tr_; }
  ESYS_TR release() { return std::exchange(tr_, ESYS_TR_NONE); }

 private:
  ESYS_CONTEXT* esys_;
  ESYS_TR tr_ = ESYS_TR_NONE;
};

// Zeroizes a stack structure that held a secret (the sensitive part of a Create command).
template <typename T>
class WipeOnExit {
 public:
  explicit WipeOnExit(T* p) : p_(p) {}
  ~WipeOnExit() { OPENSSL_cleanse(p_, sizeof(T)); }
  WipeOnExit(const WipeOnExit&) = delete;
  WipeOnExit& operator=(const WipeOnExit&) = delete;

 private:
  T* p_;
};

}  // namespace vtm::internal
