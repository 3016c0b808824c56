// The RA client (ISO/IEC 27070 5.3, 6.4): on a verifier's nonce it collects host evidence
// (a host-AK quote over the host PCRs, the UEFI and IMA event logs where the host has them,
// vtmd's measurement log, the host certificates) and, for deep attestation, links a guest's
// own vTPM quote to it. Requests that arrive within a window share one host quote whose
// qualifying data is the RFC 6962 Merkle root over the batch's request leaves (vtm/merkle.h);
// each answer carries its inclusion proof. A hardware TPM quotes a few to tens of times a
// second; batching is how one host answers thousands of attestations a second, and a lone
// request waits at most the window.
//
// What leaves: TPM-native structures and DER only, never a key or vTPM state. Entries of the
// measurement log that describe other VMs are redacted to their digests (the digest still
// replays): host evidence carries no VM's launch details, deep evidence only its own VM's.
//
// Thread safety: all methods may be called from any thread; one batching thread quotes.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <future>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "attestation.pb.h"
#include "vtm/error.h"
#include "vtm/host_tpm.h"
#include "vtm/secret.h"
#include "vtm/tpm.h"

namespace vtm {

// What the RA client needs from the host (vtmd implements it over its host AK, measurement
// log, host CA and registry; tests may implement it over anything real).
class AttestationHost {
 public:
  virtual ~AttestationHost() = default;
  // A host-AK quote over selection with qualifying data, the quoted PCR values, and the
  // measurement log exactly as far as the quoted PCRs have seen it.
  struct QuoteAndLog {
    TpmAttestation quote;
    PcrValues pcrs;
    attest::MeasurementLog log;
  };
  virtual Result<QuoteAndLog> QuoteWithLog(const PcrSelection& selection, const std::string& qualifying) = 0;
  // Host EK/AK publics and certificates, host CA certificate and chain.
  virtual attest::HostIdentity Identity() = 0;
  // The vTPM identity of a VM (UUID or name); kNotFound if unknown or provisioned without one.
  virtual Result<attest::VtpmIdentity> Vtpm(const std::string& vm) = 0;
  // Credential activation by the host AK with the host EK (a remote verifier binding them).
  virtual Result<SecretBytes> ActivateCredential(const TpmCredential& credential) = 0;
};

struct RaClientConfig {
  PcrSelection quote_pcrs;                         // host PCRs each host quote covers
  std::chrono::microseconds batch_window{2000};   // 0: no batching, one quote per request
  size_t max_batch = 4096;                         // a batch is quoted at once when this full
  std::string uefi_event_log_path;                 // empty: none (e.g. a simulated host TPM)
  std::string ima_log_path;                        // empty: none
};

// Checks a verifier nonce: 8..64 bytes (a TPM2B_DATA holds the 32-byte root, not the nonce,
// but the verifier's nonce must be fresh enough to mean something and small enough to bound).
Status CheckNonce(const std::string& nonce);

class RaClient {
 public:
  RaClient(AttestationHost& host, RaClientConfig config);
  ~RaClient();  // stops the batching thread; requests still queued fail with kUnavailable
  RaClient(const RaClient&) = delete;
  RaClient& operator=(const RaClient&) = delete;

  Result<attest::HostEvidence> HostEvidence(const std::string& nonce);
  // vm: UUID or name; guest_quote: the guest's vTPM quote by its AK with the nonce as extraData.
  Result<attest::DeepEvidence> DeepEvidence(const std::string& vm, const std::string& nonce,
                                            const attest::Quote& guest_quote, const std::string& guest_event_log);

  // Host quotes made so far (tests and benchmarks check the batching with it).
  uint64_t quotes_made() const;

 private:
  struct Pending {
    std::string leaf;
    std::string vm_uuid;  // empty for host evidence: every VM's entries are redacted
    std::promise<Result<attest::HostEvidence>> done;
  };
  Result<attest::HostEvidence> Submit(std::string leaf, std::string vm_uuid);
  void BatchLoop();
  void QuoteBatch(std::deque<std::unique_ptr<Pending>> batch);

  AttestationHost& host_;
  const RaClientConfig config_;
  std::string uefi_log_, ima_log_;  // read once per batch
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::unique_ptr<Pending>> queue_;  // GUARDED_BY(mu_)
  bool stopping_ = false;                       // GUARDED_BY(mu_)
  uint64_t quotes_ = 0;                         // GUARDED_BY(mu_)
  std::thread batcher_;
};

// The measurement log with every INSTANCE_LAUNCH entry not of keep_vm_uuid reduced to its
// digest (keep_vm_uuid empty: all of them).
attest::MeasurementLog RedactMeasurementLog(const attest::MeasurementLog& log, const std::string& keep_vm_uuid);

}  // namespace vtm
