// RAII owners for OpenSSL objects and the one place OpenSSL's error queue becomes a vtm Error.
// Internal to vtm_ca.
#pragma once

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <memory>
#include <string>

#include "vtm/error.h"
#include "vtm/ossl_ptr.h"

namespace vtm::ca {

using BioPtr = OsslPtr<BIO, BIO_free_all>;
using BnPtr = OsslPtr<BIGNUM, BN_free>;
using EvpPkeyPtr = OsslPtr<EVP_PKEY, EVP_PKEY_free>;
using EvpPkeyCtxPtr = OsslPtr<EVP_PKEY_CTX, EVP_PKEY_CTX_free>;
using EcdsaSigPtr = OsslPtr<ECDSA_SIG, ECDSA_SIG_free>;
using X509Ptr = OsslPtr<X509, X509_free>;
using X509ReqPtr = OsslPtr<X509_REQ, X509_REQ_free>;
using X509CrlPtr = OsslPtr<X509_CRL, X509_CRL_free>;
using X509NamePtr = OsslPtr<X509_NAME, X509_NAME_free>;
using X509ExtPtr = OsslPtr<X509_EXTENSION, X509_EXTENSION_free>;
using Asn1ObjectPtr = OsslPtr<ASN1_OBJECT, ASN1_OBJECT_free>;
using Asn1IntegerPtr = OsslPtr<ASN1_INTEGER, ASN1_INTEGER_free>;
using Asn1OctetPtr = OsslPtr<ASN1_OCTET_STRING, ASN1_OCTET_STRING_free>;
using Asn1TimePtr = OsslPtr<ASN1_TIME, ASN1_TIME_free>;
using GeneralNamesPtr = OsslPtr<GENERAL_NAMES, GENERAL_NAMES_free>;

using vtm::OpenSslError;

// Owned DER produced by an i2d_* function.
template <typename T, int (*I2d)(const T*, unsigned char**)>
Result<std::string> ToDer(const T* obj, const char* what) {
  unsigned char* buf = nullptr;
  const int len = I2d(obj, &buf);
  if (len <= 0) return OpenSslError(ErrorCode::kInternal, std::string("encoding ") + what);
  std::string out(reinterpret_cast<char*>(buf), static_cast<size_t>(len));
  OPENSSL_free(buf);
  return out;
}

std::string Sha256(const std::string& data);

// A public key from DER SubjectPublicKeyInfo; the whole input must be consumed.
Result<EvpPkeyPtr> PublicKeyFromSpki(const std::string& spki_der, const char* what);

}  // namespace vtm::ca
