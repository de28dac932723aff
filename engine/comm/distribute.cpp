#include "engine/comm/distribute.h"

#include <algorithm>
#include <cstring>
#include <numeric>

#include "mmfl/error.h"

namespace mmfl::engine::comm {

std::vector<int> place(const std::vector<const ClientSpec*>& cohort,
                       const std::vector<double>& cost, int ranks, Placement mode) {
  MMFL_CHECK(ranks >= 1, "place: ", ranks, " ranks");
  std::vector<int> out(cohort.size(), 0);
  if (mode == Placement::kOwner) {
    for (size_t i = 0; i < cohort.size(); ++i)
      out[i] = owner_rank(cohort[i]->id, ranks);
    return out;
  }
  MMFL_CHECK(cost.size() == cohort.size(), "place: ", cost.size(), " costs for ", cohort.size(),
             " clients");
  // Longest processing time first: the costliest client onto the least loaded rank (ties: the
  // lower client id first, the lower rank), the same on every rank.
  std::vector<size_t> order(cohort.size());
  std::iota(order.begin(), order.end(), size_t(0));
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return cost[a] != cost[b] ? cost[a] > cost[b] : cohort[a]->id < cohort[b]->id;
  });
  std::vector<double> load(size_t(ranks), 0.0);
  for (size_t i : order) {
    const size_t r = size_t(std::min_element(load.begin(), load.end()) - load.begin());
    out[i] = int(r);
    load[r] += cost[i];
  }
  return out;
}

std::vector<const ClientSpec*> local_share(const std::vector<const ClientSpec*>& cohort,
                                           const Communicator& c, Placement mode,
                                           const std::function<double(const ClientSpec&)>& cost) {
  if (c.size() == 1) return cohort;
  std::vector<double> costs;
  if (mode == Placement::kCost)
    for (const auto* s : cohort)
      costs.push_back(cost ? cost(*s) : double(s->indices.size()));
  const auto where = place(cohort, costs, c.size(), mode);
  std::vector<const ClientSpec*> mine;
  for (size_t i = 0; i < cohort.size(); ++i)
    if (where[i] == c.rank()) mine.push_back(cohort[i]);
  return mine;
}

// ---- packing ---------------------------------------------------------------------------------

