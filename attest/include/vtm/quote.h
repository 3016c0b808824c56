// TPM2_Quote checks without a TPM (vtm_attest): the marshalled TPMS_ATTEST and TPMT_SIGNATURE
// of a quote (tss2-mu), the quoted PCR values that travel with it, and each check a verifier
// makes: structure (magic TPM_GENERATED, type TPM_ST_ATTEST_QUOTE, the PCR values cover
// exactly the quoted selection), signature by a restricted signing key, extraData, and the
// pcrDigest recomputed from the PCR values. Each check is its own function so a verdict can
// name the one that failed; VerifyQuote runs them all. Outside data throughout: malformed
// input is kInvalidArgument, a check that fails is kFailedPrecondition (signature kDataLoss).
// Stateless; thread-safe.
#pragma once

#include <tss2/tss2_tpm2_types.h>

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "attestation.pb.h"
#include "vtm/error.h"

namespace vtm::attest {

// One PCR bank of the quoted values: PCR index -> digest.
struct PcrBank {
  TPM2_ALG_ID hash_alg = 0;
  std::map<uint32_t, std::string> values;
};

// The PCR values a quote covers, in selection order (bank by bank, PCRs ascending): the
// Quote.pcr_values field, i.e. a marshalled TPML_PCR_SELECTION followed by marshalled
// TPML_DIGESTs (at most 8 digests each) whose digests, concatenated, are the selected PCRs.
struct QuotedPcrs {
  TPML_PCR_SELECTION selection{};
  std::vector<PcrBank> banks;

  // The value of pcr in the bank of hash_alg, or nullptr if it was not quoted.
  const std::string* Find(TPM2_ALG_ID hash_alg, uint32_t pcr) const;
};

// Parses Quote.pcr_values. kInvalidArgument for bytes that are not one selection followed by
// exactly as many digests as it selects, of its banks' sizes; for a bank selected twice.
Result<QuotedPcrs> ParsePcrValues(std::string_view pcr_values);
// The Quote.pcr_values bytes for pcrs (banks in order, PCRs ascending), for whoever collects
// a quote (the RA client) and tests. kInvalidArgument for an unknown bank, a PCR index >= 24,
// a digest of the wrong size, more than 16 banks.
Result<std::string> MarshalPcrValues(const std::vector<PcrBank>& pcrs);
// The bytes tpm2-tools reads with `tpm2_checkquote -f FILE` (its default "serialized" PCR
// format: little-endian TPML_PCR_SELECTION and TPML_DIGEST structure dumps), for cross-checks.
std::string Tpm2ToolsPcrFile(const QuotedPcrs& pcrs);
// The inverse: the Quote.pcr_values bytes of a `tpm2_quote -o FILE` (e.g. a guest's quote
// handed to vtmctl). kInvalidArgument for a file that is not exactly that structure dump or
// whose digests do not match its selection.
Result<std::string> PcrValuesFromTpm2ToolsFile(std::string_view file);
// A quote from the three files `tpm2_quote -m MSG -s SIG -o PCRS` writes (TPMS_ATTEST,
// TPMT_SIGNATURE in the default "tss" format, PCR file). Errors name the file at fault.
Result<Quote> ReadTpm2ToolsQuote(const std::string& message_path, const std::string& signature_path,
                                 const std::string& pcrs_path);
// H(concatenation of the selected PCR values in selection order): what TPM2_Quote puts in
// pcrDigest, with H the hash of the signing scheme.
Result<std::string> PcrDigestOf(const QuotedPcrs& pcrs, TPM2_ALG_ID hash_alg);

struct ParsedQuote {
  TPMS_ATTEST attest{};
  TPMT_SIGNATURE signature{};
  QuotedPcrs pcrs;
  std::string extra_data;  // attest.extraData as bytes
};

// Structure: attest, signature and pcr_values unmarshal exactly; magic is TPM_GENERATED; type
// is TPM_ST_ATTEST_QUOTE; pcr_values selects exactly the PCRs the quote selected.
Result<ParsedQuote> ParseQuote(const Quote& quote);
// The signature over quote.attest is by ak (a marshalled TPM2B_PUBLIC of a restricted signing
// key: only such a key refuses to sign data that merely looks like a TPM_GENERATED structure).
Status CheckQuoteSignature(const Quote& quote, const ParsedQuote& parsed, std::string_view ak_tpm2b_public);
// extraData equals expected (constant time).
Status CheckQuoteExtraData(const ParsedQuote& parsed, std::string_view expected);
// pcrDigest equals the digest of the PCR values (with the signature's hash).
Status CheckQuotePcrDigest(const ParsedQuote& parsed);

// All of the above.
Result<ParsedQuote> VerifyQuote(const Quote& quote, std::string_view ak_tpm2b_public, std::string_view extra_data);

}  // namespace vtm::attest
