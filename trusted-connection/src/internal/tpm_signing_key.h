// A device key in a TPM presented to libssl as an ordinary EC key whose only private
// operation, ECDSA signing of a digest, is delegated to the TPM (tpm2 provider, TPM2_Sign).
// Why: OpenSSL 3.0 picks the signature implementation by property query before the key's own
// provider, so a TPM key used directly would have the tpm2 provider do every digest and
// signature verification of the handshake too (TPM hash sequences, more than a TPM's three
// object slots). Delegating just the signature keeps the rest in software.
// Thread safety: the returned key may be used by one handshake at a time per SSL_CTX (libssl
// serialises nothing here; the tpm2 provider locks its ESAPI context).
#pragma once

#include <memory>

#include "internal/provider_keys.h"

namespace vtm::tc::internal {

// tpm_key: an EC P-256 key from the tpm2 provider; providers must outlive the result.
Result<PkeyPtr> MakeTpmDelegatingKey(const std::shared_ptr<ProviderContext>& providers, PkeyPtr tpm_key);

}  // namespace vtm::tc::internal
