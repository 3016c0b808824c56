// tpm2_checkquote as the outside judge of a vtm_attest Quote: writes the AK as PEM, the attest,
// the signature and the PCR values in tpm2-tools' own file format, and runs the tool.
// Header-only so only tests that link vtm_attest include it.
#pragma once

#include <string>

#include "attestation.pb.h"
#include "test_env.h"
#include "vtm/fs.h"
#include "vtm/hex.h"
#include "vtm/quote.h"
#include "vtm/tpm_structures.h"

namespace vtm::testing {

inline CommandResult Tpm2Checkquote(const vtm::attest::Quote& q, const std::string& ak_tpm2b_public,
                                    const std::string& extra_data, const std::string& dir) {
  auto spki = SpkiFromTpmPublic(ak_tpm2b_public);
  auto pcrs = vtm::attest::ParsePcrValues(q.pcr_values());
  if (!spki.ok() || !pcrs.ok()) return CommandResult{-1, "AK public or PCR values do not parse"};
  const std::string d = dir + "/";
  if (!WriteFileAtomic(d + "checkquote-ak.pem", SpkiDerToPem(*spki), 0600).ok() ||
      !WriteFileAtomic(d + "checkquote.attest", q.attest(), 0600).ok() ||
      !WriteFileAtomic(d + "checkquote.sig", q.signature(), 0600).ok() ||
      !WriteFileAtomic(d + "checkquote.pcrs", vtm::attest::Tpm2ToolsPcrFile(*pcrs), 0600).ok()) {
    return CommandResult{-1, "writing tpm2_checkquote's input files failed"};
  }
  return RunCommand({"tpm2_checkquote", "-u", d + "checkquote-ak.pem", "-m", d + "checkquote.attest", "-s",
                     d + "checkquote.sig", "-f", d + "checkquote.pcrs", "-g", "sha256", "-q", HexEncode(extra_data)});
}

}  // namespace vtm::testing
