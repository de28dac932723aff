#include "engine/population.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <unordered_set>

#include "mmfl/error.h"

namespace mmfl::engine {

namespace {
// Stream ids for make_rng.
constexpr uint64_t kStreamPopulation = 1;
constexpr uint64_t kStreamSampling = 2;

// Cuts `items` into consecutive pieces proportional to `shares` (cumulative rounding, so the
// pieces cover every item exactly once).
void cut_by_shares(const std::vector<int64_t>& items, const std::vector<double>& shares,
                   std::vector<std::vector<int64_t>>& parts) {
  const double total = std::accumulate(shares.begin(), shares.end(), 0.0);
  double acc = 0;
  size_t begin = 0;
  for (size_t c = 0; c < shares.size(); ++c) {
    acc += shares[c];
    size_t end =
        c + 1 == shares.size()
            ? items.size()
            : std::min(items.size(), size_t(std::llround(acc / total * double(items.size()))));
    end = std::max(end, begin);
    parts[c].insert(parts[c].end(), items.begin() + long(begin), items.begin() + long(end));
    begin = end;
  }
}
}  // namespace

std::string to_string(ClientKind k) {
  switch (k) {
    case ClientKind::kImage:
      return "image";
    case ClientKind::kText:
      return "text";
    case ClientKind::kPaired:
      return "paired";
    default:
      MMFL_FAIL("unknown ClientKind ", static_cast<int>(k));
  }
}

std::mt19937_64 make_rng(uint64_t seed, uint64_t stream, uint64_t a, uint64_t b) {
  std::seed_seq seq{uint32_t(seed),    uint32_t(seed >> 32), uint32_t(stream), uint32_t(a),
                    uint32_t(a >> 32), uint32_t(b),          uint32_t(b >> 32)};
  return std::mt19937_64(seq);
}

std::vector<double> client_shares(int64_t clients, double quantity_skew, std::mt19937_64& rng) {
  std::vector<double> s(size_t(clients), 1.0);
  if (quantity_skew > 0) {
    std::normal_distribution<double> normal(0.0, 1.0);
    for (auto& x : s)
      x = std::exp(quantity_skew * normal(rng));
  }
  const double total = std::accumulate(s.begin(), s.end(), 0.0);
  for (auto& x : s)
    x /= total;
  return s;
}

std::vector<std::vector<int64_t>> partition_iid(int64_t num_samples,
                                                const std::vector<double>& shares,
                                                std::mt19937_64& rng) {
  std::vector<int64_t> perm(static_cast<size_t>(num_samples));
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), rng);
  std::vector<std::vector<int64_t>> parts(shares.size());
  cut_by_shares(perm, shares, parts);
  return parts;
}

std::vector<std::vector<int64_t>> partition_dirichlet(const std::vector<int64_t>& labels,
                                                      int num_classes, double alpha,
                                                      const std::vector<double>& shares,
                                                      std::mt19937_64& rng) {
  MMFL_CHECK(alpha > 0, "Dirichlet alpha must be > 0, got ", alpha);
  std::vector<std::vector<int64_t>> by_class(static_cast<size_t>(num_classes));
  for (size_t i = 0; i < labels.size(); ++i) {
    MMFL_CHECK(labels[i] >= 0 && labels[i] < num_classes, "label ", labels[i], " of sample ", i,
               " outside 0..", num_classes - 1);
    by_class[size_t(labels[i])].push_back(int64_t(i));
  }
  std::vector<std::vector<int64_t>> parts(shares.size());
  std::gamma_distribution<double> gamma(alpha, 1.0);
  for (auto& items : by_class) {
    std::shuffle(items.begin(), items.end(), rng);
    std::vector<double> p(shares.size());
    for (size_t c = 0; c < p.size(); ++c)
      p[c] = std::max(gamma(rng), 1e-300) * shares[c];
    cut_by_shares(items, p, parts);
  }
  for (auto& p : parts)
    std::sort(p.begin(), p.end());
  return parts;
}

void enforce_min_samples(std::vector<std::vector<int64_t>>& parts, int64_t min_samples,
                         std::mt19937_64& rng) {
  int64_t total = 0;
  for (auto& p : parts)
    total += int64_t(p.size());
  MMFL_CHECK(total >= min_samples * int64_t(parts.size()), "the data pool holds ", total,
             " samples, fewer than population.min_samples (", min_samples, ") x ", parts.size(),
             " clients; lower population.min_samples or population.clients");
  for (auto& small : parts) {
    while (int64_t(small.size()) < min_samples) {
      auto largest = std::max_element(parts.begin(), parts.end(), [](const auto& a, const auto& b) {
        return a.size() < b.size();
      });
      std::uniform_int_distribution<size_t> pick(0, largest->size() - 1);
      const size_t at = pick(rng);
      small.push_back((*largest)[at]);
      largest->erase(largest->begin() + long(at));
    }
  }
}

