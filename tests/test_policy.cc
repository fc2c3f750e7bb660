#include <gtest/gtest.h>

#include "core/error.h"
#include "kv/cache_policy.h"
#include "kv/kv_slot.h"

namespace tq {
namespace {

TEST(Policy, ParsesValidForms) {
  auto p = CachePolicy::parse("fp16");
  EXPECT_TRUE(p.dense);
  EXPECT_EQ(p.dense_type, DenseType::f16);
  EXPECT_EQ(CachePolicy::parse("bf16").dense_type, DenseType::bf16);
  EXPECT_EQ(CachePolicy::parse("f32").dense_type, DenseType::f32);
  p = CachePolicy::parse("tq3");
  EXPECT_FALSE(p.dense);
  EXPECT_EQ(p.k_bits, 3);
  EXPECT_EQ(p.v_bits, 3);
  EXPECT_EQ(p.window, 128);  // the measured default (docs/QUALITY.md)
  EXPECT_EQ(CachePolicy::parse("tq3+w0").window, 0);
  EXPECT_EQ(CachePolicy::parse("tq3+w0").name(), "tq3+w0");
  p = CachePolicy::parse("k8v3");
  EXPECT_EQ(p.k_bits, 8);
  EXPECT_EQ(p.v_bits, 3);
  p = CachePolicy::parse("k16v3+w128+nc0");
  EXPECT_EQ(p.k_bits, 16);
  EXPECT_EQ(p.v_bits, 3);
  EXPECT_EQ(p.window, 128);
  EXPECT_FALSE(p.norm_correction);
  for (const char* s : {"f32", "bf16", "fp16", "tq2", "tq3", "tq4", "k8v3", "k4v3", "k16v3", "k3v4", "k2v2",
                        "k8v16", "tq3+w64", "k8v4+nc0", "tq3+w0"})
    EXPECT_EQ(CachePolicy::parse(CachePolicy::parse(s).name()).name(), CachePolicy::parse(s).name()) << s;
  EXPECT_EQ(CachePolicy::parse_list("fp16,tq3,k8v3").size(), 3u);
}

TEST(Policy, RejectsInvalidWithValidForms) {
  for (const char* s : {"", "q4_0", "tq5", "tq1", "k5v3", "k8v8", "k3v1", "kxv3", "k8v", "fp16+w4", "tq3+w", "tq3+z",
                        "tq3+w-1", "TQ3"}) {
    try {
      CachePolicy::parse(s);
      ADD_FAILURE() << "accepted '" << s << "'";
    } catch (const Error& e) {
      std::string m = e.what();
      EXPECT_NE(m.find("valid forms"), std::string::npos) << m;
      EXPECT_NE(m.find(std::string("'") + s + "'"), std::string::npos) << m;
    }
  }
  EXPECT_THROW(CachePolicy::parse_list("fp16,,tq3"), Error);
}

TEST(Policy, BadGeometryIsAClearError) {
  auto tq3 = CachePolicy::parse("tq3");
  auto expect_msg = [&](KVGeometry g, const char* field) {
    try {
      make_kv_slot(tq3, g);
      ADD_FAILURE() << "accepted geometry with bad " << field;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(field), std::string::npos) << e.what();
    }
  };
  expect_msg({16, 4, 0}, "head_dim");
  expect_msg({16, 4, -3}, "head_dim");
  expect_msg({0, 4, 128}, "n_heads");
  expect_msg({16, 0, 128}, "n_kv_heads");
  expect_msg({16, 3, 128}, "multiple");
}

}  // namespace
}  // namespace tq
