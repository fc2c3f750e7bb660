// Qwen3.5 (hybrid Gated DeltaNet + gated attention). Filled in by the model issue.
#include "core/error.h"
#include "model/model.h"

namespace tq {

std::unique_ptr<Model> make_qwen35(std::unique_ptr<Checkpoint> c) {
  fail("{}: model_type qwen3_5 is recognized but its forward pass is not implemented yet", c->dir());
}

}  // namespace tq
