// The SIMT emulator's runtime: runs a launch block by block, each block's threads on real OS
// threads from a reused pool, with the block barrier and the warp rendezvous that the shim's
// intrinsics call; and the emulated CUDA runtime calls (memory, copies, streams, events, errors).
#include "mmfl/simt/shim.h"

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "mmfl/error.h"

// Opaque in CUDA's headers; the emulator's handles. Only emulated code defines them, so they do not
// clash with libcudart's when both backends link into one binary.
struct CUstream_st {
  unsigned flags = 0;
};
struct CUevent_st {
  std::chrono::steady_clock::time_point time;
  bool recorded = false;
};

namespace mmfl::simt {
namespace detail {

using ::mmfl::detail::concat;

namespace {

// ---- Errors -------------------------------------------------------------------------------------

// Per host thread, as CUDA's last error. The detail outlives cudaGetLastError's reset so that a
// launch check can append it after reading the code.
struct LastError {
  cudaError_t code = cudaSuccess;
  std::string detail;
};
thread_local LastError t_last_error;

cudaError_t set_error(cudaError_t code, std::string detail) {
  t_last_error.code = code;
  t_last_error.detail = std::move(detail);
  return code;
}

std::string dims(const dim3& d) {
  return concat("(", d.x, ",", d.y, ",", d.z, ")");
}
std::string dims(const uint3& d) {
  return concat("(", d.x, ",", d.y, ",", d.z, ")");
}

std::string hex(unsigned v) {
  std::ostringstream os;
  os << "0x" << std::hex << v;
  return os.str();
}

// Thrown inside kernel threads to unwind them once their block has failed; deliberately not a
// std::exception so that no kernel code catches it by accident.
struct Aborted {};

// ---- Allocations --------------------------------------------------------------------------------

class Allocations {
 public:
  static Allocations& instance() {
    static Allocations allocations;
    return allocations;
  }
  void add(void* p, std::size_t bytes) {
    std::lock_guard<std::mutex> lock(m_);
    blocks_[reinterpret_cast<std::uintptr_t>(p)] = bytes;
  }
  bool remove(void* p) {
    std::lock_guard<std::mutex> lock(m_);
    return blocks_.erase(reinterpret_cast<std::uintptr_t>(p)) == 1;
  }
  // True when [p, p + bytes) lies inside one allocation.
  bool contains(const void* p, std::size_t bytes) const {
    std::lock_guard<std::mutex> lock(m_);
    const auto* b = find_locked(reinterpret_cast<std::uintptr_t>(p));
    return b != nullptr && reinterpret_cast<std::uintptr_t>(p) + bytes <= b->first + b->second;
  }
  // True when p points into some allocation (whatever the length).
  bool touches(const void* p) const {
    std::lock_guard<std::mutex> lock(m_);
    return find_locked(reinterpret_cast<std::uintptr_t>(p)) != nullptr;
  }

 private:
  const std::pair<const std::uintptr_t, std::size_t>* find_locked(std::uintptr_t p) const {
    auto it = blocks_.upper_bound(p);
    if (it == blocks_.begin()) return nullptr;
    --it;
    // A zero-byte allocation contains nothing, but its own address still names it.
    if (p < it->first || (p >= it->first + it->second && !(p == it->first && it->second == 0))) {
      return nullptr;
    }
    return &*it;
  }
  mutable std::mutex m_;
  std::map<std::uintptr_t, std::size_t> blocks_;
};

// Emulated device memory is 256-byte aligned like cudaMalloc's, and exactly as long as asked, so
// AddressSanitizer flags the first byte past the end.
void* aligned_host_alloc(std::size_t bytes) {
  void* p = nullptr;
  if (posix_memalign(&p, 256, bytes == 0 ? 1 : bytes) != 0) return nullptr;
  return p;
}

// ---- Handles and attributes ---------------------------------------------------------------------

class Registry {
 public:
  static Registry& instance() {
    static Registry registry;
    return registry;
  }
  void add_stream(cudaStream_t s) {
    std::lock_guard<std::mutex> lock(m_);
    streams_.insert(s);
  }
  bool remove_stream(cudaStream_t s) {
    std::lock_guard<std::mutex> lock(m_);
    return streams_.erase(s) == 1;
  }
  bool valid_stream(cudaStream_t s) const {
    if (s == nullptr || s == cudaStreamLegacy || s == cudaStreamPerThread) return true;
    std::lock_guard<std::mutex> lock(m_);
    return streams_.count(s) == 1;
  }
  void add_event(cudaEvent_t e) {
    std::lock_guard<std::mutex> lock(m_);
    events_.insert(e);
  }
  bool remove_event(cudaEvent_t e) {
    std::lock_guard<std::mutex> lock(m_);
    return events_.erase(e) == 1;
  }
  bool valid_event(cudaEvent_t e) const {
    std::lock_guard<std::mutex> lock(m_);
    return events_.count(e) == 1;
  }
  void set_max_dynamic_shared(const void* func, std::size_t bytes) {
    std::lock_guard<std::mutex> lock(m_);
    max_dynamic_shared_[func] = bytes;
  }
  std::size_t max_dynamic_shared(const void* func) const {
    std::lock_guard<std::mutex> lock(m_);
    const auto it = max_dynamic_shared_.find(func);
    return it == max_dynamic_shared_.end() ? kDefaultDynamicSharedBytes : it->second;
  }

