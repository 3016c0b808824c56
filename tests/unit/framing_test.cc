// Framing: round trip, oversized lengths refused before allocation, truncated frames.
#include "vtm/framing.h"

#include <gtest/gtest.h>
#include <sys/socket.h>

#include <thread>

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

// A protocol with a larger limit (migration: 16 MiB) sends and reads frames above the default
// 1 MiB; the default refuses them on both ends, and the writer writes nothing then.
TEST(FramingTest, LargerLimitAppliesToWriterAndReader) {
  Pair p;
  const std::string big(3u << 20, 'x');
  Status refused = WriteFrame(p.a.get(), big);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.error().code(), ErrorCode::kInvalidArgument);
  EXPECT_NE(refused.error().message().find("limit is 1048576"), std::string::npos) << refused.error().message();
  std::thread writer([&] { EXPECT_TRUE(WriteFrame(p.a.get(), big, 16u << 20).ok()); });
  auto f = ReadFrame(p.b.get(), 16u << 20);
  writer.join();
  ASSERT_TRUE(f.ok()) << f.error().ToString();
  EXPECT_EQ(f->size(), big.size());
  // Nothing of the refused frame reached the reader: the next frame is the one that follows.
  ASSERT_TRUE(WriteFrame(p.a.get(), "next").ok());
  auto next = ReadFrame(p.b.get());
  ASSERT_TRUE(next.ok());
  EXPECT_EQ(*next, "next");
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
