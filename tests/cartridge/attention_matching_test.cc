// The attention-matching fit (cartridge/attention_matching.h) against the direct PyTorch implementation of
// tests/fixtures/attention_matching_reference.py (fixture: make_attention_matching.py). The whole
// compaction on a model, and PEFT loading its result, are tests/oracle/test_cartridge_cli.py's.
#include "cartridge/attention_matching.h"

#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include "cartridge/cartridge_test_util.h"
#include "model/model_test_util.h"
#include "util/error.h"

namespace cartridge {
namespace {

using testing::get;
using testing::max_abs_diff;

struct FitFixture {
  std::map<std::string, at::Tensor> tensors =
      testing::read_tensors(testing::fixture_path("attention_matching/fit.safetensors"));
  nlohmann::json settings = testing::read_json(testing::fixture_path("attention_matching/fit.json"));
};

// softmax(q k^T scale) v over the compact rows, each KV head serving H / H_kv consecutive query heads.
at::Tensor attention_output(const at::Tensor& queries, const CompactLayer& layer, double scale) {
  const int64_t group = queries.size(0) / layer.keys.size(0);
  const at::Tensor keys = layer.keys.repeat_interleave(group, 0);
  const at::Tensor values = layer.values.repeat_interleave(group, 0);
  return at::matmul(at::softmax(at::matmul(queries, keys.transpose(1, 2)) * scale, -1), values);
}

TEST(AttentionMatchingTest, FitEqualsTheReferenceImplementation) {
  const FitFixture fixture;
  const double scale = fixture.settings["scale"].get<double>();
  for (const auto& [label, selection, exact] :
       {std::tuple{"rms", KeySelection::kAttentionRms, fixture.settings["exact"].get<int64_t>()},
        std::tuple{"max", KeySelection::kAttentionMax, fixture.settings["exact"].get<int64_t>()},
        std::tuple{"rms_all_exact", KeySelection::kAttentionRms, fixture.settings["p"].get<int64_t>()}}) {
    SCOPED_TRACE(label);
    AttentionMatchingOptions options;
    options.num_virtual_tokens = fixture.settings["p"].get<int64_t>();
    options.num_exact_rows = exact;
    options.selection = selection;
    const at::Tensor& queries = get(fixture.tensors, "queries");
    const CompactLayer layer = fit_compact_layer(get(fixture.tensors, "keys"), get(fixture.tensors, "values"),
                                                 queries, scale, options);
    const std::string prefix = std::string(label) + ".";
    EXPECT_TRUE(at::equal(layer.kept, get(fixture.tensors, prefix + "kept")))
        << layer.kept << " vs " << get(fixture.tensors, prefix + "kept");
    EXPECT_LE(max_abs_diff(layer.keys, get(fixture.tensors, prefix + "keys")), 1e-6);
    EXPECT_LE(max_abs_diff(layer.values, get(fixture.tensors, prefix + "values")), 1e-4);
    EXPECT_LE(max_abs_diff(attention_output(queries, layer, scale), get(fixture.tensors, prefix + "output")),
              1e-4);
  }
}

TEST(AttentionMatchingTest, FittedValuesReproduceTheFullAttentionBetterThanTheKeptValues) {
  const FitFixture fixture;
  const double scale = fixture.settings["scale"].get<double>();
  AttentionMatchingOptions options;
  options.num_virtual_tokens = fixture.settings["p"].get<int64_t>();
  const at::Tensor& queries = get(fixture.tensors, "queries");
  const at::Tensor& full = get(fixture.tensors, "full.output");
  const CompactLayer fitted = fit_compact_layer(get(fixture.tensors, "keys"), get(fixture.tensors, "values"),
                                                queries, scale, options);
  CompactLayer kept_only = fitted;
  kept_only.values = at::stack({get(fixture.tensors, "values")[0].index_select(0, fitted.kept[0]),
                                get(fixture.tensors, "values")[1].index_select(0, fitted.kept[1])});
  const double fitted_error = (attention_output(queries, fitted, scale) - full).norm().item<double>();
  const double kept_error = (attention_output(queries, kept_only, scale) - full).norm().item<double>();
  EXPECT_LT(fitted_error, 0.8 * kept_error) << fitted_error << " vs " << kept_error;
}

TEST(AttentionMatchingTest, RefusesSizesThatDoNotFit) {
  const at::Tensor keys = at::randn({2, 8, 4});
  const at::Tensor queries = at::randn({4, 5, 4});
  AttentionMatchingOptions options;
  options.num_virtual_tokens = 9;  // more rows than document slots
  EXPECT_THROW(fit_compact_layer(keys, keys, queries, 0.5, options), InvalidArgumentError);
  options.num_virtual_tokens = 4;
  options.num_exact_rows = 5;
  EXPECT_THROW(fit_compact_layer(keys, keys, queries, 0.5, options), InvalidArgumentError);
  options.num_exact_rows = 1;
  EXPECT_THROW(fit_compact_layer(keys, keys, at::randn({3, 5, 4}), 0.5, options), MismatchError);
  EXPECT_THROW(parse_key_selection("mean"), InvalidArgumentError);
}

}  // namespace
}  // namespace cartridge
