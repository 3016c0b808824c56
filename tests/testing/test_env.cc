// Test fixtures shared by the integration and e2e tiers.
#include "test_env.h"

#include "vtm/hex.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <memory>
#include <stdexcept>

namespace vtm::testing {

TempDir::TempDir() {
  const char* base = std::getenv("TMPDIR");
  std::string tmpl = std::string(base && *base ? base : "/tmp") + "/vtm-test-XXXXXX";
  if (mkdtemp(tmpl.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
  path_ = tmpl;
}

TempDir::~TempDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

CommandResult RunCommand(const std::vector<std::string>& argv, const std::string& stdin_data) {
  CommandResult result;
  int out[2], in[2];
  if (pipe2(out, O_CLOEXEC) != 0 || pipe2(in, O_CLOEXEC) != 0) return result;
  pid_t pid = fork();
  if (pid == 0) {
    dup2(in[0], 0);
    dup2(out[1], 1);
    dup2(out[1], 2);
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    execvp(args[0], args.data());
    _exit(127);
  }
  close(out[1]);
  close(in[0]);
  if (!stdin_data.empty()) (void)!write(in[1], stdin_data.data(), stdin_data.size());
  close(in[1]);
  char buf[4096];
  ssize_t n;
  while ((n = read(out[0], buf, sizeof buf)) > 0) result.output.append(buf, static_cast<size_t>(n));
  close(out[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return result;
}

std::string BuildPath(const std::string& relative) { return std::string(VTM_BUILD_DIR) + "/" + relative; }

std::string HexToBytes(std::string_view hex) {
  auto bytes = vtm::HexDecode(hex);
  EXPECT_TRUE(bytes.ok()) << "not hex: " << hex;
  return bytes.ok() ? *bytes : std::string();
}

std::string SpkiDerToPem(const std::string& der) {
  const auto* p = reinterpret_cast<const unsigned char*>(der.data());
  std::unique_ptr<EVP_PKEY, decltype(&EVP_PKEY_free)> key(d2i_PUBKEY(nullptr, &p, static_cast<long>(der.size())),
                                                          EVP_PKEY_free);
  EXPECT_TRUE(key);
  std::unique_ptr<BIO, decltype(&BIO_free)> bio(BIO_new(BIO_s_mem()), BIO_free);
  EXPECT_EQ(PEM_write_bio_PUBKEY(bio.get(), key.get()), 1);
  char* data = nullptr;
  long len = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<size_t>(len));
}

std::string Sha256(std::string_view data) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (EVP_Digest(data.data(), data.size(), md, &len, EVP_sha256(), nullptr) != 1) {
    ADD_FAILURE() << "EVP_Digest(SHA-256) failed";
    return "";
  }
  return std::string(reinterpret_cast<char*>(md), len);
}

std::string AsString(const SecretBytes& secret) {
  return std::string(reinterpret_cast<const char*>(secret.data()), secret.size());
}

namespace {
void RunOpenssl(const std::vector<std::string>& argv) {
  auto r = RunCommand(argv);
  ASSERT_EQ(r.exit_code, 0) << r.output;
}
}  // namespace

void MakeTestCa(const std::string& dir, const std::string& name) {
  RunOpenssl({"openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout",
              dir + "/" + name + ".key", "-out", dir + "/" + name + ".pem", "-subj", "/CN=" + name, "-days", "2"});
}

void IssueTestCertificate(const std::string& dir, const std::string& name, const std::string& ca) {
  const std::string p = dir + "/";
  RunOpenssl({"openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout",
              p + name + ".key", "-out", p + name + ".csr", "-subj", "/CN=" + name});
  RunOpenssl({"openssl", "x509", "-req", "-in", p + name + ".csr", "-CA", p + ca + ".pem", "-CAkey", p + ca + ".key",
              "-CAcreateserial", "-out", p + name + ".pem", "-days", "2"});
}

}  // namespace vtm::testing
