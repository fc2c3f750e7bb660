#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "core/error.h"
#include "io/checkpoint.h"
#include "io/safetensors.h"

namespace tq {
namespace {

namespace fs = std::filesystem;

fs::path tmp(const std::string& name) {
  fs::path d = fs::temp_directory_path() / ("tq_st_" + std::to_string(::getpid()));
  fs::create_directories(d);
  return d / name;
}

void write_raw(const fs::path& p, const std::string& header, const std::string& data, int64_t len_override = -1) {
  std::ofstream f(p, std::ios::binary | std::ios::trunc);
  uint64_t n = len_override >= 0 ? static_cast<uint64_t>(len_override) : header.size();
  f.write(reinterpret_cast<const char*>(&n), 8);
  f << header << data;
}

// Each bad file gives a tq::Error whose message names the file and the problem.
void expect_error(const fs::path& p, const std::string& what) {
  try {
    SafetensorsFile f(p.string());
    ADD_FAILURE() << "accepted " << p;
  } catch (const Error& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find(p.string()), std::string::npos) << m;
    EXPECT_NE(m.find(what), std::string::npos) << m;
  }
}

TEST(Safetensors, RoundTripUnalignedAndValid) {
  const fs::path p = tmp("ok.safetensors");
  std::vector<float> a = {1, 2, 3, 4, 5, 6};
  std::vector<uint16_t> b = {7, 8, 9};
  write_safetensors(p.string(), {{"a", DType::f32, {2, 3}, a.data()}, {"b", DType::bf16, {3}, b.data()}});
  SafetensorsFile f(p.string());
  ASSERT_EQ(f.tensors().size(), 2u);
  const auto& ta = f.tensors().at("a");
  EXPECT_EQ(ta.shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(to_float(DType::f32, ta.data + 4 * 5), 6.0f);
  // MLX writes unpadded headers: tensor data at odd offsets must still load.
  write_raw(tmp("odd.safetensors"), R"({"x":{"dtype":"F32","shape":[1],"data_offsets":[1,5]}})",
            std::string("\x00\x00\x00\x80\x3f", 5));
  SafetensorsFile g(tmp("odd.safetensors").string());
  EXPECT_EQ(to_float(DType::f32, g.tensors().at("x").data), 1.0f);
}

TEST(Safetensors, BadFilesAreClearErrors) {
  const std::string ok = R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  {
    std::ofstream f(tmp("short.safetensors"), std::ios::binary);
    f << "abc";
  }
  expect_error(tmp("short.safetensors"), "too short");
  write_raw(tmp("len.safetensors"), ok, std::string(8, '\0'), 1 << 20);
  expect_error(tmp("len.safetensors"), "past the end");
  write_raw(tmp("json.safetensors"), "{\"x\": [", std::string(8, '\0'));
  expect_error(tmp("json.safetensors"), "not valid JSON");
  write_raw(tmp("range.safetensors"), R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[0,16]}})", std::string(8, '\0'));
  expect_error(tmp("range.safetensors"), "out of range");
  write_raw(tmp("overlap.safetensors"),
            R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"y":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
            std::string(12, '\0'));
  expect_error(tmp("overlap.safetensors"), "overlap");
  write_raw(tmp("dtype.safetensors"), R"({"x":{"dtype":"Q4","shape":[2],"data_offsets":[0,8]}})", std::string(8, '\0'));
  expect_error(tmp("dtype.safetensors"), "unknown dtype");
  write_raw(tmp("shape.safetensors"), R"({"x":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", std::string(8, '\0'));
  expect_error(tmp("shape.safetensors"), "needs 12 bytes");
  // A truncated copy of a valid file.
  write_raw(tmp("trunc.safetensors"), ok, std::string(3, '\0'));
  expect_error(tmp("trunc.safetensors"), "out of range");
}

fs::path make_dir(const std::string& name, const std::string& config) {
  fs::path d = tmp(name);
  fs::create_directories(d);
  if (!config.empty()) std::ofstream(d / "config.json") << config;
  return d;
}

TEST(Checkpoint, ConfigAndTensorErrors) {
  auto expect = [](const fs::path& d, const std::string& what) {
    try {
      Checkpoint c(d.string());
      c.matrix("model.layers.0.mlp.up_proj", 8, 64);
      ADD_FAILURE() << "accepted " << d;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << e.what();
    }
  };
  expect(make_dir("noconfig", ""), "config.json");
  expect(make_dir("badjson", "{oops"), "not valid JSON");
  expect(make_dir("unknown", R"({"model_type": "gpt9", "hidden_size": 8})"), "supported model types: llama");
  const std::string cfg = R"({"model_type":"llama","hidden_size":64,"num_hidden_layers":1,"num_attention_heads":2,
    "intermediate_size":8,"vocab_size":10})";
  expect(make_dir("missing_field", R"({"model_type":"llama","hidden_size":64})"), "num_hidden_layers");
  fs::path d = make_dir("notensor", cfg);
  std::vector<float> z(8 * 64);
  write_safetensors((d / "model.safetensors").string(), {{"model.norm.weight", DType::f32, {64}, z.data()}});
  expect(d, "missing tensor 'model.layers.0.mlp.up_proj.weight'");
  // Wrong quantization shapes: scales that do not divide the input width.
  fs::path q = make_dir("badquant", cfg);
  std::vector<uint32_t> w(8 * 8);
  std::vector<uint16_t> s(8 * 3);
  write_safetensors((q / "model.safetensors").string(),
                    {{"model.layers.0.mlp.up_proj.weight", DType::u32, {8, 8}, w.data()},
                     {"model.layers.0.mlp.up_proj.scales", DType::bf16, {8, 3}, s.data()},
                     {"model.layers.0.mlp.up_proj.biases", DType::bf16, {8, 3}, s.data()}});
  expect(q, "scales' must be [8, in/group]");
  // Dense tensor of the wrong shape.
  fs::path sh = make_dir("badshape", cfg);
  write_safetensors((sh / "model.safetensors").string(),
                    {{"model.layers.0.mlp.up_proj.weight", DType::f32, {64, 8}, z.data()}});
  expect(sh, "expected [8, 64]");
}

}  // namespace
}  // namespace tq
