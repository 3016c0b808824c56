// Recorded processes: a successor ends exactly the process its dead predecessor recorded, never
// a process that merely reuses the pid, nor one whose owner still runs.
#include "vtm/subprocess.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include "test_env.h"
#include "test_processes.h"
#include "vtm/fs.h"

namespace vtm {
namespace {

// Polls until pid is gone (or a zombie); false if it still runs after a few seconds.
bool GoneSoon(pid_t pid) {
  for (int i = 0; i < 500 && ProcessAlive(pid); ++i) usleep(10000);
  return !ProcessAlive(pid);
}

TEST(RecordedProcessTest, EndsTheRecordedProcessOfADeadOwnerAndRemovesTheRecord) {
  testing::TempDir dir;
  const std::string record = dir.path() + "/sleeper.process";
  // Its owner is gone (the intermediate process that started it exited), as after kill -9.
  pid_t orphan = testing::SpawnOrphan({"sleep", "60"});
  ASSERT_GT(orphan, 0);
  ASSERT_TRUE(RecordProcess(record, orphan).ok());
  auto ended = EndRecordedProcess(record);
  ASSERT_TRUE(ended.ok()) << ended.error().message();
  EXPECT_EQ(*ended, orphan);
  EXPECT_TRUE(GoneSoon(orphan));
  EXPECT_FALSE(PathExists(record));
  // Nothing recorded: nothing to end.
  auto none = EndRecordedProcess(record);
  ASSERT_TRUE(none.ok());
  EXPECT_EQ(*none, 0);
}

TEST(RecordedProcessTest, LeavesAProcessThatDoesNotMatchTheRecord) {
  testing::TempDir dir;
  const std::string record = dir.path() + "/p.process";
  pid_t orphan = testing::SpawnOrphan({"sleep", "60"});
  ASSERT_GT(orphan, 0);
  ASSERT_TRUE(RecordProcess(record, orphan).ok());
  // Same pid, different start time: the pid was reused by another process.
  auto text = ReadFile(record);
  ASSERT_TRUE(text.ok());
  std::string forged = *text;
  size_t space = forged.find(' ');
  forged.insert(space + 1, "1");
  ASSERT_TRUE(WriteFileAtomic(record, forged, 0600).ok());
  auto ended = EndRecordedProcess(record);
  ASSERT_TRUE(ended.ok());
  EXPECT_EQ(*ended, 0);
  EXPECT_TRUE(ProcessAlive(orphan));
  EXPECT_FALSE(PathExists(record));
  kill(orphan, SIGKILL);
}

// A second owner on the same record (two simulated host TPMs on one state directory) must not
// end the process of a first owner that still runs.
TEST(RecordedProcessTest, LeavesAProcessWhoseOwnerStillRuns) {
  testing::TempDir dir;
  const std::string record = dir.path() + "/owned.process";
  auto child = Subprocess::Spawn({"sleep", "60"}, SpawnOptions{});
  ASSERT_TRUE(child.ok());
  ASSERT_TRUE(RecordProcess(record, child->pid()).ok());
  auto ended = EndRecordedProcess(record);
  ASSERT_TRUE(ended.ok()) << ended.error().message();
  EXPECT_EQ(*ended, 0);
  EXPECT_TRUE(child->running());
  EXPECT_TRUE(PathExists(record));
}

TEST(SpawnTest, ParentDeathSignalReachesTheChildWhenItsSpawningThreadEnds) {
  pid_t grandchild = -1;
  int pipe_fds[2];
  ASSERT_EQ(pipe(pipe_fds), 0);
  // An intermediate process spawns a child with parent_death_signal and is then killed.
  pid_t middle = fork();
  ASSERT_GE(middle, 0);
  if (middle == 0) {
    SpawnOptions opts;
    opts.parent_death_signal = SIGKILL;
    auto c = Subprocess::Spawn({"sleep", "60"}, opts);
    pid_t p = c.ok() ? c->Release() : -1;
    (void)!write(pipe_fds[1], &p, sizeof p);
    pause();
    _exit(0);
  }
  ASSERT_EQ(read(pipe_fds[0], &grandchild, sizeof grandchild), static_cast<ssize_t>(sizeof grandchild));
  close(pipe_fds[0]);
  close(pipe_fds[1]);
  ASSERT_GT(grandchild, 0);
  EXPECT_TRUE(ProcessAlive(grandchild));
  kill(middle, SIGKILL);
  int st;
  waitpid(middle, &st, 0);
  for (int i = 0; i < 200 && ProcessAlive(grandchild); ++i) usleep(10000);
  EXPECT_FALSE(ProcessAlive(grandchild));
}

}  // namespace
}  // namespace vtm
