#include "engine/state_store.h"

#include <filesystem>

#include "mmfl/error.h"

namespace mmfl::engine {

namespace fs = std::filesystem;

namespace {

constexpr const char* kPrefix = "state/";

int64_t bytes_of(const ClientState& s) {
  int64_t n = 0;
  for (const auto& [name, t] : s)
    n += t.numel() * int64_t(t.element_size());
  return n;
}

// The spill file's header names its client, so a file renamed or copied over another client's
// is refused rather than loaded as that client's state.
std::string spill_tag(int64_t id) {
  return "client-state/" + std::to_string(id);
}

}  // namespace

ClientStateStore::ClientStateStore(int64_t budget_bytes, std::string spill_dir, int rank, int ranks)
    : budget_(budget_bytes),
      dir_(ranks > 1 ? (fs::path(spill_dir) / ("rank" + std::to_string(rank))).string()
                     : std::move(spill_dir)),
      rank_(rank),
      ranks_(ranks) {
  MMFL_CHECK(ranks >= 1 && rank >= 0 && rank < ranks, "ClientStateStore: rank ", rank, " of ",
             ranks);
  // A file where the spill folder goes would fail the first spill, long after the cause.
  std::error_code ec;
  for (fs::path p = dir_; !p.empty(); p = p.parent_path()) {
    MMFL_CHECK(!fs::exists(p, ec) || fs::is_directory(p, ec), "client state folder '", p.string(),
               "' is a file, not a folder; move it away (clients' state spills there)");
    if (ranks_ == 1 || p != fs::path(dir_)) break;  // dir_ and, with ranks, its parent
  }
}

std::string ClientStateStore::spill_path(int64_t id) const {
  return (fs::path(dir_) / ("client_" + std::to_string(id) + ".ckpt")).string();
}

ClientState ClientStateStore::read_spill(int64_t id, uint64_t seq) const {
  const auto path = spill_path(id);
  const Checkpoint ck = load_checkpoint(path, "client state file");  // refuses a damaged file
  // The tag is "client-state/<id>#<spill>": the client, and which spill wrote the file, so that
  // an older copy put back in its place is refused too.
  const std::string tag = ck.config_hash.substr(0, ck.config_hash.find('#'));
  MMFL_CHECK(tag == spill_tag(id), "client state file '", path, "' holds '", tag,
             "', not the state of client ", id);
  const std::string want = spill_tag(id) + "#" + std::to_string(seq);
  MMFL_CHECK(ck.config_hash == want, "client state file '", path, "' is another copy of client ",
             id, "'s state than the one this run wrote (it says '", ck.config_hash, "', expected '",
             want, "'); the file was replaced while the run went on");
  return ClientState(ck.tensors.begin(), ck.tensors.end());
}

bool ClientStateStore::contains(int64_t id) const {
  std::lock_guard<std::mutex> lock(mu_);
  return entries_.count(id) > 0;
}

void ClientStateStore::touch(Entry& e, int64_t id) {
  lru_.erase(e.lru);
  lru_.push_front(id);
  e.lru = lru_.begin();
}

std::optional<ClientState> ClientStateStore::find(int64_t id) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = entries_.find(id);
  if (it == entries_.end()) return std::nullopt;
  Entry& e = it->second;
  if (!e.spilled) {
    touch(e, id);
    return e.state;
  }
  ClientState s = read_spill(id, e.spill_seq);
  // Resident again: the file is kept until the entry is written again or spilled anew.
  e.state = s;
  e.spilled = false;
  --spilled_;
  resident_ += e.bytes;
  lru_.push_front(id);
  e.lru = lru_.begin();
  enforce_budget();
  return s;
}

void ClientStateStore::put(int64_t id, const ClientState& state) {
  ClientState copy;
  for (const auto& [name, t] : state) {
    MMFL_CHECK(!name.empty(), "client ", id, ": a state tensor needs a name");
    copy[name] = t.detach().to(torch::kCPU, torch::kFloat32).reshape({-1}).clone();
  }
  std::lock_guard<std::mutex> lock(mu_);
  auto it = entries_.find(id);
  if (it != entries_.end()) {
    Entry& old = it->second;
    if (old.spilled) {
      --spilled_;
    } else {
      resident_ -= old.bytes;
      lru_.erase(old.lru);
    }
    entries_.erase(it);
  }
  Entry e;
  e.bytes = bytes_of(copy);
  e.state = std::move(copy);
  lru_.push_front(id);
  e.lru = lru_.begin();
  resident_ += e.bytes;
  entries_.emplace(id, std::move(e));
  enforce_budget();
}

