// The ESAPI Tpm, part 1: opening a TPM (TCTI string or stream), describing it, PCRs, random
// bytes and sealing. Every ESAPI handle and buffer is owned by an RAII wrapper so that an early
// error return never leaks a TPM object slot or leaves unsealed plaintext in freed memory.
#include "vtm/host_tpm.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <tss2/tss2_esys.h>
#include <tss2/tss2_tctildr.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <utility>

#include "internal/esys_handles.h"
#include "internal/esys_tpm.h"
#include "internal/pcr_bank.h"
#include "internal/stream_tcti.h"
#include "internal/tpm_error.h"
#include "internal/tpm_marshal.h"
#include "vtm/hex.h"
#include "vtm/log.h"
#include "vtm/tpm.h"

namespace vtm::internal {
namespace {

constexpr size_t kMaxSealedSecret = 128;  // MAX_SYM_DATA: the most a sealed data object holds

// Session parameter encryption: AES-128-CFB, the one symmetric mode every TPM 2.0 supports.
TPMT_SYM_DEF SessionCipher() {
  TPMT_SYM_DEF sym{};
  sym.algorithm = TPM2_ALG_AES;
  sym.keyBits.aes = 128;
  sym.mode.aes = TPM2_ALG_CFB;
  return sym;
}

// PolicyPCR's pcrDigest: the policy's hash (SHA-256) over the selected PCR values in
// ascending order. Computed here from the given values (read or expected), so the policy is
// bound to exactly the values recorded in pcrs_at_seal even if a PCR is extended in between.
Result<TPM2B_DIGEST> PolicyPcrDigest(const PcrValues& values) {
  std::string concatenated;
  for (const auto& [pcr, digest] : values.digests) concatenated += digest;
  TPM2B_DIGEST out{};
  unsigned int len = 0;
  if (EVP_Digest(concatenated.data(), concatenated.size(), out.buffer, &len, EVP_sha256(), nullptr) != 1) {
    return Error(ErrorCode::kInternal, "SHA-256 of the PCR values failed");
  }
  out.size = static_cast<UINT16>(len);
  return out;
}

}  // namespace

// Returns a validated copy in canonical form; a hand-built PcrSelection gets the same checks
// as a parsed one.
Result<PcrSelection> Canonical(const PcrSelection& selection) {
  if (selection.pcrs.empty()) {
    return Error(ErrorCode::kInvalidArgument, "PCR selection " + selection.ToString() + " names no PCRs");
  }
  return PcrSelection::Parse(selection.ToString());
}

TPML_PCR_SELECTION ToTpml(const PcrBank& bank, const std::vector<int>& pcrs) {
  TPML_PCR_SELECTION tpml{};
  tpml.count = 1;
  tpml.pcrSelections[0].hash = bank.alg;
  tpml.pcrSelections[0].sizeofSelect = 3;  // 24 PCRs
  for (int pcr : pcrs) tpml.pcrSelections[0].pcrSelect[pcr / 8] |= static_cast<uint8_t>(1u << (pcr % 8));
  return tpml;
}

// The standard ECC P-256 storage key template (as in the TCG provisioning guidance's SRK and
// `tpm2_createprimary -G ecc256:aes128cfb`). The key is derived from the owner seed and this
// template alone, so re-creating it always yields the same key and nothing is persisted in NV.
TPMT_SYM_DEF_OBJECT Aes128CfbObject() {
  TPMT_SYM_DEF_OBJECT sym{};
  sym.algorithm = TPM2_ALG_AES;
  sym.keyBits.aes = 128;
  sym.mode.aes = TPM2_ALG_CFB;
  return sym;
}

TPM2B_PUBLIC StoragePrimaryTemplate() {
  TPM2B_PUBLIC t{};
  TPMT_PUBLIC& area = t.publicArea;
  area.type = TPM2_ALG_ECC;
  area.nameAlg = TPM2_ALG_SHA256;
  area.objectAttributes = TPMA_OBJECT_FIXEDTPM | TPMA_OBJECT_FIXEDPARENT | TPMA_OBJECT_SENSITIVEDATAORIGIN |
                          TPMA_OBJECT_USERWITHAUTH | TPMA_OBJECT_NODA | TPMA_OBJECT_RESTRICTED |
                          TPMA_OBJECT_DECRYPT;
  TPMS_ECC_PARMS& ecc = area.parameters.eccDetail;
  ecc.symmetric = Aes128CfbObject();
  ecc.scheme.scheme = TPM2_ALG_NULL;
  ecc.curveID = TPM2_ECC_NIST_P256;
  ecc.kdf.scheme = TPM2_ALG_NULL;
  return t;
}

Result<std::unique_ptr<Tpm>> EsysTpm::Open(TctiPtr tcti, const std::string& where) {
  const std::string context = "opening the TPM at " + where;
  std::unique_ptr<EsysTpm> tpm(new EsysTpm(std::move(tcti), where));

  ESYS_CONTEXT* esys = nullptr;
  TSS2_RC rc = Esys_Initialize(&esys, tpm->tcti_ctx_.get(), nullptr);
  if (rc != TSS2_RC_SUCCESS) return TpmError("Esys_Initialize", rc).Context(context);
  tpm->esys_.reset(esys);

  // A resource manager (/dev/tpmrm0) or swtpm's startup-clear flag has usually started the
  // TPM already; TPM_RC_INITIALIZE just says so.
  rc = Esys_Startup(esys, TPM2_SU_CLEAR);
  if (rc != TSS2_RC_SUCCESS && TpmResponseCode(rc) != TPM2_RC_INITIALIZE) {
    return TpmError("TPM2_Startup", rc).Context(context);
  }
  auto description = tpm->DescribeTpm();
  if (!description.ok()) return std::move(description).error().Context(context);
  tpm->description_ = *description;
  return std::unique_ptr<Tpm>(std::move(tpm));
}

Result<std::string> EsysTpm::DescribeTpm() {
  // TPM2_PT_MANUFACTURER through TPM2_PT_FIRMWARE_VERSION_2 are consecutive fixed properties.
  constexpr UINT32 kCount = TPM2_PT_FIRMWARE_VERSION_2 - TPM2_PT_MANUFACTURER + 1;
  TPMI_YES_NO more = TPM2_NO;
  EsysOut<TPMS_CAPABILITY_DATA> caps;
  TSS2_RC rc = Esys_GetCapability(esys(), ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, TPM2_CAP_TPM_PROPERTIES,
                                  TPM2_PT_MANUFACTURER, kCount, &more, caps.out());
  if (rc != TSS2_RC_SUCCESS) return TpmError("TPM2_GetCapability(TPM_PROPERTIES)", rc);
  UINT32 manufacturer = 0, fw1 = 0, fw2 = 0;
  const TPML_TAGGED_TPM_PROPERTY& props = caps->data.tpmProperties;
  for (UINT32 i = 0; i < props.count && i < TPM2_MAX_TPM_PROPERTIES; ++i) {
    if (props.tpmProperty[i].property == TPM2_PT_MANUFACTURER) manufacturer = props.tpmProperty[i].value;
    if (props.tpmProperty[i].property == TPM2_PT_FIRMWARE_VERSION_1) fw1 = props.tpmProperty[i].value;
    if (props.tpmProperty[i].property == TPM2_PT_FIRMWARE_VERSION_2) fw2 = props.tpmProperty[i].value;
  }
  // The manufacturer is four ASCII characters, big-endian, NUL-padded ("IBM\0", "INTC").
  std::string vendor;
  for (int shift = 24; shift >= 0; shift -= 8) {
    char c = static_cast<char>((manufacturer >> shift) & 0xff);
    if (c >= 0x20 && c < 0x7f) vendor += c;
  }
  char firmware[64];
  std::snprintf(firmware, sizeof firmware, "%u.%u (0x%08x 0x%08x)", fw1 >> 16, fw1 & 0xffff, fw1, fw2);
  return "TPM 2.0 at " + where_ + ", manufacturer " + (vendor.empty() ? "unknown" : vendor) + ", firmware " +
         firmware;
}

Result<PcrValues> EsysTpm::ReadPcrs(const PcrSelection& selection) {
  VTM_ASSIGN_OR_RETURN(PcrSelection canonical, Canonical(selection));
  const PcrBank& bank = *internal::FindPcrBank(canonical.bank);
  PcrValues values;
  values.selection = canonical;
  std::vector<int> remaining = canonical.pcrs;
  // TPM2_PCR_Read returns at most 8 digests per call; ask again for whatever is left.
  while (!remaining.empty()) {
    TPML_PCR_SELECTION request = ToTpml(bank, remaining);
    UINT32 update_counter = 0;
    EsysOut<TPML_PCR_SELECTION> returned;
    EsysOut<TPML_DIGEST> digests;
    TSS2_RC rc = Esys_PCR_Read(esys(), ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, &request, &update_counter,
                               returned.out(), digests.out());
    if (rc != TSS2_RC_SUCCESS) return TpmError("TPM2_PCR_Read(" + canonical.ToString() + ")", rc);
    size_t next = 0;
    std::vector<int> still_missing;
    for (int pcr : remaining) {
      bool read = false;
      for (UINT32 s = 0; s < returned->count && s < TPM2_NUM_PCR_BANKS; ++s) {
        const TPMS_PCR_SELECTION& sel = returned->pcrSelections[s];
        if (sel.hash == bank.alg && static_cast<size_t>(pcr / 8) < sel.sizeofSelect &&
            (sel.pcrSelect[pcr / 8] & (1u << (pcr % 8)))) {
          read = true;
        }
      }
      if (!read) {
        still_missing.push_back(pcr);
        continue;
      }
      // Digests come in the order of the returned selection: ascending PCR index.
      if (next >= digests->count || digests->digests[next].size != bank.digest_size) {
        return Error(ErrorCode::kTpm, "TPM2_PCR_Read(" + canonical.ToString() +
                                          ") returned fewer or shorter digests than PCRs it selected");
      }
      values.digests[pcr].assign(reinterpret_cast<const char*>(digests->digests[next].buffer), bank.digest_size);
      ++next;
    }
    if (still_missing.size() == remaining.size()) {
      return Error(ErrorCode::kFailedPrecondition,
                   "the host TPM returned no " + canonical.bank + " values for " + canonical.ToString() +
                       "; is the " + canonical.bank + " PCR bank allocated? (see tpm2_getcap pcrs)");
    }
    remaining = std::move(still_missing);
  }
  return values;
}

Status EsysTpm::ExtendPcr(const std::string& bank_name, int pcr, const std::string& digest) {
  const PcrBank* bank = internal::FindPcrBank(bank_name);
  if (bank == nullptr) {
    return Error(ErrorCode::kInvalidArgument,
                 "unknown PCR bank \"" + bank_name + "\"; use sha1, sha256, sha384 or sha512");
  }
  if (pcr < 0 || pcr > internal::kMaxPcrIndex) {
    return Error(ErrorCode::kInvalidArgument, "PCR " + std::to_string(pcr) + " is not an index from 0 to 23");
  }
  if (digest.size() != bank->digest_size) {
    return Error(ErrorCode::kInvalidArgument, "a " + bank_name + " PCR is extended with a " +
                                                  std::to_string(bank->digest_size) + "-byte digest, not " +
                                                  std::to_string(digest.size()) + " bytes");
  }
  TPML_DIGEST_VALUES values{};
  values.count = 1;
  values.digests[0].hashAlg = bank->alg;
  std::memcpy(&values.digests[0].digest, digest.data(), digest.size());
  TSS2_RC rc = Esys_PCR_Extend(esys(), static_cast<ESYS_TR>(ESYS_TR_PCR0 + pcr), ESYS_TR_PASSWORD, ESYS_TR_NONE,
                               ESYS_TR_NONE, &values);
  if (rc != TSS2_RC_SUCCESS) return TpmError("TPM2_PCR_Extend(" + bank_name + ":" + std::to_string(pcr) + ")", rc);
  return OkStatus();
}

void EsysTpm::SetOwnerAuth(const SecretBytes& auth) {
  TPM2B_AUTH value{};
  value.size = static_cast<UINT16>(std::min(auth.size(), sizeof value.buffer));
  std::memcpy(value.buffer, auth.data(), value.size);
  Esys_TR_SetAuth(esys(), ESYS_TR_RH_OWNER, &value);
  OPENSSL_cleanse(value.buffer, sizeof value.buffer);
}

Result<SecretBytes> EsysTpm::GetRandom(size_t n) {
  SecretBytes out(n);
  size_t filled = 0;
  // A TPM returns at most one digest's worth per call.
  while (filled < n) {
    EsysOut<TPM2B_DIGEST, /*kWipe=*/true> chunk;
    UINT16 want = static_cast<UINT16>(std::min<size_t>(n - filled, sizeof(TPMU_HA)));
    TSS2_RC rc = Esys_GetRandom(esys(), ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, want, chunk.out());
    if (rc != TSS2_RC_SUCCESS) return TpmError("TPM2_GetRandom", rc);
    if (chunk->size == 0 || chunk->size > want) {
      return Error(ErrorCode::kTpm, "TPM2_GetRandom returned " + std::to_string(chunk->size) + " bytes for " +
                                        std::to_string(want) + " requested");
    }
    std::memcpy(out.data() + filled, chunk->buffer, chunk->size);
    filled += chunk->size;
  }
  return out;
}

Result<ScopedTr> EsysTpm::CreateStoragePrimary() {
  return CreatePrimary(ESYS_TR_RH_OWNER, StoragePrimaryTemplate(), "owner hierarchy, ECC P-256 storage key");
}

Result<ScopedTr> EsysTpm::StartSaltedSession(ESYS_TR storage_primary, TPM2_SE type, TPMA_SESSION attributes) {
  TPMT_SYM_DEF cipher = SessionCipher();
  ScopedTr session(esys());
  TSS2_RC rc = Esys_StartAuthSession(esys(), storage_primary, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE,
                                     ESYS_TR_NONE, nullptr, type, &cipher, TPM2_ALG_SHA256, session.out());
  if (rc != TSS2_RC_SUCCESS) return TpmError("TPM2_StartAuthSession(salted)", rc);
  // CONTINUESESSION stays set so the session outlives each command and ScopedTr flushes it.
  rc = Esys_TRSess_SetAttributes(esys(), session.get(), attributes | TPMA_SESSION_CONTINUESESSION, 0xff);
  if (rc != TSS2_RC_SUCCESS) return TpmError("Esys_TRSess_SetAttributes", rc);
  return session;
}

Result<SealedObject> EsysTpm::Seal(const SecretBytes& secret, const PcrSelection& selection) {
  VTM_ASSIGN_OR_RETURN(PcrValues current, ReadPcrs(selection));
  return SealToPcrValues(secret, current);
}

Result<SealedObject> EsysTpm::SealToPcrValues(const SecretBytes& secret, const PcrValues& values) {
  if (secret.empty() || secret.size() > kMaxSealedSecret) {
    return Error(ErrorCode::kInvalidArgument, "a sealed secret holds 1 to " + std::to_string(kMaxSealedSecret) +
                                                  " bytes, not " + std::to_string(secret.size()));
  }
  VTM_ASSIGN_OR_RETURN(PcrSelection canonical, Canonical(values.selection));
  const PcrBank& bank = *internal::FindPcrBank(canonical.bank);
  const TPML_PCR_SELECTION pcrs = ToTpml(bank, canonical.pcrs);
  // Exactly one value of the bank's size per selected PCR: the policy covers what the selection
  // says, nothing more or less.
  if (values.digests.size() != canonical.pcrs.size()) {
    return Error(ErrorCode::kInvalidArgument, "sealing to " + canonical.ToString() + " needs a value for each of its " +
                                                  std::to_string(canonical.pcrs.size()) + " PCRs, not " +
                                                  std::to_string(values.digests.size()));
  }
  for (int pcr : canonical.pcrs) {
    auto value = values.digests.find(pcr);
    const std::string name = canonical.bank + ":" + std::to_string(pcr);
    if (value == values.digests.end()) {
      return Error(ErrorCode::kInvalidArgument, "sealing to " + canonical.ToString() + ": no value for PCR " + name);
    }
    if (value->second.size() != bank.digest_size) {
      return Error(ErrorCode::kInvalidArgument,
                   "a value for PCR " + name + " has " + std::to_string(bank.digest_size) + " bytes (" +
                       std::to_string(2 * bank.digest_size) + " hex digits), not " +
                       std::to_string(value->second.size()));
    }
  }

  VTM_ASSIGN_OR_RETURN(ScopedTr primary, CreateStoragePrimary());
  PcrValues pcr_values{canonical, values.digests};
  VTM_ASSIGN_OR_RETURN(TPM2B_DIGEST pcr_digest, PolicyPcrDigest(pcr_values));

  // The policy digest comes from the TPM itself (a trial session), so it is computed exactly
  // the way the TPM will check it at unseal time.
  TPM2B_DIGEST policy{};
  {
    TPMT_SYM_DEF no_cipher{};
    no_cipher.algorithm = TPM2_ALG_NULL;
    ScopedTr trial(esys());
    TSS2_RC rc = Esys_StartAuthSession(esys(), ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE,
                                       ESYS_TR_NONE, nullptr, TPM2_SE_TRIAL, &no_cipher, TPM2_ALG_SHA256,
                                       trial.out());
    if (rc != TSS2_RC_SUCCESS) return TpmError("TPM2_StartAuthSession(trial)", rc);
    rc = Esys_PolicyPCR(esys(), trial.get(), ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, &pcr_digest, &pcrs);
    if (rc != TSS2_RC_SUCCESS) return TpmError("TPM2_PolicyPCR(trial, " + canonical.ToString() + ")", rc);
    EsysOut<TPM2B_DIGEST> digest;
    rc = Esys_PolicyGetDigest(esys(), trial.get(), ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, digest.out());
    if (rc != TSS2_RC_SUCCESS) return TpmError("TPM2_PolicyGetDigest", rc);
    policy = *digest;
  }

  // A sealed data object: fixed to this TPM and parent, usable only through its policy (no
  // userWithAuth), its data supplied by us rather than generated (no sensitiveDataOrigin).
  TPM2B_PUBLIC in_public{};
  in_public.publicArea.type = TPM2_ALG_KEYEDHASH;
  in_public.publicArea.nameAlg = TPM2_ALG_SHA256;
  in_public.publicArea.objectAttributes = TPMA_OBJECT_FIXEDTPM | TPMA_OBJECT_FIXEDPARENT;
  in_public.publicArea.authPolicy = policy;
  in_public.publicArea.parameters.keyedHashDetail.scheme.scheme = TPM2_ALG_NULL;

  TPM2B_SENSITIVE_CREATE in_sensitive{};
  WipeOnExit wipe_sensitive(&in_sensitive);
  in_sensitive.sensitive.data.size = static_cast<UINT16>(secret.size());
  std::memcpy(in_sensitive.sensitive.data.buffer, secret.data(), secret.size());

  // The secret is TPM2_Create's first parameter: DECRYPT on a salted session sends it
  // encrypted to the TPM.
  VTM_ASSIGN_OR_RETURN(ScopedTr session, StartSaltedSession(primary.get(), TPM2_SE_HMAC, TPMA_SESSION_DECRYPT));
  TPM2B_DATA outside_info{};
  TPML_PCR_SELECTION creation_pcrs{};
  EsysOut<TPM2B_PRIVATE> out_private;
  EsysOut<TPM2B_PUBLIC> out_public;
  TSS2_RC rc = Esys_Create(esys(), primary.get(), session.get(), ESYS_TR_NONE, ESYS_TR_NONE, &in_sensitive,
                           &in_public, &outside_info, &creation_pcrs, out_private.out(), out_public.out(), nullptr,
                           nullptr, nullptr);
  if (rc != TSS2_RC_SUCCESS) {
    Error error = TpmError("TPM2_Create(sealed data object)", rc);
    if (TpmResponseCode(rc) == TPM2_RC_OBJECT_MEMORY) {
      // TPM2_Create needs two free object slots (the parent's and the new object's).
      return Error(error.code(), error.message() +
                                     "; the TPM has no two free object slots: without a resource manager (a "
                                     "simulated host TPM, /dev/tpm0) the keys a user keeps loaded fill its few "
                                     "slots; reach it through one (/dev/tpmrm0)");
    }
    return error;
  }

  SealedObject sealed;
  VTM_ASSIGN_OR_RETURN(sealed.tpm2b_public,
                       (MarshalToString<TPM2B_PUBLIC, Tss2_MU_TPM2B_PUBLIC_Marshal>(*out_public, "TPM2B_PUBLIC")));
  VTM_ASSIGN_OR_RETURN(sealed.tpm2b_private, (MarshalToString<TPM2B_PRIVATE, Tss2_MU_TPM2B_PRIVATE_Marshal>(
                                                 *out_private, "TPM2B_PRIVATE")));
  sealed.pcrs_at_seal = std::move(pcr_values);
  return sealed;
}

Result<SecretBytes> EsysTpm::Unseal(const SealedObject& sealed) {
  VTM_ASSIGN_OR_RETURN(PcrSelection canonical, Canonical(sealed.pcrs_at_seal.selection));
  const PcrBank& bank = *internal::FindPcrBank(canonical.bank);
  const TPML_PCR_SELECTION pcrs = ToTpml(bank, canonical.pcrs);
  VTM_ASSIGN_OR_RETURN(TPM2B_PUBLIC in_public, (UnmarshalExactly<TPM2B_PUBLIC, Tss2_MU_TPM2B_PUBLIC_Unmarshal>(
                                                   sealed.tpm2b_public, "TPM2B_PUBLIC")));
  VTM_ASSIGN_OR_RETURN(TPM2B_PRIVATE in_private, (UnmarshalExactly<TPM2B_PRIVATE, Tss2_MU_TPM2B_PRIVATE_Unmarshal>(
                                                     sealed.tpm2b_private, "TPM2B_PRIVATE")));

  VTM_ASSIGN_OR_RETURN(ScopedTr primary, CreateStoragePrimary());
  ScopedTr object(esys());
  TSS2_RC rc = Esys_Load(esys(), primary.get(), ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, &in_private,
                         &in_public, object.out());
  if (rc != TSS2_RC_SUCCESS) {
    Error error = TpmError("TPM2_Load(sealed object)", rc);
    return Error(error.code(), error.message() +
                                   "; the sealed object is corrupt, or was sealed by another TPM or before this "
                                   "TPM's owner hierarchy was cleared");
  }

  // Policy session salted with the storage key, with ENCRYPT so the TPM encrypts the
  // unsealed secret in its response and it never crosses the TCTI in clear.
  VTM_ASSIGN_OR_RETURN(ScopedTr session, StartSaltedSession(primary.get(), TPM2_SE_POLICY, TPMA_SESSION_ENCRYPT));
  // An empty pcrDigest makes the TPM use the PCRs' current values; TPM2_Unseal then checks the
  // resulting policy digest against the object's authPolicy.
  TPM2B_DIGEST current{};
  rc = Esys_PolicyPCR(esys(), session.get(), ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, &current, &pcrs);
  if (rc != TSS2_RC_SUCCESS) return TpmError("TPM2_PolicyPCR(" + canonical.ToString() + ")", rc);

  EsysOut<TPM2B_SENSITIVE_DATA, /*kWipe=*/true> data;
  rc = Esys_Unseal(esys(), object.get(), session.get(), ESYS_TR_NONE, ESYS_TR_NONE, data.out());
  if (rc != TSS2_RC_SUCCESS) {
    Error error = TpmError("TPM2_Unseal", rc);
    if (error.code() == ErrorCode::kPolicyMismatch) return DiagnosePolicyFailure(sealed, error);
    return error;
  }
  return SecretBytes(data->buffer, data->size);
}

// Names each PCR whose value moved since sealing, so an operator sees *what* changed (a
// firmware update, a different boot path) rather than a bare TPM_RC_POLICY_FAIL.
Error EsysTpm::DiagnosePolicyFailure(const SealedObject& sealed, const Error& tpm_error) {
  auto now = ReadPcrs(sealed.pcrs_at_seal.selection);
  if (!now.ok()) {
    return Error(ErrorCode::kPolicyMismatch, tpm_error.message() + "; the current PCR values could not be read (" +
                                                 now.error().message() + ")");
  }
  const std::string& bank = sealed.pcrs_at_seal.selection.bank;
  std::string changes;
  for (const auto& [pcr, value] : now->digests) {
    auto at_seal = sealed.pcrs_at_seal.digests.find(pcr);
    std::string sealed_hex = at_seal == sealed.pcrs_at_seal.digests.end() ? "unknown" : HexEncode(at_seal->second);
    if (at_seal != sealed.pcrs_at_seal.digests.end() && at_seal->second == value) continue;
    if (!changes.empty()) changes += "; ";
    changes.append("host PCR ").append(bank).append(":").append(std::to_string(pcr));
    changes.append(" changed since the master key was sealed (sealed value ").append(sealed_hex);
    changes.append(", now ").append(HexEncode(value)).append(")");
  }
  if (changes.empty()) {
    // The TPM refused although the recorded values still match: the record in the file does
    // not describe the object's real policy (edited file, or pieces of two sealed objects).
    return Error(ErrorCode::kPolicyMismatch,
                 "the host TPM refused the PCR policy of the sealed object although host PCRs " +
                     sealed.pcrs_at_seal.selection.ToString() +
                     " still hold the values recorded at seal time; the sealed file's PCR record does not match "
                     "its policy (corrupt or tampered file) [" + tpm_error.message() + "]");
  }
  return Error(ErrorCode::kPolicyMismatch, changes);
}

}  // namespace vtm::internal

