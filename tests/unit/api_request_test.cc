// API request validation: malformed bytes, missing op, bad UUIDs and names are refused
// before they reach the manager.
#include <gtest/gtest.h>

#include "api_service.h"

namespace vtm {
namespace {

TEST(ApiRequestTest, AcceptsWellFormedRequests) {
  api::Request r;
  r.mutable_create()->set_uuid("6f1b2e6c-0a1b-4c2d-8e3f-00112233aabb");
  r.mutable_create()->set_name("web1");
  EXPECT_TRUE(ParseRequest(r.SerializeAsString()).ok());
  api::Request s;
  s.mutable_start()->set_uuid("web1");
  EXPECT_TRUE(ParseRequest(s.SerializeAsString()).ok());
  api::Request l;
  l.mutable_list();
  EXPECT_TRUE(ParseRequest(l.SerializeAsString()).ok());
}

TEST(ApiRequestTest, RefusesBadInputWithClearErrors) {
  auto garbage = ParseRequest(std::string("\xff\xff\xff\xff\x0f", 5));
  ASSERT_FALSE(garbage.ok());
  EXPECT_EQ(garbage.error().code(), ErrorCode::kInvalidArgument);

  auto empty = ParseRequest("");
  ASSERT_FALSE(empty.ok());
  EXPECT_NE(empty.error().message().find("no operation"), std::string::npos);

  api::Request bad_uuid;
  bad_uuid.mutable_create()->set_uuid("not-a-uuid");
  auto r = ParseRequest(bad_uuid.SerializeAsString());
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message().find("not a UUID"), std::string::npos);

  api::Request traversal;
  traversal.mutable_delete_()->set_uuid("../../etc");
  EXPECT_FALSE(ParseRequest(traversal.SerializeAsString()).ok());

  api::Request no_vm;
  no_vm.mutable_stop();
  EXPECT_FALSE(ParseRequest(no_vm.SerializeAsString()).ok());
}

TEST(ApiRequestTest, HostResealNeedsPcrsOnceEachWithHexValues) {
  auto parse = [](std::vector<std::pair<uint32_t, std::string>> values) {
    api::Request r;
    auto* reseal = r.mutable_host_reseal();
    for (auto& [pcr, hex] : values) {
      auto* v = reseal->add_expected();
      v->set_pcr(pcr);
      v->set_digest_hex(hex);
    }
    return ParseRequest(r.SerializeAsString());
  };
  const std::string sha256(64, 'a');
  EXPECT_TRUE(parse({{7, sha256}}).ok());
  EXPECT_TRUE(parse({{0, sha256}, {7, std::string(128, 'F')}}).ok());  // sizes are vtmd's to check

  auto none = parse({});
  ASSERT_FALSE(none.ok());
  EXPECT_EQ(none.error().code(), ErrorCode::kInvalidArgument);
  EXPECT_NE(none.error().message().find("at least one PCR"), std::string::npos) << none.error().message();
  auto range = parse({{24, sha256}});
  ASSERT_FALSE(range.ok());
  EXPECT_NE(range.error().message().find("PCR 24 is not an index from 0 to 23"), std::string::npos);
  auto twice = parse({{7, sha256}, {7, sha256}});
  ASSERT_FALSE(twice.ok());
  EXPECT_NE(twice.error().message().find("PCR 7 is given more than once"), std::string::npos);
  for (const std::string& bad : {std::string("xyz0"), std::string(63, 'a'), std::string(130, 'a')}) {
    auto r = parse({{7, bad}});
    ASSERT_FALSE(r.ok()) << bad;
    EXPECT_EQ(r.error().code(), ErrorCode::kInvalidArgument);
    EXPECT_NE(r.error().message().find("is not a digest in hex"), std::string::npos) << r.error().message();
  }
}

TEST(ApiRequestTest, ErrorCodesMapToApiStatus) {
  EXPECT_EQ(ToApiStatus(ErrorCode::kNotFound), api::STATUS_NOT_FOUND);
  EXPECT_EQ(ToApiStatus(ErrorCode::kFailedPrecondition), api::STATUS_FAILED_PRECONDITION);
  EXPECT_EQ(ToApiStatus(ErrorCode::kTpm), api::STATUS_INTERNAL);
}

}  // namespace
}  // namespace vtm
