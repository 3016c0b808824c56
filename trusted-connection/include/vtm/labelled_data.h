// Labelled signed data (ISO/IEC 27071 clause 6.6): data wrapped in a label naming who made it
// (VM UUID, service, SHA-256 of its IK certificate) and the environment it was made in
// (PCR values, attestation verdict digests, ...), signed with the IK inside the vTPM as a CMS
// SignedData (DER, content attached, the IK certificate and CA chain included). The guest
// makes it with `vtm-sign-data` (openssl cms + tpm2 provider); this library parses and
// verifies it. Format: docs/trusted-connection.md "Labelled signed data".
//
// Thread safety: free functions, no shared state.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "vtm/error.h"

namespace vtm::tc {

inline constexpr char kLabelMagic[] = "vtm-labelled-data/1";

struct Label {
  std::string vm_uuid;
  std::string service;
  std::string ik_cert_sha256;  // lower-case hex
  int64_t created = 0;         // seconds since the epoch, the guest's clock (informational)
  std::string nonce;           // lower-case hex, empty if none
  std::vector<std::pair<std::string, std::string>> environment;  // "env.<name>" fields in order
};

struct LabelledContent {
  Label label;
  std::string data;
};

// Parses the signed content (the label, a blank line, the data). kInvalidArgument naming the
// line and what is wrong for anything that is not this format.
Result<LabelledContent> ParseLabelledContent(std::string_view content);
// The inverse (tests, and signers that are not the guest script).
std::string SerializeLabelledContent(const LabelledContent& content);

struct SignedDataExpectation {
  std::string trusted_ca_pem;      // host CA or fleet CA certificate(s)
  std::vector<std::string> crls;   // PEM or DER
  bool allow_missing_crl = false;
  std::string vm_uuid;             // empty: any VM
  std::string service;             // empty: any service
  std::string nonce;               // hex; empty: no nonce required
};

struct VerifiedData {
  LabelledContent content;
  std::string signer_subject;
  std::string signer_certificate_der;
};

// Checks, in order, and says which failed: the CMS structure; the signer's chain to a trusted
// CA and the CRLs (kPermissionDenied); the signature over content and label (kDataLoss); that
// the signer's certificate is an IK certificate; that the label names the signer's own VM,
// service and certificate (kDataLoss); the expected VM, service and nonce (kPermissionDenied).
Result<VerifiedData> VerifyLabelledData(std::string_view cms_der, const SignedDataExpectation& expect);

}  // namespace vtm::tc