namespace {

constexpr char kMagic[8] = {'M', 'M', 'F', 'L', 'P', 'A', 'C', 'K'};

template <typename T>
void put(std::string& out, T v) {
  out.append(reinterpret_cast<const char*>(&v), sizeof(T));
}

class Reader {
 public:
  explicit Reader(const std::string& s) : s_(s) {}
  template <typename T>
  T get(const char* what) {
    need(sizeof(T), what);
    T v;
    std::memcpy(&v, s_.data() + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }
  const char* take(uint64_t n, const char* what) {
    need(n, what);
    const char* p = s_.data() + pos_;
    pos_ += size_t(n);
    return p;
  }
  bool done() const { return pos_ == s_.size(); }

 private:
  void need(uint64_t n, const char* what) const {
    MMFL_CHECK(n <= s_.size() - pos_, "comm: a packed message from another rank is cut in its ",
               what, " at byte ", pos_, " of ", s_.size());
  }
  const std::string& s_;
  size_t pos_ = 0;
};

bool known_dtype(int8_t t) {
  switch (static_cast<torch::ScalarType>(t)) {
    case torch::kFloat32:
    case torch::kFloat64:
    case torch::kInt64:
    case torch::kInt32:
    case torch::kUInt8:
    case torch::kBool:
      return true;
    default:
      return false;
  }
}

torch::Tensor bytes_tensor(const std::string& s) {
  auto t = torch::empty({int64_t(s.size())}, torch::kUInt8);
  if (!s.empty()) std::memcpy(t.data_ptr(), s.data(), s.size());
  return t;
}

std::string tensor_string(const torch::Tensor& t) {
  const auto c = t.cpu().contiguous();
  return std::string(static_cast<const char*>(c.data_ptr()), size_t(c.numel()));
}

// Every rank's string (one all-gather of bytes).
std::vector<std::string> all_gather_strings(Communicator& c, const std::string& mine) {
  std::vector<std::string> out;
  for (const auto& t : c.all_gather(bytes_tensor(mine)))
    out.push_back(tensor_string(t));
  return out;
}

}  // namespace

std::string pack_tensors(const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                         const std::string& meta) {
  std::string out(kMagic, sizeof(kMagic));
  put<uint64_t>(out, meta.size());
  out += meta;
  put<uint64_t>(out, tensors.size());
  for (const auto& [name, t0] : tensors) {
    MMFL_CHECK(t0.defined(), "pack_tensors: tensor '", name, "' is undefined");
    MMFL_CHECK(known_dtype(int8_t(t0.scalar_type())), "pack_tensors: tensor '", name,
               "' has dtype ", t0.scalar_type());
    const auto t = t0.cpu().contiguous();
    put<uint32_t>(out, uint32_t(name.size()));
    out += name;
    put<int8_t>(out, int8_t(t.scalar_type()));
    put<uint8_t>(out, uint8_t(t.dim()));
    for (int64_t d : t.sizes())
      put<int64_t>(out, d);
    const uint64_t nbytes = uint64_t(t.numel()) * uint64_t(t.element_size());
    put<uint64_t>(out, nbytes);
    out.append(static_cast<const char*>(t.data_ptr()), size_t(nbytes));
  }
  return out;
}

std::vector<std::pair<std::string, torch::Tensor>> unpack_tensors(const std::string& bytes,
                                                                  std::string* meta) {
  Reader r(bytes);
  MMFL_CHECK(std::memcmp(r.take(sizeof(kMagic), "magic"), kMagic, sizeof(kMagic)) == 0,
             "comm: a message from another rank does not start with MMFLPACK");
  const auto meta_len = r.get<uint64_t>("header");
  const char* m = r.take(meta_len, "header");
  if (meta) meta->assign(m, size_t(meta_len));
  const auto count = r.get<uint64_t>("tensor count");
  std::vector<std::pair<std::string, torch::Tensor>> out;
  for (uint64_t i = 0; i < count; ++i) {
    const auto name_len = r.get<uint32_t>("tensor name");
    std::string name(r.take(name_len, "tensor name"), name_len);
    const auto dtype = r.get<int8_t>("dtype");
    MMFL_CHECK(known_dtype(dtype), "comm: tensor '", name, "' from another rank has dtype code ",
               int(dtype));
    const auto ndim = r.get<uint8_t>("shape");
    std::vector<int64_t> shape;
    uint64_t numel = 1;
    for (int d = 0; d < ndim; ++d) {
      const auto n = r.get<int64_t>("shape");
      MMFL_CHECK(n >= 0 && (n == 0 || numel <= (uint64_t(1) << 62) / uint64_t(n)), "comm: tensor '",
                 name, "' from another rank has dimension ", n);
      shape.push_back(n);
      numel *= uint64_t(n);
    }
    auto t = torch::empty(shape, static_cast<torch::ScalarType>(dtype));
    const auto nbytes = r.get<uint64_t>("data length");
    MMFL_CHECK(nbytes == numel * uint64_t(t.element_size()), "comm: tensor '", name, "' holds ",
               nbytes, " bytes for ", numel, " elements");
    if (nbytes > 0) std::memcpy(t.data_ptr(), r.take(nbytes, "data"), size_t(nbytes));
    out.emplace_back(std::move(name), std::move(t));
  }
  MMFL_CHECK(r.done(), "comm: a message from another rank has trailing bytes");
  return out;
}

// ---- updates ---------------------------------------------------------------------------------

namespace {

// Tensor names inside a packed set of updates: "<k>/<role>/<group>", k the update's index.
std::string tname(size_t k, const char* role, const std::string& group) {
  return std::to_string(k) + "/" + role + "/" + group;
}

std::string pack_updates(const std::vector<Update>& updates) {
  std::vector<std::pair<std::string, torch::Tensor>> ts;
  std::vector<double> meta;  // per update: id, kind, samples, loss, diverged, bytes_down
  for (size_t k = 0; k < updates.size(); ++k) {
    const auto& u = updates[k];
    for (double v : {double(u.client_id), double(int(u.kind)), double(u.num_samples), u.loss,
                     u.diverged ? 1.0 : 0.0, double(u.bytes_down)})
      meta.push_back(v);
    for (const auto& [g, t] : u.up.dense)
      ts.emplace_back(tname(k, "dense", g), t);
    for (const auto& [g, p] : u.up.sparse) {
      ts.emplace_back(tname(k, "idx", g), p.indices);
      ts.emplace_back(tname(k, "val", g), p.values);
      ts.emplace_back(tname(k, "numel", g), torch::tensor({p.dense_numel}, torch::kInt64));
    }
    for (const auto& [g, t] : u.up.reps)
      ts.emplace_back(tname(k, "reps", g), t);
  }
  ts.emplace_back("meta", torch::tensor(meta, torch::kFloat64));
  return pack_tensors(ts);
}

std::vector<Update> unpack_updates(const std::string& bytes, const torch::Device& device) {
  auto ts = unpack_tensors(bytes);
  MMFL_CHECK(!ts.empty() && ts.back().first == "meta", "comm: packed updates without 'meta'");
  const auto meta = ts.back().second;
  ts.pop_back();
  MMFL_CHECK(meta.numel() % 6 == 0, "comm: packed updates' meta holds ", meta.numel(), " values");
  const auto* m = meta.data_ptr<double>();
  std::vector<Update> out(size_t(meta.numel() / 6));
  for (size_t k = 0; k < out.size(); ++k) {
    auto& u = out[k];
    u.client_id = int64_t(m[6 * k]);
    const int kind = int(m[6 * k + 1]);
    MMFL_CHECK(kind >= 0 && kind <= 2, "comm: update of client ", u.client_id, " has kind ", kind);
    u.kind = static_cast<ClientKind>(kind);
    u.num_samples = int64_t(m[6 * k + 2]);
    u.loss = m[6 * k + 3];
    u.diverged = m[6 * k + 4] != 0;
    u.bytes_down = int64_t(m[6 * k + 5]);
  }
  for (auto& [name, t] : ts) {
    const auto s1 = name.find('/'), s2 = name.find('/', s1 + 1);
    MMFL_CHECK(s1 != std::string::npos && s2 != std::string::npos,
               "comm: packed update tensor named '", name, "'");
    const size_t k = size_t(std::stoull(name.substr(0, s1)));
    MMFL_CHECK(k < out.size(), "comm: packed update tensor '", name, "' of update ", k, " of ",
               out.size());
    const std::string role = name.substr(s1 + 1, s2 - s1 - 1), group = name.substr(s2 + 1);
    auto& up = out[k].up;
    auto dev = t.to(device);
    if (role == "dense")
      up.dense[group] = dev;
    else if (role == "reps")
      up.reps[group] = dev;
    else if (role == "idx")
      up.sparse[group].indices = dev;
    else if (role == "val")
      up.sparse[group].values = dev;
    else if (role == "numel")
      up.sparse[group].dense_numel = t.item<int64_t>();
    else
      MMFL_FAIL("comm: packed update tensor '", name, "' has role '", role, "'");
  }
  return out;
}

}  // namespace

std::vector<Update> gather_updates(Communicator& c, std::vector<Update> local,
                                   const torch::Device& device) {
  if (c.size() == 1) return local;
  std::vector<Update> all;
  for (const auto& s : all_gather_strings(c, pack_updates(local)))
    for (auto& u : unpack_updates(s, device))
      all.push_back(std::move(u));
  std::stable_sort(all.begin(), all.end(),
                   [](const Update& a, const Update& b) { return a.client_id < b.client_id; });
  return all;
}

std::vector<UpdateRecord> gather_records(Communicator& c, const std::vector<Update>& local) {
  std::vector<double> v;
  for (const auto& u : local)
    for (double x : {double(u.client_id), double(u.num_samples), u.loss, u.diverged ? 1.0 : 0.0,
                     double(u.bytes_up()), double(u.bytes_down)})
      v.push_back(x);
  const auto mine = torch::tensor(v, torch::kFloat64).reshape({-1, 6});
  std::vector<UpdateRecord> out;
  for (const auto& part : c.all_gather(mine)) {
    const auto p = part.cpu().contiguous();
    const auto* d = p.data_ptr<double>();
    for (int64_t i = 0; i < p.size(0); ++i) {
      UpdateRecord r;
      r.client_id = int64_t(d[6 * i]);
      r.num_samples = int64_t(d[6 * i + 1]);
      r.loss = d[6 * i + 2];
      r.diverged = d[6 * i + 3] != 0;
      r.bytes_up = int64_t(d[6 * i + 4]);
      r.bytes_down = int64_t(d[6 * i + 5]);
      out.push_back(r);
    }
  }
  std::stable_sort(out.begin(), out.end(), [](const UpdateRecord& a, const UpdateRecord& b) {
    return a.client_id < b.client_id;
  });
  return out;
}

std::vector<int64_t> gather_ids(Communicator& c, const std::vector<int64_t>& local) {
  if (c.size() == 1) {
    auto s = local;
    std::sort(s.begin(), s.end());
    return s;
  }
  std::vector<int64_t> out;
  for (const auto& part : c.all_gather(torch::tensor(local, torch::kInt64))) {
    const auto p = part.cpu().contiguous();
    out.insert(out.end(), p.data_ptr<int64_t>(), p.data_ptr<int64_t>() + p.numel());
  }
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace mmfl::engine::comm
