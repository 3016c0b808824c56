// Framing: round trip, oversized lengths refused before allocation, truncated frames.
#include "vtm/framing.h"

#include <gtest/gtest.h>
#include <sys/socket.h>

#include "vtm/net.h"
#include "vtm/unique_fd.h"

namespace vtm {
namespace {

struct Pair {
  UniqueFd a, b;
  Pair() {
    int sv[2];
    EXPECT_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    a.reset(sv[0]);
    b.reset(sv[1]);
  }
};

TEST(FramingTest, RoundTrip) {
  Pair p;
  ASSERT_TRUE(WriteFrame(p.a.get(), std::string("hello\0world", 11)).ok());
  ASSERT_TRUE(WriteFrame(p.a.get(), "").ok());
  auto f1 = ReadFrame(p.b.get());
  ASSERT_TRUE(f1.ok());
  EXPECT_EQ(*f1, std::string("hello\0world", 11));
  auto f2 = ReadFrame(p.b.get());
  ASSERT_TRUE(f2.ok());
  EXPECT_EQ(*f2, "");
}

TEST(FramingTest, OversizedLengthRefused) {
  Pair p;
  const uint8_t hdr[4] = {0x7f, 0xff, 0xff, 0xff};
  ASSERT_TRUE(WriteAll(p.a.get(), hdr, 4).ok());
  auto f = ReadFrame(p.b.get());
  ASSERT_FALSE(f.ok());
  EXPECT_EQ(f.error().code(), ErrorCode::kInvalidArgument);
}

TEST(FramingTest, TruncatedFrameIsUnavailable) {
  Pair p;
  const uint8_t hdr[6] = {0, 0, 0, 10, 'a', 'b'};
  ASSERT_TRUE(WriteAll(p.a.get(), hdr, 6).ok());
  p.a.reset();
  auto f = ReadFrame(p.b.get());
  ASSERT_FALSE(f.ok());
  EXPECT_EQ(f.error().code(), ErrorCode::kUnavailable);
}

}  // namespace
}  // namespace vtm
