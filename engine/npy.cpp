#include "engine/npy.h"

#include "engine/checkpoint.h"
#include "mmfl/error.h"

namespace mmfl::engine {

void write_npy(const std::string& path, const torch::Tensor& t_in) {
  const auto t = t_in.detach().cpu().contiguous();
  std::string descr;
  switch (t.scalar_type()) {
    case torch::kFloat32:
      descr = "<f4";
      break;
    case torch::kInt64:
      descr = "<i8";
      break;
    default:
      MMFL_FAIL("write_npy '", path, "': unsupported dtype ", t.scalar_type());
  }
  std::string shape = "(";
  for (int64_t i = 0; i < t.dim(); ++i)
    shape += std::to_string(t.size(i)) + (t.dim() == 1 ? "," : i + 1 < t.dim() ? ", " : "");
  shape += ")";
  std::string header =
      "{'descr': '" + descr + "', 'fortran_order': False, 'shape': " + shape + ", }";
  // Magic (6) + version (2) + header length (2) + header, padded with spaces to a multiple of 64
  // and ended by a newline, as the format requires.
  const size_t unpadded = 10 + header.size() + 1;
  header.append((64 - unpadded % 64) % 64, ' ');
  header += '\n';
  std::string bytes("\x93NUMPY\x01\x00", 8);
  bytes.push_back(char(header.size() & 0xff));
  bytes.push_back(char(header.size() >> 8));
  bytes += header;
  bytes.append(static_cast<const char*>(t.data_ptr()), size_t(t.numel()) * t.element_size());
  write_file_atomic(path, bytes);
}

}  // namespace mmfl::engine
