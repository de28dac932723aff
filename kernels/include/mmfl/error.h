// mmfl::Error and the MMFL_CHECK macro family, shared by every layer (kernels/ is the bottom
// layer, so the error type lives here). Library code throws; only the CLI turns errors into exit
// codes.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace mmfl {

// Every error mmfl raises. `what()` is the full message with the origin (file:line) appended;
// `reason()` is the message alone, which is what the CLI prints to users.
class Error : public std::runtime_error {
 public:
  Error(std::string reason, const char* file, int line)
      : std::runtime_error(reason + " (" + file + ":" + std::to_string(line) + ")"),
        reason_(std::move(reason)) {}
  const std::string& reason() const { return reason_; }

 private:
  std::string reason_;
};

namespace detail {
template <typename... Args>
std::string concat(Args&&... args) {
  std::ostringstream os;
  (os << ... << std::forward<Args>(args));
  return os.str();
}
}  // namespace detail

}  // namespace mmfl

// Throws mmfl::Error with the streamed message when `cond` is false.
#define MMFL_CHECK(cond, ...)                                                       \
  do {                                                                              \
    if (!(cond)) {                                                                  \
      throw ::mmfl::Error(::mmfl::detail::concat(__VA_ARGS__), __FILE__, __LINE__); \
    }                                                                               \
  } while (0)

// Unconditional throw, for `default:` branches and unreachable states.
#define MMFL_FAIL(...) throw ::mmfl::Error(::mmfl::detail::concat(__VA_ARGS__), __FILE__, __LINE__)