 private:
  mutable std::mutex m_;
  std::set<cudaStream_t> streams_;
  std::set<cudaEvent_t> events_;
  std::map<const void*, std::size_t> max_dynamic_shared_;
};

std::mutex& launch_mutex() {
  static std::mutex m;
  return m;
}

const char* warp_op_name(WarpOp op) {
  switch (op) {
    case WarpOp::kSyncWarp:
      return "__syncwarp";
    case WarpOp::kShflIdx:
      return "__shfl_sync";
    case WarpOp::kShflUp:
      return "__shfl_up_sync";
    case WarpOp::kShflDown:
      return "__shfl_down_sync";
    case WarpOp::kShflXor:
      return "__shfl_xor_sync";
    case WarpOp::kBallot:
      return "__ballot_sync";
    case WarpOp::kAny:
      return "__any_sync";
    case WarpOp::kAll:
      return "__all_sync";
    case WarpOp::kWmmaLoad:
      return "nvcuda::wmma::load_matrix_sync";
    case WarpOp::kWmmaStore:
      return "nvcuda::wmma::store_matrix_sync";
    case WarpOp::kWmmaMma:
      return "nvcuda::wmma::mma_sync";
    default:
      MMFL_FAIL("unknown warp collective ", static_cast<int>(op));
  }
}

const char* barrier_op_name(BarrierOp op) {
  switch (op) {
    case BarrierOp::kSync:
      return "__syncthreads";
    case BarrierOp::kCount:
      return "__syncthreads_count";
    case BarrierOp::kOr:
      return "__syncthreads_or";
    case BarrierOp::kAnd:
      return "__syncthreads_and";
    default:
      MMFL_FAIL("unknown barrier ", static_cast<int>(op));
  }
}

std::string thread_name() {
  return concat("thread ", dims(t_thread.thread_idx), " (warp ", t_thread.linear / 32, ", lane ",
                t_thread.linear % 32, ")");
}

}  // namespace

// ---- Block state --------------------------------------------------------------------------------

// One pending warp-collective call: the lanes of `mask` meet here; the last one to arrive computes
// every lane's answer.
struct Collective {
  WarpOp op = WarpOp::kSyncWarp;
  unsigned mask = 0;
  unsigned effective = 0;  // mask & lanes that exist
  unsigned arrived = 0;
  bool complete = false;
  int readers = 0;  // lanes still to collect their answer
  std::size_t size = 0;
  int args[32] = {};
  int widths[32] = {};
  alignas(16) unsigned char values[32][16] = {};
  alignas(16) unsigned char results[32][16] = {};
};

struct WarpState {
  std::condition_variable cv;
  std::list<Collective> pending;
  unsigned existing = 0;  // lanes of this warp that exist in the block
  unsigned exited = 0;
};

// Everything the threads of the running block share. One mutex guards all of it: the block
// barrier, the warp rendezvous and the deadlock check need one consistent view of who waits where.
class BlockState {
 public:
  explicit BlockState(unsigned size)
      : size_(size), num_warps_((size + 31) / 32), warps_(new WarpState[(size + 31) / 32]) {}

  void reset() {
    live_ = size_;
    exited_ = 0;
    blocked_ = 0;
    done_ = 0;
    barrier_arrived_ = 0;
    aborted_ = false;
    error_.clear();
    for (unsigned w = 0; w < num_warps_; ++w) {
      const unsigned lanes = std::min(32u, size_ - 32 * w);
      warps_[w].existing = lanes == 32 ? 0xffffffffu : (1u << lanes) - 1;
      warps_[w].exited = 0;
      warps_[w].pending.clear();
    }
  }

  int barrier(BarrierOp op, int predicate) {
    std::unique_lock<std::mutex> lock(m_);
    if (aborted_) throw Aborted{};
    if (exited_ > 0) {
      fail_locked(concat(barrier_op_name(op), " reached by ", thread_name(), " after ", exited_,
                         " thread(s) of the block exited; every thread of a block must reach "
                         "every __syncthreads"));
    }
    if (barrier_arrived_ == 0) {
      barrier_op_ = op;
      barrier_count_ = 0;
    } else if (barrier_op_ != op) {
      fail_locked(concat(thread_name(), " reached ", barrier_op_name(op), " while ",
                         barrier_arrived_, " thread(s) wait at ", barrier_op_name(barrier_op_)));
    }
    barrier_count_ += predicate != 0 ? 1 : 0;
    if (++barrier_arrived_ == live_) {
      switch (op) {
        case BarrierOp::kSync:
        case BarrierOp::kCount:
          barrier_result_ = barrier_count_;
          break;
        case BarrierOp::kOr:
          barrier_result_ = barrier_count_ > 0 ? 1 : 0;
          break;
        case BarrierOp::kAnd:
          barrier_result_ = barrier_count_ == static_cast<int>(live_) ? 1 : 0;
          break;
        default:
          MMFL_FAIL("unknown barrier ", static_cast<int>(op));
      }
      blocked_ -= barrier_arrived_ - 1;
      barrier_arrived_ = 0;
      ++barrier_generation_;
      barrier_cv_.notify_all();
      return barrier_result_;
    }
    const std::uint64_t generation = barrier_generation_;
    ++blocked_;
    check_deadlock_locked();
    barrier_cv_.wait(lock, [&] { return barrier_generation_ != generation || aborted_; });
    if (barrier_generation_ == generation) throw Aborted{};
    // No later barrier can complete before this thread arrives at it, so the result still holds.
    return barrier_result_;
  }

