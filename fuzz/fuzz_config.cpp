// Config parser: the input up to the first NUL byte is the YAML text; after it, newline-separated
// --set assignments. Every input is a Config or an mmfl::Error, never a crash or another
// exception type (yaml-cpp's and std's must be turned into mmfl::Error with the key path).
#include <string>
#include <vector>

#include "engine/config.h"
#include "mmfl/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string in(reinterpret_cast<const char*>(data), size);
  const size_t nul = in.find('\0');
  const std::string yaml = in.substr(0, nul);
  std::vector<std::string> sets;
  if (nul != std::string::npos) {
    size_t pos = nul + 1;
    while (pos <= in.size() && sets.size() < 8) {
      size_t end = in.find('\n', pos);
      if (end == std::string::npos) end = in.size();
      sets.push_back(in.substr(pos, end - pos));
      pos = end + 1;
    }
  }
  try {
    const auto cfg = mmfl::engine::parse_config_text(yaml, sets);
    // The resolved config must parse back to itself (resume depends on it).
    const auto again = mmfl::engine::parse_config_text(cfg.resolved_yaml);
    if (again.resolved_yaml != cfg.resolved_yaml) __builtin_trap();
  } catch (const mmfl::Error&) {
  }
  return 0;
}
