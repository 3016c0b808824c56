// A mutex the compiler checks: clang's -Wthread-safety analysis (enabled for clang builds)
// verifies that every member marked GUARDED_BY(mu_) is touched only with mu_ held and that
// functions marked REQUIRES(mu_) are called with it. libstdc++'s std::mutex carries no
// annotations, so the project's shared state uses vtm::Mutex and vtm::MutexLock instead.
// Under gcc the annotations expand to nothing.
//
// Thread safety: Mutex is a std::mutex; MutexLock is owned by the thread that made it.
#pragma once

#include <chrono>
#include <condition_variable>
#include <mutex>

#if defined(__clang__)
#define VTM_THREAD_ANNOTATION_(x) __attribute__((x))
#else
#define VTM_THREAD_ANNOTATION_(x)
#endif

#define CAPABILITY(x) VTM_THREAD_ANNOTATION_(capability(x))
#define SCOPED_CAPABILITY VTM_THREAD_ANNOTATION_(scoped_lockable)
#define GUARDED_BY(x) VTM_THREAD_ANNOTATION_(guarded_by(x))
#define PT_GUARDED_BY(x) VTM_THREAD_ANNOTATION_(pt_guarded_by(x))
#define REQUIRES(...) VTM_THREAD_ANNOTATION_(requires_capability(__VA_ARGS__))
#define EXCLUDES(...) VTM_THREAD_ANNOTATION_(locks_excluded(__VA_ARGS__))
#define ACQUIRE(...) VTM_THREAD_ANNOTATION_(acquire_capability(__VA_ARGS__))
#define RELEASE(...) VTM_THREAD_ANNOTATION_(release_capability(__VA_ARGS__))
#define ASSERT_CAPABILITY(x) VTM_THREAD_ANNOTATION_(assert_capability(x))
#define NO_THREAD_SAFETY_ANALYSIS VTM_THREAD_ANNOTATION_(no_thread_safety_analysis)

namespace vtm {

class CAPABILITY("mutex") Mutex {
 public:
  Mutex() = default;
  Mutex(const Mutex&) = delete;
  Mutex& operator=(const Mutex&) = delete;

  void Lock() ACQUIRE() { mu_.lock(); }
  void Unlock() RELEASE() { mu_.unlock(); }
  // Tells the analysis that the caller holds the mutex where it cannot see it (inside the
  // predicate a CondVar evaluates with the mutex held).
  void AssertHeld() const ASSERT_CAPABILITY(this) {}

 private:
  friend class CondVar;
  std::mutex mu_;
};

// Holds a Mutex for its scope.
class SCOPED_CAPABILITY MutexLock {
 public:
  explicit MutexLock(Mutex& mu) ACQUIRE(mu) : mu_(mu) { mu_.Lock(); }
  ~MutexLock() RELEASE() { mu_.Unlock(); }
  MutexLock(const MutexLock&) = delete;
  MutexLock& operator=(const MutexLock&) = delete;

 private:
  Mutex& mu_;
};

// A condition variable over a vtm::Mutex the caller holds. Predicates run with the mutex
// held; they call mu.AssertHeld() so the analysis knows.
class CondVar {
 public:
  template <typename Predicate>
  void Wait(Mutex& mu, Predicate pred) REQUIRES(mu) {
    std::unique_lock<std::mutex> lock(mu.mu_, std::adopt_lock);
    cv_.wait(lock, pred);
    lock.release();  // still held: the caller's MutexLock releases it
  }
  // False if the predicate still fails after timeout.
  template <typename Predicate>
  bool WaitFor(Mutex& mu, std::chrono::milliseconds timeout, Predicate pred) REQUIRES(mu) {
    std::unique_lock<std::mutex> lock(mu.mu_, std::adopt_lock);
    bool met = cv_.wait_for(lock, timeout, pred);
    lock.release();
    return met;
  }
  void NotifyAll() { cv_.notify_all(); }

 private:
  std::condition_variable cv_;
};

}  // namespace vtm