  void collective(WarpOp op, unsigned mask, const void* value, void* result, std::size_t size,
                  int arg, int width) {
    const unsigned lane = t_thread.linear % 32;
    const unsigned lane_bit = 1u << lane;
    std::unique_lock<std::mutex> lock(m_);
    if (aborted_) throw Aborted{};
    WarpState& warp = warps_[t_thread.linear / 32];
    if ((mask & lane_bit) == 0) {
      fail_locked(concat(thread_name(), " called ", warp_op_name(op), " with mask ", hex(mask),
                         ", which does not name the calling lane"));
    }
    if (width < 1 || width > 32 || (width & (width - 1)) != 0) {
      fail_locked(concat(thread_name(), " called ", warp_op_name(op), " with width ", width,
                         "; it must be a power of 2 in [1, 32]"));
    }
    const unsigned effective = mask & warp.existing;
    const bool gather = is_gather(op);
    if (gather && (mask != 0xffffffffu || warp.existing != 0xffffffffu || size != kGatherBytes)) {
      fail_locked(concat(thread_name(), " called ", warp_op_name(op),
                         mask != 0xffffffffu ? concat(" with mask ", hex(mask))
                                             : concat(" in a warp of lanes ", hex(warp.existing)),
                         "; a wmma operation is collective over all 32 lanes of a full warp"));
    }
    if ((effective & warp.exited) != 0) {
      fail_locked(concat(thread_name(), " called ", warp_op_name(op), " with mask ", hex(mask),
                         " but lanes ", hex(effective & warp.exited),
                         " of that mask have exited; a warp collective needs every lane it names"));
    }
    auto it = std::find_if(warp.pending.begin(), warp.pending.end(), [&](const Collective& c) {
      return c.mask == mask && !c.complete && (c.arrived & lane_bit) == 0;
    });
    if (it == warp.pending.end()) {
      it = warp.pending.emplace(warp.pending.end());
      it->op = op;
      it->mask = mask;
      it->effective = effective;
      it->size = size;
    } else if (it->op != op || it->size != size) {
      fail_locked(concat(thread_name(), " called ", warp_op_name(op), " with mask ", hex(mask),
                         " while lanes ", hex(it->arrived), " wait in ", warp_op_name(it->op),
                         " with the same mask; all lanes of a mask must call the same intrinsic"));
    }
    Collective& c = *it;
    c.args[lane] = arg;
    c.widths[lane] = width;
    if (size > 0) std::memcpy(c.values[lane], value, size);
    c.arrived |= lane_bit;
    if (c.arrived == c.effective) {
      compute_results(c);
      c.complete = true;
      c.readers = __builtin_popcount(c.effective) - 1;
      blocked_ -= c.readers;
      warp.cv.notify_all();
    } else {
      ++blocked_;
      check_deadlock_locked();
      warp.cv.wait(lock, [&] { return c.complete || aborted_; });
      if (!c.complete) throw Aborted{};
      --c.readers;
    }
    if (gather) {
      std::memcpy(result, c.values, sizeof c.values);
    } else if (size > 0 && result != nullptr) {
      std::memcpy(result, c.results[lane], size);
    }
    if (c.readers == 0) warp.pending.erase(it);
  }

  // Called once by every thread when it leaves the kernel (normally or not).
  void thread_exited(bool normally) {
    std::lock_guard<std::mutex> lock(m_);
    const unsigned lane_bit = 1u << (t_thread.linear % 32);
    WarpState& warp = warps_[t_thread.linear / 32];
    ++exited_;
    --live_;
    warp.exited |= lane_bit;
    if (normally && !aborted_) {
      if (barrier_arrived_ > 0) {
        record_locked(concat(thread_name(), " exited while ", barrier_arrived_,
                             " thread(s) wait at ", barrier_op_name(barrier_op_),
                             "; every thread of a block must reach every __syncthreads"));
      } else {
        for (const Collective& c : warp.pending) {
          if (!c.complete && (c.effective & lane_bit) != 0) {
            record_locked(concat(thread_name(), " exited while lanes ", hex(c.arrived), " wait in ",
                                 warp_op_name(c.op), " with mask ", hex(c.mask),
                                 ", which names it"));
            break;
          }
        }
        if (!aborted_ && live_ > 0 && blocked_ == live_) record_locked(deadlock_report_locked());
      }
    }
    if (++done_ == size_) done_cv_.notify_all();
  }

  // Called from a kernel thread: fails the block with `what`.
  [[noreturn]] void fail(const std::string& what) {
    std::unique_lock<std::mutex> lock(m_);
    fail_locked(what);
  }

  void record_error(const std::string& what) {
    std::lock_guard<std::mutex> lock(m_);
    record_locked(what);
  }

  void wait_done() {
    std::unique_lock<std::mutex> lock(m_);
    done_cv_.wait(lock, [&] { return done_ == size_; });
  }

  bool failed() const { return aborted_; }  // read by the launcher after wait_done
  const std::string& error() const { return error_; }

 private:
  // Pure results of a rendezvous; the shuffle rules are PTX's shfl.sync:
  //   segmask = 32 - width; max_lane = (lane & segmask) | (clamp & ~segmask), clamp 0 for .up,
  //   31 otherwise; j = source lane by mode; if j is beyond max_lane (below it for .up) the lane
  //   keeps its own value.
  static bool is_gather(WarpOp op) {
    return op == WarpOp::kWmmaLoad || op == WarpOp::kWmmaStore || op == WarpOp::kWmmaMma;
  }
  static constexpr std::size_t kGatherBytes = 16;

