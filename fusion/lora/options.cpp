#include "fusion/lora/options.h"

#include <cctype>
#include <cmath>

#include "mmfl/error.h"

namespace mmfl::fusion {

namespace {

// '*' matches any run of characters, dots included.
bool glob(const char* p, const char* s) {
  if (*p == '\0') return *s == '\0';
  if (*p == '*') {
    for (const char* t = s;; ++t) {
      if (glob(p + 1, t)) return true;
      if (*t == '\0') return false;
    }
  }
  return *s != '\0' && *p == *s && glob(p + 1, s + 1);
}

}  // namespace

void validate_lora_options(const LoraOptions& o, const std::string& k) {
  MMFL_CHECK(o.rank >= 1 && o.rank <= 4096, "config key '", k, "rank' = ", o.rank,
             " is out of range [1, 4096]");
  MMFL_CHECK(std::isfinite(o.alpha) && o.alpha > 0, "config key '", k, "alpha' = ", o.alpha,
             " must be a positive number");
  MMFL_CHECK(o.dropout >= 0 && o.dropout < 1, "config key '", k, "dropout' = ", o.dropout,
             " is out of range [0, 1)");
  MMFL_CHECK(!o.targets.empty(), "config key '", k,
             "targets' is empty; give layer names (query, value), globs (*.query) or all-linear");
  for (const auto& t : o.targets) {
    MMFL_CHECK(!t.empty(), "config key '", k, "targets' has an empty entry");
    MMFL_CHECK(t != "all-linear" || o.targets.size() == 1, "config key '", k,
               "targets': all-linear takes every linear layer and goes alone");
    for (char c : t)
      MMFL_CHECK(std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '.' || c == '*' ||
                     c == '-',
                 "config key '", k, "targets' entry '", t,
                 "' may hold only letters, digits, '_', '-', '.' and '*'");
  }
}

bool lora_target_matches(const std::string& name, const std::string& pattern) {
  if (pattern == "all-linear") return true;
  if (pattern.find('*') != std::string::npos) return glob(pattern.c_str(), name.c_str());
  return name == pattern ||
         (name.size() > pattern.size() &&
          name.compare(name.size() - pattern.size(), pattern.size(), pattern) == 0 &&
          name[name.size() - pattern.size() - 1] == '.');
}

}  // namespace mmfl::fusion