namespace vtm {

Result<std::unique_ptr<Tpm>> Tpm::OpenTcti(const std::string& tcti) {
  if (tcti.empty()) {
    return Error(ErrorCode::kInvalidArgument,
                 "no TPM TCTI given; use e.g. device:/dev/tpmrm0 or swtpm:host=127.0.0.1,port=2321");
  }
  TSS2_TCTI_CONTEXT* tcti_ctx = nullptr;
  TSS2_RC rc = Tss2_TctiLdr_Initialize(tcti.c_str(), &tcti_ctx);
  if (rc != TSS2_RC_SUCCESS) return internal::TpmError("loading the TCTI", rc).Context("opening the TPM at " + tcti);
  internal::TctiPtr owned(tcti_ctx, [](TSS2_TCTI_CONTEXT* ctx) { Tss2_TctiLdr_Finalize(&ctx); });
  return internal::EsysTpm::Open(std::move(owned), tcti);
}

Result<std::unique_ptr<Tpm>> Tpm::OpenStream(UniqueFd fd, const std::string& label) {
  if (!fd.valid()) return Error(ErrorCode::kInvalidArgument, "no socket given for the TPM " + label);
  VTM_ASSIGN_OR_RETURN(internal::TctiPtr tcti, internal::NewStreamTcti(std::move(fd)));
  return internal::EsysTpm::Open(std::move(tcti), label);
}

// The host's TPM is a Tpm like any other; HostTpm is the narrower view most of vtmd needs.
Result<std::unique_ptr<HostTpm>> HostTpm::Open(const std::string& tcti) {
  VTM_ASSIGN_OR_RETURN(std::unique_ptr<Tpm> tpm, Tpm::OpenTcti(tcti));
  return std::unique_ptr<HostTpm>(std::move(tpm));
}

}  // namespace vtm
