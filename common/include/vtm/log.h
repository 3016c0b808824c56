// Line-oriented logging to stderr (journald or a log file catches it).
// Never log key material: the logger has no overload for SecretBytes on purpose.
#pragma once

#include <sstream>
#include <string>

namespace vtm {

enum class LogLevel { kDebug = 0, kInfo = 1, kWarning = 2, kError = 3 };

void SetLogLevel(LogLevel level);
void SetLogComponent(const std::string& component);  // e.g. "vtmd", "vtm-instance[<uuid>]"
void LogLine(LogLevel level, const std::string& message);

namespace internal {
class LogMessage {
 public:
  explicit LogMessage(LogLevel level) : level_(level) {}
  ~LogMessage() { LogLine(level_, stream_.str()); }
  LogMessage(const LogMessage&) = delete;
  LogMessage& operator=(const LogMessage&) = delete;
  template <typename T>
  LogMessage& operator<<(const T& v) {
    stream_ << v;
    return *this;
  }

 private:
  LogLevel level_;
  std::ostringstream stream_;
};
}  // namespace internal

}  // namespace vtm

#define VTM_LOG(level) ::vtm::internal::LogMessage(::vtm::LogLevel::level)
#define LOG_DEBUG VTM_LOG(kDebug)
#define LOG_INFO VTM_LOG(kInfo)
#define LOG_WARNING VTM_LOG(kWarning)
#define LOG_ERROR VTM_LOG(kError)
