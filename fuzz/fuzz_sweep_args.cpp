// `mmfl sweep`'s argument parsers (engine/sweep_args.cpp) on any bytes: the first line as a
// --grid argument, the rest as a --seeds argument. Each returns a well-formed result (a trimmed,
// non-empty key; non-empty, unique values; unique seeds, at most 10000) or refuses with
// mmfl::Error. Never a crash or a hang.
#include <set>
#include <string>

#include "engine/sweep.h"
#include "mmfl/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string in(reinterpret_cast<const char*>(data), size);
  const auto nl = in.find('\n');
  const std::string grid = in.substr(0, nl),
                    seeds = nl == std::string::npos ? in : in.substr(nl + 1);
  try {
    const auto a = mmfl::engine::parse_grid_axis(grid);
    if (a.key.empty() || a.key != mmfl::engine::trim_blanks(a.key) || a.values.empty())
      __builtin_trap();
    std::set<std::string> values;
    for (const auto& v : a.values)
      if (v.empty() || !values.insert(v).second) __builtin_trap();
  } catch (const mmfl::Error&) {
  }
  try {
    const auto s = mmfl::engine::parse_seed_list(seeds);
    if (s.empty() || s.size() > 10000) __builtin_trap();
    if (std::set<uint64_t>(s.begin(), s.end()).size() != s.size()) __builtin_trap();
  } catch (const mmfl::Error&) {
  }
  return 0;
}