void ClientStateStore::enforce_budget() {
  if (budget_ <= 0) return;
  while (resident_ > budget_ && !lru_.empty()) {
    const int64_t victim = lru_.back();
    Entry& e = entries_.at(victim);
    if (!fs::exists(dir_)) fs::create_directories(dir_);
    Checkpoint ck;
    e.spill_seq = ++spill_seq_;
    ck.config_hash = spill_tag(victim) + "#" + std::to_string(e.spill_seq);
    ck.tensors.insert(e.state.begin(), e.state.end());
    save_checkpoint(spill_path(victim), ck);  // atomic: temp file, fsync, rename
    lru_.pop_back();
    resident_ -= e.bytes;
    e.state.clear();
    e.spilled = true;
    ++spilled_;
  }
}

int64_t ClientStateStore::size() const {
  std::lock_guard<std::mutex> lock(mu_);
  return int64_t(entries_.size());
}

int64_t ClientStateStore::resident_bytes() const {
  std::lock_guard<std::mutex> lock(mu_);
  return resident_;
}

int64_t ClientStateStore::spilled() const {
  std::lock_guard<std::mutex> lock(mu_);
  return spilled_;
}

std::vector<int64_t> ClientStateStore::ids() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<int64_t> out;
  for (const auto& [id, e] : entries_)
    out.push_back(id);
  return out;
}

void ClientStateStore::save(Checkpoint& ck) const {
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& [id, e] : entries_) {
    const ClientState s = e.spilled ? read_spill(id, e.spill_seq) : e.state;
    for (const auto& [name, t] : s)
      ck.tensors[kPrefix + std::to_string(id) + "/" + name] = t;
  }
}

void ClientStateStore::load(const Checkpoint& ck) {
  std::map<int64_t, ClientState> parsed;
  for (const auto& [name, t] : ck.tensors) {
    if (name.rfind(kPrefix, 0) != 0) continue;
    const size_t start = std::char_traits<char>::length(kPrefix);
    const size_t slash = name.find('/', start);
    MMFL_CHECK(slash != std::string::npos && slash > start && slash + 1 < name.size(),
               "checkpoint tensor '", name, "' is not state/<client id>/<name>");
    int64_t id = 0;
    try {
      size_t used = 0;
      id = std::stoll(name.substr(start, slash - start), &used);
      MMFL_CHECK(used == slash - start && id >= 0, "bad id");
    } catch (const std::exception&) {
      MMFL_FAIL("checkpoint tensor '", name, "': '", name.substr(start, slash - start),
                "' is not a client id");
    }
    if (id % ranks_ != rank_) continue;  // another rank's client
    parsed[id][name.substr(slash + 1)] = t;
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    entries_.clear();
    lru_.clear();
    resident_ = spilled_ = 0;
    // Spill files of the run being resumed may be newer than the checkpoint: never read them.
    std::error_code ec;
    if (fs::is_directory(dir_, ec))
      for (const auto& f : fs::directory_iterator(dir_))
        if (f.path().filename().string().rfind("client_", 0) == 0) fs::remove(f.path(), ec);
    // Nor those of a session with another rank count (state/client_* for one rank,
    // state/rankR/ for several): rank 0 removes the layouts no rank of this session uses.
    const fs::path root = ranks_ > 1 ? fs::path(dir_).parent_path() : fs::path(dir_);
    if (rank_ == 0 && fs::is_directory(root, ec)) {
      for (const auto& f : fs::directory_iterator(root, ec)) {
        const std::string name = f.path().filename().string();
        const bool rank_dir = name.size() > 4 && name.size() <= 12 && name.rfind("rank", 0) == 0 &&
                              name.find_first_not_of("0123456789", 4) == std::string::npos;
        if (rank_dir && (ranks_ == 1 || std::stoll(name.substr(4)) >= ranks_))
          fs::remove_all(f.path(), ec);
        else if (ranks_ > 1 && name.rfind("client_", 0) == 0)
          fs::remove(f.path(), ec);
      }
    }
  }
  for (const auto& [id, s] : parsed)
    put(id, s);
}

}  // namespace mmfl::engine
