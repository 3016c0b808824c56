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

TEST(ApiRequestTest, ErrorCodesMapToApiStatus) {
  EXPECT_EQ(ToApiStatus(ErrorCode::kNotFound), api::STATUS_NOT_FOUND);
  EXPECT_EQ(ToApiStatus(ErrorCode::kFailedPrecondition), api::STATUS_FAILED_PRECONDITION);
  EXPECT_EQ(ToApiStatus(ErrorCode::kTpm), api::STATUS_INTERNAL);
}

}  // namespace
}  // namespace vtm
