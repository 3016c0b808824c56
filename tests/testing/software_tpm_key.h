// TPM public areas for keys made in software: the TPM2B_PUBLIC a TPM would return for an ECC
// P-256 key with the given attributes, so unit tests can build TPM evidence and credentials
// without a TPM. Signing keys get ECDSA-SHA256 (the AK/IK templates), decryption keys the
// storage shape (AES-128-CFB, no scheme: the SRK, EK and migration import key templates).
// Header-only; includers link tss2-mu and OpenSSL. Failures are test failures.
#pragma once

#include <gtest/gtest.h>
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <tss2/tss2_mu.h>

#include <cstdint>
#include <string>

namespace vtm::testing {

inline std::string MarshalEccP256Public(EVP_PKEY* key, TPMA_OBJECT attributes) {
  TPM2B_PUBLIC pub{};
  TPMT_PUBLIC& p = pub.publicArea;
  p.type = TPM2_ALG_ECC;
  p.nameAlg = TPM2_ALG_SHA256;
  p.objectAttributes = attributes;
  TPMS_ECC_PARMS& ecc = p.parameters.eccDetail;
  if (attributes & TPMA_OBJECT_SIGN_ENCRYPT) {
    ecc.symmetric.algorithm = TPM2_ALG_NULL;
    ecc.scheme.scheme = TPM2_ALG_ECDSA;
    ecc.scheme.details.ecdsa.hashAlg = TPM2_ALG_SHA256;
  } else {
    ecc.symmetric.algorithm = TPM2_ALG_AES;
    ecc.symmetric.keyBits.aes = 128;
    ecc.symmetric.mode.aes = TPM2_ALG_CFB;
    ecc.scheme.scheme = TPM2_ALG_NULL;
  }
  ecc.curveID = TPM2_ECC_NIST_P256;
  ecc.kdf.scheme = TPM2_ALG_NULL;
  for (auto [param, coordinate] : {std::pair{OSSL_PKEY_PARAM_EC_PUB_X, &p.unique.ecc.x},
                                   std::pair{OSSL_PKEY_PARAM_EC_PUB_Y, &p.unique.ecc.y}}) {
    BIGNUM* bn = nullptr;
    EXPECT_EQ(EVP_PKEY_get_bn_param(key, param, &bn), 1);
    EXPECT_EQ(BN_bn2binpad(bn, coordinate->buffer, 32), 32);
    coordinate->size = 32;
    BN_free(bn);
  }
  uint8_t buf[sizeof(TPM2B_PUBLIC)];
  size_t off = 0;
  EXPECT_EQ(Tss2_MU_TPM2B_PUBLIC_Marshal(&pub, buf, sizeof buf, &off), TSS2_RC_SUCCESS);
  return std::string(reinterpret_cast<char*>(buf), off);
}

}  // namespace vtm::testing
