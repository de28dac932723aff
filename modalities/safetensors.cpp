#include "modalities/safetensors.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <limits>
#include <set>

#include "mmfl/error.h"
#include "modalities/file_io.h"

namespace mmfl::modalities {

namespace {

struct DtypeName {
  const char* name;
  SafetensorsDtype dtype;
  int64_t bytes;
};
constexpr DtypeName kDtypes[] = {
    {"BOOL", SafetensorsDtype::kBool, 1}, {"U8", SafetensorsDtype::kU8, 1},
    {"I8", SafetensorsDtype::kI8, 1},     {"I16", SafetensorsDtype::kI16, 2},
    {"U16", SafetensorsDtype::kU16, 2},   {"F16", SafetensorsDtype::kF16, 2},
    {"BF16", SafetensorsDtype::kBF16, 2}, {"I32", SafetensorsDtype::kI32, 4},
    {"U32", SafetensorsDtype::kU32, 4},   {"F32", SafetensorsDtype::kF32, 4},
    {"I64", SafetensorsDtype::kI64, 8},   {"U64", SafetensorsDtype::kU64, 8},
    {"F64", SafetensorsDtype::kF64, 8},
};

std::string allowed_dtypes() {
  std::string s;
  for (const auto& d : kDtypes)
    s += std::string(s.empty() ? "" : ", ") + d.name;
  return s;
}

// Non-negative integer that fits int64 (shapes) or uint64 (offsets); nlohmann stores numbers as
// int64, uint64 or double, so anything else (negative, fractional, a string) is refused.
bool as_u64(const nlohmann::json& v, uint64_t* out) {
  if (v.is_number_unsigned()) {
    *out = v.get<uint64_t>();
    return true;
  }
  if (v.is_number_integer() && v.get<int64_t>() >= 0) {
    *out = uint64_t(v.get<int64_t>());
    return true;
  }
  return false;
}

}  // namespace

const char* to_string(SafetensorsDtype d) {
  for (const auto& e : kDtypes)
    if (e.dtype == d) return e.name;
  MMFL_FAIL("unknown SafetensorsDtype ", static_cast<int>(d));
}

int64_t dtype_bytes(SafetensorsDtype d) {
  for (const auto& e : kDtypes)
    if (e.dtype == d) return e.bytes;
  MMFL_FAIL("unknown SafetensorsDtype ", static_cast<int>(d));
}

int64_t SafetensorsTensor::numel() const {
  int64_t n = 1;
  for (int64_t s : shape)
    n *= s;
  return n;
}

const SafetensorsTensor* SafetensorsHeader::find(const std::string& name) const {
  for (const auto& t : tensors)
    if (t.name == name) return &t;
  return nullptr;
}

SafetensorsHeader parse_safetensors_header(const std::string& json, uint64_t data_bytes,
                                           const std::string& origin) {
  const std::string where = "safetensors file '" + origin + "'";
  MMFL_CHECK(!json.empty() && json[0] == '{', where,
             ": the header (at byte offset 8) is not a JSON object: it must start with '{'");
  // Duplicated names would silently keep one of the tensors; the parser callback sees every key
  // of the top-level object.
  std::set<std::string> seen;
  std::string duplicate;
  nlohmann::json::parser_callback_t on_event = [&](int depth, nlohmann::json::parse_event_t ev,
                                                   nlohmann::json& parsed) {
    if (ev == nlohmann::json::parse_event_t::key && depth == 1 && parsed.is_string() &&
        !seen.insert(parsed.get<std::string>()).second && duplicate.empty())
      duplicate = parsed.get<std::string>();
    return true;
  };
  nlohmann::json h;
  try {
    h = nlohmann::json::parse(json, on_event);
  } catch (const nlohmann::json::exception& e) {
    MMFL_FAIL(where, ": the header (bytes 8 to ", 8 + json.size(),
              ") is not valid JSON: ", e.what());
  }
  MMFL_CHECK(h.is_object(), where, ": the header is not a JSON object");
  MMFL_CHECK(duplicate.empty(), where, ": the header names tensor '", duplicate, "' twice");

  SafetensorsHeader out;
  for (auto it = h.begin(); it != h.end(); ++it) {
    const std::string& name = it.key();
    const nlohmann::json& v = it.value();
    if (name == "__metadata__") {
      MMFL_CHECK(v.is_object(), where, ": '__metadata__' must map strings to strings");
      for (auto m = v.begin(); m != v.end(); ++m) {
        MMFL_CHECK(m.value().is_string(), where, ": '__metadata__' entry '", m.key(),
                   "' is not a string");
        out.metadata[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    const std::string tw = where + ", tensor '" + name + "'";
    MMFL_CHECK(!name.empty(), where, ": a tensor has an empty name");
    MMFL_CHECK(v.is_object(), tw, ": expected an object with dtype, shape and data_offsets");
    for (auto k = v.begin(); k != v.end(); ++k)
      MMFL_CHECK(k.key() == "dtype" || k.key() == "shape" || k.key() == "data_offsets", tw,
                 ": unknown field '", k.key(), "' (allowed: dtype, shape, data_offsets)");
    MMFL_CHECK(v.contains("dtype") && v.contains("shape") && v.contains("data_offsets"), tw,
               ": needs the fields dtype, shape and data_offsets");
    SafetensorsTensor t;
    t.name = name;
    const auto& dt = v["dtype"];
    MMFL_CHECK(dt.is_string(), tw, ": dtype must be a string (", allowed_dtypes(), ")");
    const std::string dts = dt.get<std::string>();
    const auto d = std::find_if(std::begin(kDtypes), std::end(kDtypes),
                                [&](const DtypeName& e) { return dts == e.name; });
    MMFL_CHECK(d != std::end(kDtypes), tw, ": unsupported dtype '", dts,
               "' (supported: ", allowed_dtypes(), ")");
    t.dtype = d->dtype;

    const auto& sh = v["shape"];
    MMFL_CHECK(sh.is_array() && sh.size() <= 64, tw,
               ": shape must be an array of at most 64 non-negative integers");
    // The element count must not overflow: bound it by the data section.
    uint64_t numel = 1;
    for (const auto& dim : sh) {
      uint64_t s = 0;
      MMFL_CHECK(as_u64(dim, &s) && s <= uint64_t(std::numeric_limits<int64_t>::max()), tw,
                 ": shape ", sh.dump(), " holds something that is not a non-negative integer");
      t.shape.push_back(int64_t(s));
      if (numel != 0 && s != 0) {
        MMFL_CHECK(numel <= data_bytes / s, tw, ": shape ", sh.dump(),
                   " has more elements than the file's data section (", data_bytes,
                   " bytes) can hold");
      }
      numel *= s;
    }

    const auto& off = v["data_offsets"];
    MMFL_CHECK(
        off.is_array() && off.size() == 2 && as_u64(off[0], &t.begin) && as_u64(off[1], &t.end), tw,
        ": data_offsets must be [begin, end], two non-negative integers");
    MMFL_CHECK(t.begin <= t.end, tw, ": data_offsets [", t.begin, ", ", t.end,
               "] end before they begin");
    MMFL_CHECK(t.end <= data_bytes, tw, ": data_offsets [", t.begin, ", ", t.end,
               "] go past the end of the data section (", data_bytes,
               " bytes after the header): the file is truncated or the header is wrong");
    const uint64_t want = numel * uint64_t(d->bytes);  // <= data_bytes * 8: no overflow
    MMFL_CHECK(t.end - t.begin == want, tw, ": shape ", sh.dump(), " of ", dts, " needs ", want,
               " bytes but data_offsets [", t.begin, ", ", t.end, "] hold ", t.end - t.begin);
    out.tensors.push_back(std::move(t));
  }

  // The data section must be exactly the tensors, each byte in one of them.
  std::vector<const SafetensorsTensor*> order;
  for (const auto& t : out.tensors)
    order.push_back(&t);
  std::sort(order.begin(), order.end(), [](const auto* a, const auto* b) {
    return a->begin != b->begin ? a->begin < b->begin : a->end < b->end;
  });
  uint64_t pos = 0;
  const SafetensorsTensor* prev = nullptr;
  for (const auto* t : order) {
    MMFL_CHECK(t->begin >= pos, where, ": tensor '", t->name, "' (data_offsets [", t->begin, ", ",
               t->end, "]) overlaps tensor '", prev ? prev->name : "", "' (which ends at ", pos,
               ")");
    MMFL_CHECK(t->begin == pos, where, ": bytes [", pos, ", ", t->begin,
               ") of the data section belong to no tensor (before tensor '", t->name, "')");
    pos = t->end;
    prev = t;
  }
  MMFL_CHECK(pos == data_bytes, where, ": the last ", data_bytes - pos,
             " bytes of the data section belong to no tensor (the tensors end at byte ", pos,
             " of ", data_bytes, ")");
  return out;
}

SafetensorsFile::SafetensorsFile(const std::string& path, uint64_t max_bytes) : path_(path) {
  file_ = std::make_unique<RegularFileReader>(path, max_bytes, "safetensors file");
  const uint64_t size = file_->size();
  MMFL_CHECK(size >= 8, "safetensors file '", path, "' is ", size,
             " bytes: too short for the 8-byte header length (truncated?)");
  unsigned char len_bytes[8];
  file_->read_at(0, len_bytes, 8);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i)
    n = (n << 8) | len_bytes[i];
  MMFL_CHECK(n <= kSafetensorsMaxHeaderBytes, "safetensors file '", path,
             "': the header length at byte offset 0 says ", n, " bytes, more than the format's ",
             kSafetensorsMaxHeaderBytes, "-byte limit (not a safetensors file?)");
  MMFL_CHECK(n <= size - 8, "safetensors file '", path,
             "': the header length at byte offset 0 says ", n, " bytes but only ", size - 8,
             " follow (truncated, or not a safetensors file)");
  const std::string json = file_->read_at(8, n);
  data_start_ = 8 + n;
  header_ = parse_safetensors_header(json, size - data_start_, path);
}

SafetensorsFile::~SafetensorsFile() = default;

void SafetensorsFile::read(const SafetensorsTensor& tensor, void* dst) const {
  file_->read_at(data_start_ + tensor.begin, dst, tensor.end - tensor.begin);
}

}  // namespace mmfl::modalities
