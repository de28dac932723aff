#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "engine/config.h"
#include "mmfl/error.h"

namespace mmfl::engine {
namespace {

std::string error_of(const std::string& yaml, const std::vector<std::string>& overrides = {}) {
  try {
    parse_config_text(yaml, overrides);
  } catch (const Error& e) {
    return e.reason();
  }
  return "";
}

TEST(Config, DefaultsResolveAndRoundTrip) {
  const auto c = parse_config_text("name: t\nrounds: 3\n");
  EXPECT_EQ(c.rounds, 3);
  EXPECT_EQ(c.population.clients, 100);
  EXPECT_EQ(c.model.image.embed_dim, c.model.embed_dim);
  // The resolved YAML parses back to itself, so resume can check config hashes.
  const auto again = parse_config_text(c.resolved_yaml);
  EXPECT_EQ(again.resolved_yaml, c.resolved_yaml);
}

TEST(Config, LoraSectionAndPretrainedPath) {
  auto c = parse_config_text("name: t\n");
  EXPECT_EQ(c.lora.rank, 8);
  EXPECT_EQ(c.lora.alpha, 16.0);
  EXPECT_EQ(c.lora.dropout, 0.0);
  EXPECT_EQ(c.lora.targets, (std::vector<std::string>{"query", "value"}));
  EXPECT_EQ(c.model.pretrained_text_path, "");
  c = parse_config_text(
      "name: t\nmodel:\n  pretrained_text_path: /opt/minilm\nlora:\n  rank: 4\n  alpha: 8\n"
      "  dropout: 0.1\n  targets: \"*.query, key ,self.value\"\n");
  EXPECT_EQ(c.model.pretrained_text_path, "/opt/minilm");
  EXPECT_EQ(c.lora.rank, 4);
  EXPECT_EQ(c.lora.targets, (std::vector<std::string>{"*.query", "key", "self.value"}));
  EXPECT_EQ(parse_config_text(c.resolved_yaml).resolved_yaml, c.resolved_yaml);
  c = parse_config_text("name: t\n", {"lora.targets=all-linear", "lora.rank=16"});
  EXPECT_EQ(c.lora.targets, (std::vector<std::string>{"all-linear"}));
  EXPECT_EQ(c.lora.rank, 16);

  auto msg = error_of("lora:\n  rank: 0\n");
  EXPECT_NE(msg.find("config key 'lora.rank' = 0 is out of range [1, 4096]"), std::string::npos)
      << msg;
  msg = error_of("lora:\n  dropout: 1\n");
  EXPECT_NE(msg.find("config key 'lora.dropout' = 1 is out of range"), std::string::npos) << msg;
  msg = error_of("lora:\n  targets: \"query,\"\n");
  EXPECT_NE(msg.find("config key 'lora.targets' has an empty entry"), std::string::npos) << msg;
  msg = error_of("lora:\n  targets: \"all-linear,query\"\n");
  EXPECT_NE(msg.find("all-linear takes every linear layer and goes alone"), std::string::npos)
      << msg;
  msg = error_of("lora:\n  targets: \"q/k\"\n");
  EXPECT_NE(msg.find("'lora.targets' entry 'q/k'"), std::string::npos) << msg;
  msg = error_of("lora:\n  rnk: 2\n");
  EXPECT_NE(msg.find("unknown config key 'lora.rnk'; allowed keys in 'lora': rank, alpha, "
                     "dropout, targets"),
            std::string::npos)
      << msg;
}

TEST(Config, UnknownKeyNamesKeyAndAllowed) {
  const auto msg = error_of("train:\n  lrr: 0.1\n");
  EXPECT_NE(msg.find("unknown config key 'train.lrr'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("allowed keys in 'train': optimizer, lr, momentum"), std::string::npos) << msg;
  const auto top = error_of("roundz: 3\n");
  EXPECT_NE(top.find("unknown config key 'roundz'"), std::string::npos) << top;
  EXPECT_NE(top.find("rounds"), std::string::npos) << top;
}

// Aliases are YAML and work; a tree that aliases expand past 100,000 values, or nested deeper than
// 64 levels, is refused before anything walks it (a walk over 10^10 values does not end).
// Sections the strategy never reads are reported (a warning at run and validate), not ignored
// silently; a section of the config's own strategy is not.
TEST(Config, SectionsTheStrategyDoesNotReadAreReported) {
  const auto fedavg = parse_config_text("name: x\nlora: {rank: 4}\nmoe: {layers: 1}\n");
  ASSERT_EQ(fedavg.unused_sections.size(), 2u);
  EXPECT_NE(fedavg.unused_sections[0].find("'lora'"), std::string::npos);
  EXPECT_NE(fedavg.unused_sections[1].find("'moe'"), std::string::npos);
  EXPECT_EQ(parse_config_text("name: x\nmodel: {server: {image_encoder: {width: 8}}}\n")
                .unused_sections.size(),
            1u);
  const auto moma = parse_config_text(
      "name: x\nstrategy: {name: moma}\nmodel: {embed_dim: 8, image_encoder: {width: 8}}\n");
  ASSERT_EQ(moma.unused_sections.size(), 1u);
  EXPECT_NE(moma.unused_sections[0].find("'model.image_encoder'"), std::string::npos);
  const auto creamfl =
      parse_config_text("name: x\nstrategy: {name: creamfl}\ncreamfl: {kd_weight: 1}\n");
  EXPECT_TRUE(creamfl.unused_sections.empty());
}

TEST(Config, AliasesWorkButTheirExpansionIsBounded) {
  const auto cfg = engine::parse_config_text("seed: &s 7\nrounds: *s\n");
  EXPECT_EQ(cfg.rounds, 7);
  std::string laughs = "a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n";
  for (int i = 1; i < 6; ++i) {
    laughs += "a" + std::to_string(i) + ": &a" + std::to_string(i) + " [";
    for (int j = 0; j < 10; ++j)
      laughs += (j ? ", *a" : "*a") + std::to_string(i - 1);
    laughs += "]\n";
  }
  auto msg = error_of(laughs);
  EXPECT_NE(msg.find("config holds more than 100000 YAML values"), std::string::npos) << msg;
  msg = error_of("name: x\n", {"train.lr=" + std::string(70, '[') + std::string(70, ']')});
  EXPECT_NE(msg.find("nests YAML collections more than 64 levels deep"), std::string::npos) << msg;
}

TEST(Config, WrongTypeNamesPathAndValue) {
  const auto msg = error_of("train:\n  batch_size: lots\n");
  EXPECT_EQ(msg, "config key 'train.batch_size': expected an integer, got 'lots'");
  const auto sec = error_of("population: 5\n");
  EXPECT_NE(sec.find("'population' must be a mapping"), std::string::npos) << sec;
  const auto list = error_of("rounds: [1, 2]\n");
  EXPECT_NE(list.find("'rounds' must be a single value"), std::string::npos) << list;
}

TEST(Config, OutOfRangeNamesPathAndValue) {
  EXPECT_EQ(error_of("train:\n  lr: -1\n"),
            "config key 'train.lr' = -1 is out of range [1e-09, 100]");
  const auto mix = error_of("population:\n  modality_mix: {image: 0.5, text: 0.5, paired: 0.5}\n");
  EXPECT_NE(mix.find("sum to 1.5"), std::string::npos) << mix;
  const auto choice = error_of("device: tpu\n");
  EXPECT_EQ(choice, "config key 'device' = 'tpu': allowed values are auto, cpu, cuda");
  const auto cohort = error_of("population: {clients: 5}\nsampling: {clients_per_round: 6}\n");
  EXPECT_NE(cohort.find("exceeds 'population.clients' = 5"), std::string::npos) << cohort;
}

TEST(Config, OverridesApplyAndAreValidated) {
  const auto c =
      parse_config_text("train: {lr: 0.1}\n", {"train.lr=0.5", "model.image_encoder.kind=mlp"});
  EXPECT_DOUBLE_EQ(c.train.lr, 0.5);
  EXPECT_EQ(c.model.image.kind, modalities::ImageEncoderKind::kMlp);
  EXPECT_NE(error_of("{}", {"train.nope=1"}).find("unknown config key 'train.nope'"),
            std::string::npos);
  EXPECT_NE(error_of("{}", {"train.lr"}).find("expected key=value"), std::string::npos);
}

TEST(Config, SyntaxErrorHasLine) {
  const auto msg = error_of("rounds: 3\ntrain: {lr: 0.1\n");
  EXPECT_NE(msg.find("YAML syntax error at line"), std::string::npos) << msg;
}

std::string load_error(const std::string& path, const std::vector<std::string>& overrides = {}) {
  try {
    load_config(path, overrides);
  } catch (const Error& e) {
    return e.reason();
  }
  return "";
}

// Issue 10 item 6: configs that are not one mapping are errors naming the file or key (they ran
// the full default experiment, kept a duplicated key's first value, ignored a second document,
// and let `--set key=` restore the default).
TEST(Config, NotOneMappingIsAnError) {
  const auto dir =
      std::filesystem::temp_directory_path() / ("mmfl_cfg_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  const std::string empty = (dir / "empty.yaml").string();
  std::ofstream(empty) << "# nothing but a comment\n";
  const auto e = load_error(empty);
  EXPECT_NE(e.find(empty + ": config is empty"), std::string::npos) << e;
  const auto d = load_error(dir.string());
  EXPECT_NE(d.find("'" + dir.string() + "' is a directory"), std::string::npos) << d;
  const auto n = load_error("/dev/null");
  EXPECT_NE(n.find("'/dev/null' is not a regular file"), std::string::npos) << n;
  std::filesystem::remove_all(dir);

  const auto dup = error_of("train:\n  lr: 0.1\n  epochs: 2\n  lr: 0.5\n");
  EXPECT_NE(dup.find("config key 'train.lr' appears twice (again at line 4)"), std::string::npos)
      << dup;
  const auto docs = error_of("rounds: 3\n---\nrounds: 5\n");
  EXPECT_NE(docs.find("holds 2 YAML documents"), std::string::npos) << docs;
  const auto set = error_of("rounds: 3\n", {"train.lr="});
  EXPECT_NE(set.find("--set 'train.lr=': empty value for 'train.lr'"), std::string::npos) << set;
  const auto null = error_of("rounds: 3\n", {"train.lr=~"});
  EXPECT_NE(null.find("the value of 'train.lr' is null"), std::string::npos) << null;
  const auto list = error_of("- 1\n- 2\n");
  EXPECT_NE(list.find("must be a YAML mapping"), std::string::npos) << list;
}

// Found by fuzz_config: a complex (non-scalar) key escaped as yaml-cpp's conversion error, which
// the CLI reports as an internal error with exit 1.
TEST(Config, ComplexKeyIsAnError) {
  const auto top = error_of("rounds: 3\n? [a, b]\n: 1\n");
  EXPECT_NE(top.find("config has a key that is not a plain name at line 2"), std::string::npos)
      << top;
  const auto sec = error_of("model:\n  ? {embed_dim: 64}\n  : 1\n");
  EXPECT_NE(sec.find("section 'model' has a key that is not a plain name at line 2"),
            std::string::npos)
      << sec;
}

// Issue 10 item 4: a config path that is a device is refused before it is read (reading
// /dev/zero used to grow memory without bound); an absurdly large file is refused by size.
TEST(Config, UnboundedInputsAreRefusedFirst) {
  const auto z = load_error("/dev/zero");
  EXPECT_NE(z.find("'/dev/zero' is not a regular file"), std::string::npos) << z;
  const auto dir =
      std::filesystem::temp_directory_path() / ("mmfl_cfgbig_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  const std::string big = (dir / "big.yaml").string();
  std::filesystem::resize_file((std::ofstream(big), big), 2u << 20);
  const auto b = load_error(big);
  EXPECT_NE(b.find("more than the 1048576-byte limit"), std::string::npos) << b;
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace mmfl::engine