  static void compute_results(Collective& c) {
    if (is_gather(c.op)) return;  // every lane copies all values out
    unsigned ballot = 0;
    for (unsigned l = 0; l < 32; ++l) {
      if ((c.effective >> l & 1u) != 0) {
        int predicate = 0;
        if (c.size == sizeof(int)) std::memcpy(&predicate, c.values[l], sizeof(int));
        if (predicate != 0) ballot |= 1u << l;
      }
    }
    for (int lane = 0; lane < 32; ++lane) {
      if ((c.effective >> lane & 1u) == 0) continue;
      const int segmask = (32 - c.widths[lane]) & 31;
      const int arg = c.args[lane];
      int j = lane;
      switch (c.op) {
        case WarpOp::kSyncWarp:
          continue;
        case WarpOp::kBallot:
        case WarpOp::kAny:
        case WarpOp::kAll: {
          int value = static_cast<int>(ballot);
          if (c.op == WarpOp::kAny) value = ballot != 0 ? 1 : 0;
          if (c.op == WarpOp::kAll) value = ballot == c.effective ? 1 : 0;
          std::memcpy(c.results[lane], &value, sizeof(int));
          continue;
        }
        case WarpOp::kShflIdx: {
          const int max_lane = (lane & segmask) | (31 & ~segmask);
          j = (lane & segmask) | (arg & 31 & ~segmask);
          if (j > max_lane) j = lane;
          break;
        }
        case WarpOp::kShflUp: {
          const int max_lane = lane & segmask;
          j = lane - arg;
          if (j < max_lane) j = lane;
          break;
        }
        case WarpOp::kShflDown: {
          const int max_lane = (lane & segmask) | (31 & ~segmask);
          j = lane + arg;
          if (j > max_lane) j = lane;
          break;
        }
        case WarpOp::kShflXor: {
          const int max_lane = (lane & segmask) | (31 & ~segmask);
          j = lane ^ arg;
          if (j < 0 || j > max_lane) j = lane;
          break;
        }
        default:
          MMFL_FAIL("unknown warp collective ", static_cast<int>(c.op));
      }
      if ((c.effective >> j & 1u) != 0) {
        std::memcpy(c.results[lane], c.values[j], c.size);
      } else {
        std::memset(c.results[lane], 0xff, c.size);  // an inactive source lane: undefined in CUDA
      }
    }
  }

  void check_deadlock_locked() {
    if (blocked_ == live_) fail_locked(deadlock_report_locked());
  }

  std::string deadlock_report_locked() const {
    std::ostringstream os;
    os << "deadlock: all " << live_ << " live thread(s) of the block wait and none can proceed ("
       << exited_ << " exited)";
    if (barrier_arrived_ > 0) {
      os << "; " << barrier_arrived_ << " wait at " << barrier_op_name(barrier_op_);
    }
    for (unsigned w = 0; w < num_warps_; ++w) {
      for (const Collective& c : warps_[w].pending) {
        if (c.complete) continue;
        os << "; warp " << w << ": lanes " << hex(c.arrived) << " wait in " << warp_op_name(c.op)
           << " with mask " << hex(c.mask) << " for lanes " << hex(c.effective & ~c.arrived);
      }
    }
    return os.str();
  }

  void record_locked(const std::string& what) {
    if (!aborted_) {
      aborted_ = true;
      error_ = what;
    }
    barrier_cv_.notify_all();
    for (unsigned w = 0; w < num_warps_; ++w)
      warps_[w].cv.notify_all();
  }

  [[noreturn]] void fail_locked(const std::string& what) {
    record_locked(what);
    throw Aborted{};
  }

  std::mutex m_;
  std::condition_variable barrier_cv_;
  std::condition_variable done_cv_;
  const unsigned size_;
  const unsigned num_warps_;
  std::unique_ptr<WarpState[]> warps_;
  unsigned live_ = 0;
  unsigned exited_ = 0;
  unsigned blocked_ = 0;  // threads waiting in a barrier or rendezvous that has not completed
  unsigned done_ = 0;
  unsigned barrier_arrived_ = 0;
  std::uint64_t barrier_generation_ = 0;
  BarrierOp barrier_op_ = BarrierOp::kSync;
  int barrier_count_ = 0;
  int barrier_result_ = 0;
  bool aborted_ = false;
  std::string error_;
};

namespace {

BlockState* current_block(const char* what) {
  BlockState* block = t_thread.block;
  MMFL_CHECK(block != nullptr, what, " called outside an emulated kernel");
  return block;
}

// ---- Thread pool --------------------------------------------------------------------------------

struct BlockTask {
  BlockState* block;
  ThreadBody body;
  const void* closure;
  uint3 block_idx;
  uint3 block_dim;
  uint3 grid_dim;
  unsigned char* dynamic_shared;
};

void run_thread(const BlockTask& task, unsigned linear) {
  ThreadState& t = t_thread;
  t.linear = linear;
  t.thread_idx = make_uint3(linear % task.block_dim.x, linear / task.block_dim.x % task.block_dim.y,
                            linear / (task.block_dim.x * task.block_dim.y));
  t.block_idx = task.block_idx;
  t.block_dim = task.block_dim;
  t.grid_dim = task.grid_dim;
  t.block = task.block;
  t.dynamic_shared = task.dynamic_shared;
  bool normally = false;
  try {
    task.body(task.closure);
    normally = true;
  } catch (const Aborted&) {
    // The block already failed; its error says why.
  } catch (const std::exception& e) {
    task.block->record_error(concat(thread_name(), " threw: ", e.what()));
  } catch (...) {
    task.block->record_error(concat(thread_name(), " threw an exception of unknown type"));
  }
  task.block->thread_exited(normally);
  t.block = nullptr;
  t.dynamic_shared = nullptr;
}

// One OS thread that runs one emulated thread at a time.
class Worker {
 public:
  Worker() : thread_([this] { loop(); }) {}
  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;
  ~Worker() {
    {
      std::lock_guard<std::mutex> lock(m_);
      stop_ = true;
    }
    cv_.notify_one();
    thread_.join();
  }
  void start(const BlockTask* task, unsigned linear) {
    {
      std::lock_guard<std::mutex> lock(m_);
      task_ = task;
      linear_ = linear;
    }
    cv_.notify_one();
  }

