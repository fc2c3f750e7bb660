// Builds without CUDA: the backend's entry points say why it is unavailable.
#include "backend/cuda/cuda_backend.h"
#include "core/error.h"

namespace tq::cuda {

namespace {
const char* kWhy = "this build has no CUDA backend (nvcc was not found when it was configured; install the CUDA toolkit "
                   "and configure with -DTQ_CUDA=ON)";
}

std::string unavailable_reason() { return kWhy; }
void require_device() { fail("--device cuda: {}", kWhy); }
std::unique_ptr<Model> load_model(const std::string&) { fail("--device cuda: {}", kWhy); }
size_t device_memory_used() { return 0; }
void set_decode_int8(bool) {}
bool decode_int8() { return false; }
void set_prefill_int8(bool) {}
bool prefill_int8() { return false; }
void set_attention_tc(bool) {}
bool attention_tc() { return false; }
void set_attention_tiled(bool) {}
bool attention_tiled() { return false; }
void set_attention_int8(bool, int) {}
bool attention_int8() { return false; }
int attention_int8_min_split() { return 0; }
double attention_int8_error(int, int) { return 0; }
double copy_bandwidth_gbs(size_t) { fail("{}", kWhy); }

namespace ops {
std::vector<float> matmul(const Weight&, const std::vector<float>&, int) { fail("{}", kWhy); }
void gated_delta(const DeltaInputs&, std::vector<float>&, std::vector<float>&, bool) { fail("{}", kWhy); }
std::vector<float> delta_step(const DeltaStepIn&, std::vector<float>&) { fail("{}", kWhy); }
std::vector<float> attention(const CachePolicy&, const KVGeometry&, int, const std::vector<float>&,
                             const std::vector<float>&, size_t, size_t, const std::vector<float>&,
                             const std::vector<int32_t>&, std::string*) {
  fail("{}", kWhy);
}
SwigluInt8 swiglu_int8(const Weight&, const Weight&, const std::vector<float>&, const std::vector<float>&, float) {
  fail("{}", kWhy);
}
NormHandoff norm_handoff(const Weight&, const std::vector<float>&, const std::vector<float>&, const std::vector<float>&,
                         float, const Weight&, const Weight&) {
  fail("{}", kWhy);
}
std::vector<float> matmul_handed(const Weight&, const std::vector<float>&, const std::vector<float>&, float) {
  fail("{}", kWhy);
}
int32_t argmax(const std::vector<float>&) { fail("{}", kWhy); }
std::vector<Candidate> top_k(const std::vector<float>&, int) { fail("{}", kWhy); }
int32_t sample(const std::vector<float>&, float, double) { fail("{}", kWhy); }
}  // namespace ops

}  // namespace tq::cuda
