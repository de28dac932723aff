#include <gtest/gtest.h>

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

TEST(Config, UnknownKeyNamesKeyAndAllowed) {
  const auto msg = error_of("train:\n  lrr: 0.1\n");
  EXPECT_NE(msg.find("unknown config key 'train.lrr'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("allowed keys in 'train': optimizer, lr, momentum"), std::string::npos) << msg;
  const auto top = error_of("roundz: 3\n");
  EXPECT_NE(top.find("unknown config key 'roundz'"), std::string::npos) << top;
  EXPECT_NE(top.find("rounds"), std::string::npos) << top;
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

}  // namespace
}  // namespace mmfl::engine
