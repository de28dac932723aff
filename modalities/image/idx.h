// Reader for the MNIST IDX format (raw or gzip), the format of MNIST and FashionMNIST.
// Every malformed input is reported with the file name and the byte offset at fault.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace mmfl::modalities {

// One IDX file of unsigned bytes: `dims` from its header, `data` row-major.
struct IdxArray {
  std::vector<int64_t> dims;
  std::vector<uint8_t> data;
  int64_t size() const;
};

// Reads `path` (gzip-compressed when it starts with the gzip magic). `expected_rank` is checked
// against the header: 3 for images [count, rows, cols], 1 for labels [count].
IdxArray read_idx(const std::string& path, int expected_rank);

// Images and labels of one MNIST-format split: images [count, rows, cols], labels [count].
struct IdxImages {
  IdxArray images;
  IdxArray labels;
  int64_t count() const { return images.dims.at(0); }
  int64_t rows() const { return images.dims.at(1); }
  int64_t cols() const { return images.dims.at(2); }
};

// Reads `<dir>/<split>-images-idx3-ubyte[.gz]` and `<dir>/<split>-labels-idx1-ubyte[.gz]`
// (split is "train" or "t10k") and checks that the counts agree and labels are < num_classes.
IdxImages read_idx_split(const std::string& dir, const std::string& split, int num_classes);

}  // namespace mmfl::modalities
