// `mmfl embed-text FILE --out X.npy`: the pretrained text base's sentence embedding of every
// line of a text file, as float32 [lines, hidden], so a user can check that the model loaded
// right (compare with sentence-transformers on the same lines).
#pragma once

#include <cstdint>
#include <string>

#include "engine/config.h"

namespace mmfl::engine {

struct EmbedTextOptions {
  std::string input;      // UTF-8 text, one text per line ('\n' or "\r\n"; a last line without
                          // a newline counts)
  std::string out;        // .npy file written atomically
  std::string model_dir;  // empty: the installed package (fusion/lora/minilm.h)
  int64_t batch_size = 32;
  DeviceChoice device = DeviceChoice::kAuto;
};

struct EmbedTextSummary {
  int64_t lines = 0;
  int64_t dim = 0;
  std::string model_dir;
  std::string device;
};

EmbedTextSummary embed_text_file(const EmbedTextOptions& o);

}  // namespace mmfl::engine
