// Listener: a connection that finds the table full waits for a slot before it is refused, a
// table that stays full still refuses cleanly, and Shutdown ends Serve with handlers running.
#include "vtm/listener.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <memory>
#include <string>
#include <thread>

namespace vtm {
namespace {

using std::chrono::milliseconds;

// Answers "served", then holds its slot until the client closes (as the vtmd API does).
void HoldUntilClosed(UniqueFd conn) {
  (void)!::write(conn.get(), "served", 6);
  char c;
  while (::read(conn.get(), &c, 1) > 0) {
  }
}

void AnswerBusy(UniqueFd conn) { (void)!::write(conn.get(), "busy", 4); }

std::string ReadWord(int fd) {
  char buf[16];
  ssize_t n = ::read(fd, buf, sizeof buf);
  return n > 0 ? std::string(buf, static_cast<size_t>(n)) : std::string();
}

struct Server {
  std::unique_ptr<Listener> listener;
  std::string address;
  std::thread thread;
  Server(int max_connections, milliseconds slot_wait) {
    auto fd = ListenTcp("127.0.0.1:0");
    EXPECT_TRUE(fd.ok());
    address = "127.0.0.1:" + std::to_string(*BoundTcpPort(fd->get()));
    listener = std::make_unique<Listener>(std::move(*fd), HoldUntilClosed, max_connections, AnswerBusy, slot_wait);
    thread = std::thread([this] { listener->Serve(); });
  }
  ~Server() {
    listener->Shutdown();
    thread.join();
  }
};

TEST(ListenerTest, ConnectionWaitsForASlotThatFrees) {
  Server server(1, std::chrono::seconds(10));
  auto first = ConnectTcp(server.address);
  ASSERT_TRUE(first.ok());
  EXPECT_EQ(ReadWord(first->get()), "served");
  auto second = ConnectTcp(server.address);  // queued: the only slot is taken
  ASSERT_TRUE(second.ok());
  std::this_thread::sleep_for(milliseconds(300));
  first->reset();  // frees the slot
  auto start = std::chrono::steady_clock::now();
  EXPECT_EQ(ReadWord(second->get()), "served");
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(5));
}

TEST(ListenerTest, TableThatStaysFullRefusesAfterTheWait) {
  Server server(1, milliseconds(300));
  auto first = ConnectTcp(server.address);
  ASSERT_TRUE(first.ok());
  EXPECT_EQ(ReadWord(first->get()), "served");
  auto second = ConnectTcp(server.address);
  ASSERT_TRUE(second.ok());
  EXPECT_EQ(ReadWord(second->get()), "busy");
  // The refused connection took nothing: once the first closes, a third is served.
  first->reset();
  auto third = ConnectTcp(server.address);
  ASSERT_TRUE(third.ok());
  EXPECT_EQ(ReadWord(third->get()), "served");
}

TEST(ListenerTest, ShutdownWhileWaitingForASlotReturns) {
  auto server = std::make_unique<Server>(1, std::chrono::seconds(60));
  auto first = ConnectTcp(server->address);
  ASSERT_TRUE(first.ok());
  EXPECT_EQ(ReadWord(first->get()), "served");
  auto second = ConnectTcp(server->address);
  ASSERT_TRUE(second.ok());
  std::this_thread::sleep_for(milliseconds(300));  // the accept loop now waits for a slot
  auto start = std::chrono::steady_clock::now();
  server.reset();  // Shutdown + join while `first` still holds the slot
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(10));
  EXPECT_EQ(ReadWord(second->get()), "");  // never served, never answered busy
}

}  // namespace
}  // namespace vtm
