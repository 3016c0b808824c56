// Batching of attestation requests under one host quote, and assembly of the evidence.
#include "ra_client.h"

#include <tss2/tss2_tpm2_types.h>

#include <map>

#include "vtm/digest.h"
#include "vtm/fs.h"
#include "vtm/log.h"
#include "vtm/merkle.h"
#include "vtm/quote.h"
#include "vtm/tpm_structures.h"

namespace vtm {
namespace {

constexpr uint32_t kEvidenceVersion = 1;

Result<TPM2_ALG_ID> BankAlg(const std::string& bank) {
  if (bank == "sha1") return TPM2_ALG_SHA1;
  if (bank == "sha256") return TPM2_ALG_SHA256;
  if (bank == "sha384") return TPM2_ALG_SHA384;
  if (bank == "sha512") return TPM2_ALG_SHA512;
  return Error(ErrorCode::kInvalidArgument, "unknown PCR bank '" + bank + "'");
}

Result<attest::Quote> ToQuote(const TpmAttestation& att, const PcrValues& values) {
  attest::PcrBank bank;
  VTM_ASSIGN_OR_RETURN(bank.hash_alg, BankAlg(values.selection.bank));
  for (const auto& [pcr, digest] : values.digests) bank.values[static_cast<uint32_t>(pcr)] = digest;
  VTM_ASSIGN_OR_RETURN(std::string pcr_values, attest::MarshalPcrValues({bank}));
  attest::Quote q;
  q.set_attest(att.attest);
  q.set_signature(att.signature);
  q.set_pcr_values(std::move(pcr_values));
  return q;
}

// An event log file as the kernel exposes it, or empty (absent, or unreadable: the verifier
// then lacks it, which it reports; vtmd logs why).
std::string ReadEventLog(const std::string& path) {
  if (path.empty() || !PathExists(path)) return "";
  auto bytes = ReadFile(path);
  if (!bytes.ok()) {
    LOG_WARNING << "cannot read the event log " << path << " for evidence: " << bytes.error().message();
    return "";
  }
  return std::move(bytes).value();
}

}  // namespace

Status CheckNonce(const std::string& nonce) {
  if (nonce.size() < 8 || nonce.size() > 64) {
    return Error(ErrorCode::kInvalidArgument,
                 "the verifier's nonce must be 8 to 64 bytes, not " + std::to_string(nonce.size()));
  }
  return OkStatus();
}

attest::MeasurementLog RedactMeasurementLog(const attest::MeasurementLog& log, const std::string& keep_vm_uuid) {
  attest::MeasurementLog out = log;
  for (auto& e : *out.mutable_events()) {
    if (e.type() != attest::MEASUREMENT_TYPE_INSTANCE_LAUNCH) continue;
    attest::InstanceLaunch launch;
    if (!keep_vm_uuid.empty() && launch.ParseFromString(e.event_data()) && launch.vm_uuid() == keep_vm_uuid) continue;
    e.clear_event_data();
  }
  return out;
}

RaClient::RaClient(AttestationHost& host, RaClientConfig config) : host_(host), config_(std::move(config)) {
  batcher_ = std::thread([this] { BatchLoop(); });
}

RaClient::~RaClient() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  batcher_.join();
}

uint64_t RaClient::quotes_made() const {
  std::lock_guard<std::mutex> lock(mu_);
  return quotes_;
}

Result<attest::HostEvidence> RaClient::HostEvidence(const std::string& nonce) {
  VTM_RETURN_IF_ERROR(CheckNonce(nonce));
  auto ev = Submit(attest::HostLeaf(nonce), "");
  if (ev.ok()) ev->set_nonce(nonce);
  return ev;
}