 private:
  void loop() {
    for (;;) {
      const BlockTask* task = nullptr;
      unsigned linear = 0;
      {
        std::unique_lock<std::mutex> lock(m_);
        cv_.wait(lock, [&] { return task_ != nullptr || stop_; });
        if (task_ == nullptr) return;
        task = task_;
        linear = linear_;
        task_ = nullptr;
      }
      run_thread(*task, linear);
    }
  }
  std::mutex m_;
  std::condition_variable cv_;
  const BlockTask* task_ = nullptr;
  unsigned linear_ = 0;
  bool stop_ = false;
  std::thread thread_;  // last: starts after the members it uses exist
};

// Grows to the largest block launched so far (at most 1024 threads) and keeps its threads.
class Pool {
 public:
  static Pool& instance() {
    static Pool pool;
    return pool;
  }
  void run_block(BlockState& block, const BlockTask& task, unsigned threads) {
    while (workers_.size() < threads)
      workers_.push_back(std::make_unique<Worker>());
    block.reset();
    for (unsigned i = 0; i < threads; ++i)
      workers_[i]->start(&task, i);
    block.wait_done();
  }

 private:
  std::vector<std::unique_ptr<Worker>> workers_;
};

std::string check_config(const LaunchConfig& c) {
  const unsigned long long threads =
      static_cast<unsigned long long>(c.block.x) * c.block.y * c.block.z;
  if (c.block.x == 0 || c.block.y == 0 || c.block.z == 0) {
    return concat("block ", dims(c.block), " has a zero dimension");
  }
  if (threads > static_cast<unsigned long long>(kMaxThreadsPerBlock)) {
    return concat("block ", dims(c.block), " has ", threads, " threads; the limit is ",
                  kMaxThreadsPerBlock);
  }
  if (c.block.z > static_cast<unsigned>(kMaxBlockDimZ)) {
    return concat("block ", dims(c.block), ": blockDim.z is limited to ", kMaxBlockDimZ);
  }
  if (c.grid.x == 0 || c.grid.y == 0 || c.grid.z == 0) {
    return concat("grid ", dims(c.grid), " has a zero dimension");
  }
  if (c.grid.x > 0x7fffffffu || c.grid.y > static_cast<unsigned>(kMaxGridDimYZ) ||
      c.grid.z > static_cast<unsigned>(kMaxGridDimYZ)) {
    return concat("grid ", dims(c.grid), " exceeds the limits (2^31-1, ", kMaxGridDimYZ, ", ",
                  kMaxGridDimYZ, ")");
  }
  return {};
}

struct FreeDeleter {
  void operator()(void* p) const { std::free(p); }
};

}  // namespace

// ---- Entry points used by the shim --------------------------------------------------------------

int block_barrier(BarrierOp op, int predicate) {
  return current_block(barrier_op_name(op))->barrier(op, predicate);
}

void warp_collective(WarpOp op, unsigned mask, const void* value, void* result, std::size_t size,
                     int arg, int width) {
  current_block(warp_op_name(op))->collective(op, mask, value, result, size, arg, width);
}

void trap(const char* what) {
  current_block("__trap")->fail(concat(thread_name(), ": ", what));
}

void launch(const LaunchConfig& c, ThreadBody body, const void* closure) {
  const std::string bad_config = check_config(c);
  if (!bad_config.empty()) {
    set_error(cudaErrorInvalidConfiguration, concat("kernel '", c.name, "': ", bad_config));
    return;
  }
  const std::size_t smem_limit = Registry::instance().max_dynamic_shared(c.func);
  if (c.dynamic_shared_bytes > smem_limit) {
    set_error(cudaErrorInvalidValue,
              concat("kernel '", c.name, "' asks for ", c.dynamic_shared_bytes,
                     " bytes of dynamic shared memory; its limit is ", smem_limit,
                     " (cudaFuncSetAttribute(cudaFuncAttributeMaxDynamicSharedMemorySize) "
                     "raises it up to ",
                     kMaxSharedBytesPerBlockOptin, ")"));
    return;
  }
  if (!Registry::instance().valid_stream(c.stream)) {
    set_error(cudaErrorInvalidResourceHandle,
              concat("kernel '", c.name, "' launched on a stream that does not exist"));
    return;
  }

  // One launch at a time in the process: static __shared__ variables are process-wide.
  std::lock_guard<std::mutex> serial(launch_mutex());
  const unsigned threads = c.block.x * c.block.y * c.block.z;
  // Exactly the requested size (AddressSanitizer sees overruns), 128-byte aligned.
  void* smem_raw = nullptr;
  if (posix_memalign(&smem_raw, 128, c.dynamic_shared_bytes) != 0) {
    set_error(cudaErrorMemoryAllocation, concat("kernel '", c.name, "': no host memory for ",
                                                c.dynamic_shared_bytes, " bytes of shared memory"));
    return;
  }
  std::unique_ptr<unsigned char, FreeDeleter> smem(static_cast<unsigned char*>(smem_raw));
  BlockState block(threads);
  BlockTask task{&block,
                 body,
                 closure,
                 make_uint3(0, 0, 0),
                 make_uint3(c.block.x, c.block.y, c.block.z),
                 make_uint3(c.grid.x, c.grid.y, c.grid.z),
                 smem.get()};
  for (unsigned z = 0; z < c.grid.z; ++z) {
    for (unsigned y = 0; y < c.grid.y; ++y) {
      for (unsigned x = 0; x < c.grid.x; ++x) {
        task.block_idx = make_uint3(x, y, z);
        // Shared memory starts undefined on a GPU; all-ones bytes make stale reads show (NaN).
        if (c.dynamic_shared_bytes > 0) std::memset(smem.get(), 0xff, c.dynamic_shared_bytes);
        Pool::instance().run_block(block, task, threads);
        if (block.failed()) {
          set_error(cudaErrorLaunchFailure, concat("kernel '", c.name, "', block ",
                                                   dims(task.block_idx), ": ", block.error()));
          return;
        }
      }
    }
  }
}

}  // namespace detail

// ---- Plain C++ API ------------------------------------------------------------------------------

namespace {

// These calls report through exceptions, so a failure must not stay behind as the last error
// (the next launch check would blame an innocent kernel).
void check_api(cudaError_t err, const std::string& what) {
  if (err == cudaSuccess) return;
  api::cudaGetLastError();
  MMFL_FAIL(what, ": ", api::cudaGetErrorString(err), ": ", last_error_detail());
}

}  // namespace

void* device_alloc(std::size_t bytes) {
  void* p = nullptr;
  check_api(api::cudaMalloc(&p, bytes), detail::concat("device_alloc(", bytes, ")"));
  return p;
}

void device_free(void* ptr) {
  check_api(api::cudaFree(ptr), detail::concat("device_free(", ptr, ")"));
}

void copy_to_device(void* device_dst, const void* host_src, std::size_t bytes) {
  check_api(api::cudaMemcpy(device_dst, host_src, bytes, cudaMemcpyHostToDevice), "copy_to_device");
}

void copy_to_host(void* host_dst, const void* device_src, std::size_t bytes) {
  check_api(api::cudaMemcpy(host_dst, device_src, bytes, cudaMemcpyDeviceToHost), "copy_to_host");
}

void device_memset(void* device_dst, int value, std::size_t bytes) {
  check_api(api::cudaMemset(device_dst, value, bytes), "device_memset");
}

bool is_device_range(const void* ptr, std::size_t bytes) {
  return detail::Allocations::instance().contains(ptr, bytes);
}

void device_synchronize() {
  check_api(api::cudaGetLastError(), "device_synchronize");
}

std::string last_error_detail() {
  return detail::t_last_error.detail;
}

// ---- Emulated CUDA runtime ----------------------------------------------------------------------

namespace api {

using detail::concat;
using detail::set_error;

cudaError_t cudaGetLastError() {
  const cudaError_t err = detail::t_last_error.code;
  detail::t_last_error.code = cudaSuccess;
  return err;
}

cudaError_t cudaPeekAtLastError() {
  return detail::t_last_error.code;
}

const char* cudaGetErrorString(cudaError_t error) {
  switch (error) {
    case cudaSuccess:
      return "no error";
    case cudaErrorInvalidValue:
      return "invalid argument";
    case cudaErrorMemoryAllocation:
      return "out of memory";
    case cudaErrorInvalidConfiguration:
      return "invalid configuration argument";
    case cudaErrorInvalidDevicePointer:
      return "invalid device pointer";
    case cudaErrorInvalidMemcpyDirection:
      return "invalid copy direction for memcpy";
    case cudaErrorInvalidDevice:
      return "invalid device ordinal";
    case cudaErrorInvalidResourceHandle:
      return "invalid resource handle";
    case cudaErrorLaunchFailure:
      return "unspecified launch failure";
    default:
      return "unrecognized error code";
  }
}

const char* cudaGetErrorName(cudaError_t error) {
  switch (error) {
    case cudaSuccess:
      return "cudaSuccess";
    case cudaErrorInvalidValue:
      return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation:
      return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration:
      return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidDevicePointer:
      return "cudaErrorInvalidDevicePointer";
    case cudaErrorInvalidMemcpyDirection:
      return "cudaErrorInvalidMemcpyDirection";
    case cudaErrorInvalidDevice:
      return "cudaErrorInvalidDevice";
    case cudaErrorInvalidResourceHandle:
      return "cudaErrorInvalidResourceHandle";
    case cudaErrorLaunchFailure:
      return "cudaErrorLaunchFailure";
    default:
      return "cudaErrorUnknown";
  }
}

cudaError_t cudaMalloc(void** ptr, std::size_t bytes) {
  if (ptr == nullptr) return set_error(cudaErrorInvalidValue, "cudaMalloc: ptr is null");
  *ptr = nullptr;
  void* p = detail::aligned_host_alloc(bytes);
  if (p == nullptr) {
    return set_error(cudaErrorMemoryAllocation, concat("cudaMalloc of ", bytes, " bytes"));
  }
  detail::Allocations::instance().add(p, bytes);
  *ptr = p;
  return cudaSuccess;
}

cudaError_t cudaMallocAsync(void** ptr, std::size_t bytes, cudaStream_t stream) {
  if (!detail::Registry::instance().valid_stream(stream)) {
    return set_error(cudaErrorInvalidResourceHandle, "cudaMallocAsync: no such stream");
  }
  return cudaMalloc(ptr, bytes);
}

cudaError_t cudaFree(void* ptr) {
  if (ptr == nullptr) return cudaSuccess;
  if (!detail::Allocations::instance().remove(ptr)) {
    return set_error(cudaErrorInvalidValue,
                     concat("cudaFree(", ptr, "): not the start of an emulated device allocation"));
  }
  std::free(ptr);
  return cudaSuccess;
}

cudaError_t cudaFreeAsync(void* ptr, cudaStream_t stream) {
  if (!detail::Registry::instance().valid_stream(stream)) {
    return set_error(cudaErrorInvalidResourceHandle, "cudaFreeAsync: no such stream");
  }
  return cudaFree(ptr);
}

cudaError_t cudaMallocHost(void** ptr, std::size_t bytes) {
  if (ptr == nullptr) return set_error(cudaErrorInvalidValue, "cudaMallocHost: ptr is null");
  *ptr = detail::aligned_host_alloc(bytes);
  if (*ptr == nullptr) {
    return set_error(cudaErrorMemoryAllocation, concat("cudaMallocHost of ", bytes, " bytes"));
  }
  return cudaSuccess;
}

cudaError_t cudaFreeHost(void* ptr) {
  std::free(ptr);
  return cudaSuccess;
}

cudaError_t cudaMemcpy(void* dst, const void* src, std::size_t bytes, cudaMemcpyKind kind) {
  if (bytes == 0) return cudaSuccess;
  if (dst == nullptr || src == nullptr) {
    return set_error(cudaErrorInvalidValue, "cudaMemcpy: null pointer");
  }
  const auto& allocations = detail::Allocations::instance();
  const bool dst_device = allocations.contains(dst, bytes);
  const bool src_device = allocations.contains(src, bytes);
  // A range that starts in an allocation but runs past its end is an overrun, not host memory.
  const bool dst_overrun = !dst_device && allocations.touches(dst);
  const bool src_overrun = !src_device && allocations.touches(src);
  auto range_error = [&](const char* which, const void* p, const char* expected) {
    return set_error(cudaErrorInvalidValue,
                     concat("cudaMemcpy of ", bytes, " bytes (kind ", static_cast<int>(kind),
                            "): the ", which, " range starting at ", p, " is not ", expected));
  };
  if (dst_overrun) return range_error("destination", dst, "inside one device allocation");
  if (src_overrun) return range_error("source", src, "inside one device allocation");
  switch (kind) {
    case cudaMemcpyHostToHost:
      break;
    case cudaMemcpyHostToDevice:
      if (!dst_device) return range_error("destination", dst, "device memory");
      if (src_device) return range_error("source", src, "host memory");
      break;
    case cudaMemcpyDeviceToHost:
      if (!src_device) return range_error("source", src, "device memory");
      if (dst_device) return range_error("destination", dst, "host memory");
      break;
    case cudaMemcpyDeviceToDevice:
      if (!dst_device) return range_error("destination", dst, "device memory");
      if (!src_device) return range_error("source", src, "device memory");
      break;
    case cudaMemcpyDefault:
      break;
    default:
      return set_error(cudaErrorInvalidMemcpyDirection,
                       concat("cudaMemcpy: kind ", static_cast<int>(kind)));
  }
  std::memcpy(dst, src, bytes);
  return cudaSuccess;
}

cudaError_t cudaMemcpyAsync(void* dst, const void* src, std::size_t bytes, cudaMemcpyKind kind,
                            cudaStream_t stream) {
  if (!detail::Registry::instance().valid_stream(stream)) {
    return set_error(cudaErrorInvalidResourceHandle, "cudaMemcpyAsync: no such stream");
  }
  return cudaMemcpy(dst, src, bytes, kind);
}

cudaError_t cudaMemset(void* dst, int value, std::size_t bytes) {
  if (bytes == 0) return cudaSuccess;
  if (!detail::Allocations::instance().contains(dst, bytes)) {
    return set_error(cudaErrorInvalidValue, concat("cudaMemset of ", bytes, " bytes at ", dst,
                                                   ": not inside one device allocation"));
  }
  std::memset(dst, value, bytes);
  return cudaSuccess;
}

cudaError_t cudaMemsetAsync(void* dst, int value, std::size_t bytes, cudaStream_t stream) {
  if (!detail::Registry::instance().valid_stream(stream)) {
    return set_error(cudaErrorInvalidResourceHandle, "cudaMemsetAsync: no such stream");
  }
  return cudaMemset(dst, value, bytes);
}

cudaError_t cudaStreamCreate(cudaStream_t* stream) {
  return cudaStreamCreateWithFlags(stream, 0);
}

cudaError_t cudaStreamCreateWithFlags(cudaStream_t* stream, unsigned flags) {
  if (stream == nullptr) return set_error(cudaErrorInvalidValue, "cudaStreamCreate: null");
  *stream = new CUstream_st{flags};
  detail::Registry::instance().add_stream(*stream);
  return cudaSuccess;
}

cudaError_t cudaStreamDestroy(cudaStream_t stream) {
  if (stream == nullptr || !detail::Registry::instance().remove_stream(stream)) {
    return set_error(cudaErrorInvalidResourceHandle, "cudaStreamDestroy: no such stream");
  }
  delete stream;
  return cudaSuccess;
}

cudaError_t cudaStreamSynchronize(cudaStream_t stream) {
  if (!detail::Registry::instance().valid_stream(stream)) {
    return set_error(cudaErrorInvalidResourceHandle, "cudaStreamSynchronize: no such stream");
  }
  return cudaSuccess;
}

cudaError_t cudaStreamQuery(cudaStream_t stream) {
  return cudaStreamSynchronize(stream);
}

cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t event, unsigned /*flags*/) {
  if (!detail::Registry::instance().valid_event(event)) {
    return set_error(cudaErrorInvalidResourceHandle, "cudaStreamWaitEvent: no such event");
  }
  return cudaStreamSynchronize(stream);
}

cudaError_t cudaEventCreate(cudaEvent_t* event) {
  return cudaEventCreateWithFlags(event, 0);
}

cudaError_t cudaEventCreateWithFlags(cudaEvent_t* event, unsigned /*flags*/) {
  if (event == nullptr) return set_error(cudaErrorInvalidValue, "cudaEventCreate: null");
  *event = new CUevent_st{};
  detail::Registry::instance().add_event(*event);
  return cudaSuccess;
}

cudaError_t cudaEventDestroy(cudaEvent_t event) {
  if (!detail::Registry::instance().remove_event(event)) {
    return set_error(cudaErrorInvalidResourceHandle, "cudaEventDestroy: no such event");
  }
  delete event;
  return cudaSuccess;
}

// Work on a stream completes before the call that queued it returns, so an event records "now".
cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream) {
  if (!detail::Registry::instance().valid_event(event)) {
    return set_error(cudaErrorInvalidResourceHandle, "cudaEventRecord: no such event");
  }
  if (!detail::Registry::instance().valid_stream(stream)) {
    return set_error(cudaErrorInvalidResourceHandle, "cudaEventRecord: no such stream");
  }
  event->time = std::chrono::steady_clock::now();
  event->recorded = true;
  return cudaSuccess;
}

