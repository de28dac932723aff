// The argument parsers of `mmfl sweep` (--grid, --seeds): LibTorch-free, so that the fuzz
// target fuzz_sweep_args links this file alone.
#include <algorithm>
#include <set>
#include <sstream>

#include "engine/sweep.h"
#include "mmfl/error.h"

namespace mmfl::engine {

namespace {

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  for (std::string p; std::getline(ss, p, sep);)
    out.push_back(p);
  if (!s.empty() && s.back() == sep) out.push_back("");
  return out;
}

}  // namespace

std::string trim_blanks(const std::string& s) {
  const auto b = s.find_first_not_of(" \t");
  if (b == std::string::npos) return "";
  return s.substr(b, s.find_last_not_of(" \t") - b + 1);
}

GridAxis parse_grid_axis(const std::string& arg) {
  const auto eq = arg.find('=');
  MMFL_CHECK(eq != std::string::npos && eq > 0, "--grid '", arg,
             "': expected KEY=V1,V2,..., for example --grid creamfl.kd_weight=0.3,3");
  GridAxis a;
  a.key = trim_blanks(arg.substr(0, eq));
  MMFL_CHECK(!a.key.empty(), "--grid '", arg, "': no key before '='");
  for (const auto& v : split(arg.substr(eq + 1), ',')) {
    const auto t = trim_blanks(v);
    MMFL_CHECK(!t.empty(), "--grid '", arg, "': empty value in the list");
    MMFL_CHECK(std::find(a.values.begin(), a.values.end(), t) == a.values.end(), "--grid '", arg,
               "': value '", t, "' is listed twice");
    a.values.push_back(t);
  }
  MMFL_CHECK(!a.values.empty(), "--grid '", arg, "': no values after '='");
  return a;
}

std::vector<uint64_t> parse_seed_list(const std::string& arg) {
  std::vector<uint64_t> seeds;
  std::set<uint64_t> seen;
  auto number = [&](const std::string& s) -> uint64_t {
    const auto t = trim_blanks(s);
    MMFL_CHECK(!t.empty() && t.find_first_not_of("0123456789") == std::string::npos, "--seeds '",
               arg, "': '", t, "' is not a non-negative integer (use e.g. 1-5 or 1,3,7)");
    MMFL_CHECK(t.size() < 19, "--seeds '", arg, "': '", t, "' is too large");
    return std::stoull(t);
  };
  MMFL_CHECK(!trim_blanks(arg).empty(), "--seeds '", arg, "': no seeds (use e.g. 1-5 or 1,3,7)");
  for (const auto& part : split(arg, ',')) {
    const auto dash = part.find('-');
    uint64_t lo, hi;
    if (dash == std::string::npos) {
      lo = hi = number(part);
    } else {
      lo = number(part.substr(0, dash));
      hi = number(part.substr(dash + 1));
      MMFL_CHECK(lo <= hi, "--seeds '", arg, "': range '", trim_blanks(part), "' runs backwards");
      MMFL_CHECK(hi - lo < 10000, "--seeds '", arg, "': range '", trim_blanks(part),
                 "' has more than 10000 seeds");
    }
    for (uint64_t s = lo; s <= hi; ++s)
      if (seen.insert(s).second) seeds.push_back(s);
    MMFL_CHECK(seeds.size() <= 10000, "--seeds '", arg, "': more than 10000 seeds in all");
  }
  return seeds;
}

}  // namespace mmfl::engine
