// Minimal writer of NumPy .npy files (format 1.0, little-endian, C order) for inspection dumps.
#pragma once

#include <torch/types.h>

#include <string>

namespace mmfl::engine {

// Writes a float32 or int64 tensor (any shape) to `path` atomically.
void write_npy(const std::string& path, const torch::Tensor& t);

}  // namespace mmfl::engine