std::vector<ClientKind> assign_kinds(int64_t clients, const ModalityMix& mix,
                                     std::mt19937_64& rng) {
  const double want[3] = {mix.image * double(clients), mix.text * double(clients),
                          mix.paired * double(clients)};
  int64_t count[3];
  int64_t used = 0;
  for (int i = 0; i < 3; ++i)
    used += (count[i] = int64_t(std::floor(want[i])));
  // Largest remainders get the clients left over by flooring.
  int order[3] = {0, 1, 2};
  std::stable_sort(order, order + 3, [&](int a, int b) {
    return want[a] - double(count[a]) > want[b] - double(count[b]);
  });
  for (int i = 0; used < clients; i = (i + 1) % 3, ++used)
    ++count[order[i]];
  std::vector<ClientKind> kinds;
  const ClientKind k[3] = {ClientKind::kImage, ClientKind::kText, ClientKind::kPaired};
  for (int i = 0; i < 3; ++i)
    kinds.insert(kinds.end(), size_t(count[i]), k[i]);
  std::shuffle(kinds.begin(), kinds.end(), rng);
  return kinds;
}

std::vector<std::vector<int64_t>> partition_resample(int64_t num_samples,
                                                     const std::vector<double>& shares,
                                                     int64_t min_samples, std::mt19937_64& rng) {
  MMFL_CHECK(num_samples >= min_samples,
             "population.partition 'resample' needs a pool of at least "
             "population.min_samples = ",
             min_samples, " samples, the pool has ", num_samples);
  std::vector<std::vector<int64_t>> parts(shares.size());
  std::unordered_set<int64_t> seen;
  for (size_t c = 0; c < shares.size(); ++c) {
    const int64_t n = std::min(
        num_samples, std::max(min_samples, int64_t(std::llround(shares[c] * double(num_samples)))));
    // Floyd's algorithm: n distinct rows without touching the whole pool.
    seen.clear();
    auto& part = parts[c];
    part.reserve(size_t(n));
    for (int64_t j = num_samples - n; j < num_samples; ++j) {
      const int64_t t = std::uniform_int_distribution<int64_t>(0, j)(rng);
      part.push_back(seen.insert(t).second ? t : j);
      if (part.back() == j) seen.insert(j);
    }
    part.shrink_to_fit();
  }
  return parts;
}

std::vector<ClientSpec> make_population(const PopulationConfig& cfg,
                                        const std::vector<int64_t>& pool_labels, int num_classes,
                                        uint64_t seed) {
  auto rng = make_rng(seed, kStreamPopulation);
  const auto shares = client_shares(cfg.clients, cfg.quantity_skew, rng);
  std::vector<std::vector<int64_t>> parts;
  switch (cfg.partition) {
    case Partition::kIid:
      parts = partition_iid(int64_t(pool_labels.size()), shares, rng);
      break;
    case Partition::kDirichlet:
      parts = partition_dirichlet(pool_labels, num_classes, cfg.alpha, shares, rng);
      break;
    case Partition::kResample:
      parts = partition_resample(int64_t(pool_labels.size()), shares, cfg.min_samples, rng);
      break;
    default:
      MMFL_FAIL("unknown Partition ", static_cast<int>(cfg.partition));
  }
  if (cfg.partition != Partition::kResample) enforce_min_samples(parts, cfg.min_samples, rng);
  const auto kinds = assign_kinds(cfg.clients, cfg.mix, rng);
  std::vector<ClientSpec> pop(size_t(cfg.clients));
  for (size_t c = 0; c < pop.size(); ++c) {
    pop[c].id = int64_t(c);
    pop[c].kind = kinds[c];
    pop[c].indices = std::move(parts[c]);
  }
  return pop;
}

std::vector<int64_t> sample_clients(int64_t clients, int64_t k, uint64_t seed, int64_t round) {
  MMFL_CHECK(k >= 1 && k <= clients, "cannot sample ", k, " of ", clients, " clients");
  auto rng = make_rng(seed, kStreamSampling, uint64_t(round));
  // Floyd's algorithm: k distinct ids without touching all `clients` (100k+ populations).
  std::unordered_set<int64_t> seen;
  std::vector<int64_t> chosen;
  chosen.reserve(size_t(k));
  for (int64_t j = clients - k; j < clients; ++j) {
    std::uniform_int_distribution<int64_t> d(0, j);
    const int64_t t = d(rng);
    chosen.push_back(seen.insert(t).second ? t : j);
    if (chosen.back() == j) seen.insert(j);
  }
  std::sort(chosen.begin(), chosen.end());
  return chosen;
}

}  // namespace mmfl::engine