cudaError_t cudaEventSynchronize(cudaEvent_t event) {
  if (!detail::Registry::instance().valid_event(event)) {
    return set_error(cudaErrorInvalidResourceHandle, "cudaEventSynchronize: no such event");
  }
  return cudaSuccess;
}

cudaError_t cudaEventQuery(cudaEvent_t event) {
  return cudaEventSynchronize(event);
}

cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t end) {
  if (ms == nullptr) return set_error(cudaErrorInvalidValue, "cudaEventElapsedTime: ms is null");
  if (!detail::Registry::instance().valid_event(start) ||
      !detail::Registry::instance().valid_event(end) || !start->recorded || !end->recorded) {
    return set_error(cudaErrorInvalidResourceHandle,
                     "cudaEventElapsedTime: both events must exist and be recorded");
  }
  *ms = std::chrono::duration<float, std::milli>(end->time - start->time).count();
  return cudaSuccess;
}

cudaError_t cudaDeviceSynchronize() {
  return cudaSuccess;
}

cudaError_t cudaGetDeviceCount(int* count) {
  if (count == nullptr) return set_error(cudaErrorInvalidValue, "cudaGetDeviceCount: null");
  *count = 1;
  return cudaSuccess;
}

cudaError_t cudaGetDevice(int* device) {
  if (device == nullptr) return set_error(cudaErrorInvalidValue, "cudaGetDevice: null");
  *device = 0;
  return cudaSuccess;
}

