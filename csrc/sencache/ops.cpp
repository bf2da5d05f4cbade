// The sencache library: TORCH_LIBRARY(sencache) with the schemas of sencache_kernels/ops.def (also read by the
// Python fallback, so the two cannot drift). Each op's kernels register themselves from files of its own stem:
// csrc/sencache/<op>.cpp (CPU and Meta) and <op>.cu (CUDA); set_conditional and capture_if share the stem
// conditional. decide's CUDA kernel is the fused Triton kernel, registered from Python (sencache_kernels/decide.py).
#include <torch/library.h>

TORCH_LIBRARY(sencache, m) {
#define SENCACHE_OP(name, schema) m.def(schema);
#include "sencache_kernels/ops.def"
}