Result<attest::DeepEvidence> RaClient::DeepEvidence(const std::string& vm, const std::string& nonce,
                                                    const attest::Quote& guest_quote,
                                                    const std::string& guest_event_log) {
  VTM_RETURN_IF_ERROR(CheckNonce(nonce));
  if (guest_quote.attest().empty() || guest_quote.signature().empty()) {
    return Error(ErrorCode::kInvalidArgument, "the guest quote needs its attest and signature");
  }
  VTM_ASSIGN_OR_RETURN(attest::VtpmIdentity vtpm, host_.Vtpm(vm));
  // The leaf commits to this VM's vTPM names as the host knows them, so a guest quote can be
  // linked only to the vTPM vtmd launched for that VM.
  auto ek_name = TpmNameOfPublic(vtpm.ek_public());
  auto ak_name = TpmNameOfPublic(vtpm.ak_public());
  if (!ek_name.ok() || !ak_name.ok()) {
    return Error(ErrorCode::kFailedPrecondition, "the vTPM of VM " + vtpm.vm_uuid() +
                                                     " has no recorded EK/AK (created before vtmd recorded them?)");
  }
  VTM_ASSIGN_OR_RETURN(attest::HostEvidence host,
                       Submit(attest::DeepLeaf(nonce, vtpm.vm_uuid(), *ek_name, *ak_name, guest_quote.attest()),
                              vtpm.vm_uuid()));
  host.set_nonce(nonce);
  attest::DeepEvidence deep;
  deep.set_version(kEvidenceVersion);
  *deep.mutable_host() = std::move(host);
  *deep.mutable_vtpm() = std::move(vtpm);
  *deep.mutable_guest_quote() = guest_quote;
  deep.set_guest_event_log(guest_event_log);
  return deep;
}

Result<attest::HostEvidence> RaClient::Submit(std::string leaf, std::string vm_uuid) {
  auto p = std::make_unique<Pending>();
  p->leaf = std::move(leaf);
  p->vm_uuid = std::move(vm_uuid);
  auto result = p->done.get_future();
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) return Error(ErrorCode::kUnavailable, "the RA client is shutting down");
    queue_.push_back(std::move(p));
  }
  cv_.notify_all();
  return result.get();
}

void RaClient::BatchLoop() {
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    cv_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
    if (stopping_) break;
    // The window opens with the first request of a batch: a lone request waits at most the
    // window; a full batch goes at once.
    const auto close = std::chrono::steady_clock::now() + config_.batch_window;
    cv_.wait_until(lock, close, [this] { return stopping_ || queue_.size() >= config_.max_batch; });
    if (stopping_) break;
    std::deque<std::unique_ptr<Pending>> batch;
    while (!queue_.empty() && batch.size() < config_.max_batch) {
      batch.push_back(std::move(queue_.front()));
      queue_.pop_front();
    }
    ++quotes_;
    lock.unlock();
    QuoteBatch(std::move(batch));
    lock.lock();
  }
  for (auto& p : queue_) p->done.set_value(Error(ErrorCode::kUnavailable, "the RA client is shutting down"));
  queue_.clear();
}

void RaClient::QuoteBatch(std::deque<std::unique_ptr<Pending>> batch) {
  auto fail_all = [&](const Error& e) {
    for (auto& p : batch) p->done.set_value(e);
  };
  std::vector<std::string> leaves;
  leaves.reserve(batch.size());
  for (const auto& p : batch) leaves.push_back(p->leaf);
  auto tree = attest::MerkleTree::Build(leaves);
  if (!tree.ok()) return fail_all(tree.error());
  auto quoted = host_.QuoteWithLog(config_.quote_pcrs, tree->Root());
  if (!quoted.ok()) return fail_all(std::move(quoted).error().Context("quoting with the host AK"));
  auto quote = ToQuote(quoted->quote, quoted->pcrs);
  if (!quote.ok()) return fail_all(quote.error());
  attest::HostEvidence common;
  common.set_version(kEvidenceVersion);
  *common.mutable_host_quote() = std::move(quote).value();
  common.set_uefi_event_log(ReadEventLog(config_.uefi_event_log_path));
  common.set_ima_log(ReadEventLog(config_.ima_log_path));
  *common.mutable_host() = host_.Identity();
  // Redacted logs per distinct VM of the batch (host evidence: key "").
  std::map<std::string, attest::MeasurementLog> redacted;
  for (size_t i = 0; i < batch.size(); ++i) {
    auto proof = tree->Proof(i);
    if (!proof.ok()) {
      batch[i]->done.set_value(proof.error());
      continue;
    }
    auto it = redacted.find(batch[i]->vm_uuid);
    if (it == redacted.end()) {
      it = redacted.emplace(batch[i]->vm_uuid, RedactMeasurementLog(quoted->log, batch[i]->vm_uuid)).first;
    }
    attest::HostEvidence ev = common;
    *ev.mutable_proof() = std::move(proof).value();
    *ev.mutable_measurement_log() = it->second;
    batch[i]->done.set_value(std::move(ev));
  }
}

}  // namespace vtm
