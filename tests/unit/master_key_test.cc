// Key wrapping under the master key, and the UUID/name checks on API input.
#include "master_key.h"

#include <gtest/gtest.h>

#include "manager.h"

namespace vtm {
namespace {

MasterKey TestKey(uint8_t fill) {
  SecretBytes k(32);
  for (size_t i = 0; i < k.size(); ++i) k.data()[i] = static_cast<uint8_t>(fill + i);
  return MasterKey::FromBytes(std::move(k));
}

TEST(MasterKeyTest, WrapUnwrapRoundTrip) {
  MasterKey mk = TestKey(1);
  auto secret = RandomSecret(32);
  ASSERT_TRUE(secret.ok());
  auto wrapped = mk.Wrap(*secret, "vtm:vm:x:state-key");
  ASSERT_TRUE(wrapped.ok());
  EXPECT_EQ(wrapped->size(), 4u + 1 + 12 + 32 + 16);
  // The plaintext key does not appear in the wrapped blob.
  EXPECT_EQ(wrapped->find(std::string(reinterpret_cast<const char*>(secret->data()), 32)), std::string::npos);
  auto back = mk.Unwrap(*wrapped, "vtm:vm:x:state-key");
  ASSERT_TRUE(back.ok()) << back.error().ToString();
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(back->data()), back->size()),
            std::string(reinterpret_cast<const char*>(secret->data()), secret->size()));
}

TEST(MasterKeyTest, WrongLabelWrongKeyAndTamperingAreRefused) {
  MasterKey mk = TestKey(1);
  auto secret = RandomSecret(32);
  ASSERT_TRUE(secret.ok());
  auto wrapped = mk.Wrap(*secret, WrapLabel("a", "state-key"));
  ASSERT_TRUE(wrapped.ok());
  auto other_vm = mk.Unwrap(*wrapped, WrapLabel("b", "state-key"));
  ASSERT_FALSE(other_vm.ok());
  EXPECT_EQ(other_vm.error().code(), ErrorCode::kDataLoss);
  EXPECT_FALSE(mk.Unwrap(*wrapped, WrapLabel("a", "migration-key")).ok());
  EXPECT_FALSE(TestKey(2).Unwrap(*wrapped, WrapLabel("a", "state-key")).ok());
  for (size_t i = 0; i < wrapped->size(); ++i) {
    std::string t = *wrapped;
    t[i] ^= 0x01;
    EXPECT_FALSE(mk.Unwrap(t, WrapLabel("a", "state-key")).ok()) << "flip at " << i;
  }
  EXPECT_FALSE(mk.Unwrap("", "x").ok());
  EXPECT_FALSE(mk.Unwrap(wrapped->substr(0, 20), WrapLabel("a", "state-key")).ok());
}

TEST(ValidationTest, Uuids) {
  auto u = NormalizeUuid("6F1B2E6C-0A1B-4C2D-8E3F-00112233AABB");
  ASSERT_TRUE(u.ok());
  EXPECT_EQ(*u, "6f1b2e6c-0a1b-4c2d-8e3f-00112233aabb");
  EXPECT_FALSE(NormalizeUuid("6f1b2e6c0a1b4c2d8e3f00112233aabb").ok());
  EXPECT_FALSE(NormalizeUuid("6f1b2e6c-0a1b-4c2d-8e3f-00112233aabbc").ok());
  EXPECT_FALSE(NormalizeUuid("../../etc/passwd").ok());
  EXPECT_FALSE(NormalizeUuid("").ok());
  auto g = GenerateUuid();
  ASSERT_TRUE(g.ok());
  EXPECT_TRUE(NormalizeUuid(*g).ok());
  EXPECT_EQ((*g)[14], '4');
}

TEST(ValidationTest, Names) {
  EXPECT_TRUE(ValidateVmName("web-01.prod_a").ok());
  EXPECT_FALSE(ValidateVmName("").ok());
  EXPECT_FALSE(ValidateVmName("-x").ok());
  EXPECT_FALSE(ValidateVmName("a/b").ok());
  EXPECT_FALSE(ValidateVmName("..\n").ok());
  EXPECT_FALSE(ValidateVmName(std::string(65, 'a')).ok());
}

}  // namespace
}  // namespace vtm
