#include "engine/embed_text.h"

#include <torch/cuda.h>

#include <filesystem>
#include <vector>

#include "engine/npy.h"
#include "fusion/lora/minilm.h"
#include "mmfl/error.h"
#include "modalities/file_io.h"
#include "modalities/text/wordpiece.h"

namespace mmfl::engine {

EmbedTextSummary embed_text_file(const EmbedTextOptions& o) {
  MMFL_CHECK(!o.out.empty(), "embed-text needs --out FILE.npy");
  {
    std::error_code ec;
    MMFL_CHECK(!std::filesystem::equivalent(o.input, o.out, ec), "embed-text: --out '", o.out,
               "' is the input file '", o.input, "'; write the embeddings to another file");
  }
  // 1 GiB of text is far more than one embedding run should take in one go.
  const std::string text = modalities::read_regular_file(o.input, uint64_t(1) << 30, "text file");
  std::vector<std::string> lines;
  size_t start = 0;
  while (start < text.size()) {
    size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    std::string line = text.substr(start, end - start);
    if (!line.empty() && line.back() == '\r') line.pop_back();
    size_t bad = 0;
    MMFL_CHECK(modalities::is_valid_utf8(line, &bad), "text file '", o.input, "' line ",
               lines.size() + 1, " is not valid UTF-8 (byte offset ", start + bad, " of the file)");
    lines.push_back(std::move(line));
    start = end + 1;
  }
  torch::Device device = torch::kCPU;
  if (o.device == DeviceChoice::kCuda) {
    MMFL_CHECK(torch::cuda::is_available(), "--device cuda: no usable CUDA device");
    device = torch::kCUDA;
  } else if (o.device == DeviceChoice::kAuto && torch::cuda::is_available()) {
    device = torch::kCUDA;
  }
  fusion::TextEmbedder embedder(o.model_dir, "pass --model DIR", device);
  const auto emb = embedder.embed(lines, o.batch_size);
  write_npy(o.out, emb);
  EmbedTextSummary s;
  s.lines = emb.size(0);
  s.dim = emb.size(1);
  s.model_dir = embedder.dir();
  s.device = device.is_cuda() ? "cuda" : "cpu";
  return s;
}

}  // namespace mmfl::engine