cudaError_t cudaSetDevice(int device) {
  if (device != 0) {
    return set_error(cudaErrorInvalidDevice,
                     concat("cudaSetDevice(", device, "): the emulator has device 0 only"));
  }
  return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device) {
  if (value == nullptr) return set_error(cudaErrorInvalidValue, "cudaDeviceGetAttribute: null");
  if (device != 0) {
    return set_error(cudaErrorInvalidDevice, "cudaDeviceGetAttribute: the emulator has device 0");
  }
  switch (attr) {
    case cudaDevAttrMaxThreadsPerBlock:
    case cudaDevAttrMaxBlockDimX:
    case cudaDevAttrMaxBlockDimY:
      *value = kMaxThreadsPerBlock;
      break;
    case cudaDevAttrMaxBlockDimZ:
      *value = kMaxBlockDimZ;
      break;
    case cudaDevAttrMaxGridDimX:
      *value = 0x7fffffff;
      break;
    case cudaDevAttrMaxGridDimY:
    case cudaDevAttrMaxGridDimZ:
      *value = kMaxGridDimYZ;
      break;
    case cudaDevAttrWarpSize:
      *value = kWarpSize;
      break;
    case cudaDevAttrMultiProcessorCount:
      *value = kMultiProcessorCount;
      break;
    case cudaDevAttrMaxSharedMemoryPerBlock:
      *value = static_cast<int>(kDefaultDynamicSharedBytes);
      break;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin:
      *value = static_cast<int>(kMaxSharedBytesPerBlockOptin);
      break;
    case cudaDevAttrComputeCapabilityMajor:
      *value = 9;
      break;
    case cudaDevAttrComputeCapabilityMinor:
      *value = 0;
      break;
    default:
      return set_error(cudaErrorInvalidValue, concat("cudaDeviceGetAttribute: attribute ",
                                                     static_cast<int>(attr), " is not emulated"));
  }
  return cudaSuccess;
}

cudaError_t cudaFuncSetAttribute(const void* func, cudaFuncAttribute attr, int value) {
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize) {
    return set_error(cudaErrorInvalidValue, concat("cudaFuncSetAttribute: attribute ",
                                                   static_cast<int>(attr), " is not emulated"));
  }
  if (value < 0 || static_cast<std::size_t>(value) > kMaxSharedBytesPerBlockOptin) {
    return set_error(cudaErrorInvalidValue,
                     concat("cudaFuncSetAttribute(cudaFuncAttributeMaxDynamicSharedMemorySize, ",
                            value, "): the limit is ", kMaxSharedBytesPerBlockOptin));
  }
  detail::Registry::instance().set_max_dynamic_shared(func, static_cast<std::size_t>(value));
  return cudaSuccess;
}

}  // namespace api
}  // namespace mmfl::simt
