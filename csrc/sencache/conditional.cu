// CUDA-graph conditional execution of the block stack, from the device decision flag:
//
// - sencache::set_conditional(flag, handle): a one-thread kernel that sets a conditional handle to 1 when the flag
//   has the COMPUTE bit, else 0. Captured into a graph before an IF node, it makes the node run its body (the block
//   stack) only on computed steps, with no host involvement.
// - sencache::capture_if(flag, body_graph): called while a stream is being captured (torch.cuda.graph). It creates a
//   conditional handle on the graph being captured, captures the set_conditional kernel, adds an IF node after it
//   whose body is a child-graph copy of `body_graph` (a graph captured beforehand, e.g. with
//   torch.cuda.CUDAGraph(keep_graph=True)), and makes the rest of the capture depend on the IF node. torch 2.11 has
//   no public API for conditional nodes, hence this helper. Returns the handle.
//
// CPU and Meta kernels: conditional.cpp; argument rules: sencache_kernels/ops.def.
//
// Conditional IF nodes need CUDA 12.4 or newer, in the toolkit this was built with and in the driver; their bodies
// may hold only kernel, empty, memset, memcpy, child-graph and conditional nodes (checked before the node is added).
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_runtime.h>
#include <torch/library.h>

#include <cstdint>
#include <string>
#include <vector>

#include "sencache/checks.h"
#include "sencache/decide.h"

// CUDA 13 gave the edge-data variants of the capture and node APIs the plain names; 12.3-12.9 call them _v2/_v3.
#if CUDART_VERSION >= 13000
#define SENCACHE_GET_CAPTURE_INFO cudaStreamGetCaptureInfo
#define SENCACHE_GRAPH_ADD_NODE cudaGraphAddNode
#define SENCACHE_UPDATE_CAPTURE_DEPS cudaStreamUpdateCaptureDependencies
#elif CUDART_VERSION >= 12040
#define SENCACHE_GET_CAPTURE_INFO cudaStreamGetCaptureInfo_v3
#define SENCACHE_GRAPH_ADD_NODE cudaGraphAddNode_v2
#define SENCACHE_UPDATE_CAPTURE_DEPS cudaStreamUpdateCaptureDependencies_v2
#endif

namespace sencache {
namespace {

#if CUDART_VERSION >= 12030
__global__ void set_conditional_kernel(const int32_t* __restrict__ flag, cudaGraphConditionalHandle handle) {
  cudaGraphSetConditional(handle, (*flag & COMPUTE) != 0 ? 1u : 0u);
}
#endif

void set_conditional_cuda(const at::Tensor& flag, int64_t handle) {
  check_args("set_conditional", {flag, handle});
  TORCH_CHECK_VALUE(flag.is_cuda(), "sencache::set_conditional: flag must be a CUDA tensor, got one on ",
                    flag.device());
#if CUDART_VERSION >= 12030
  const c10::cuda::CUDAGuard guard(flag.device());
  set_conditional_kernel<<<1, 1, 0, at::cuda::getCurrentCUDAStream()>>>(
      flag.data_ptr<int32_t>(), static_cast<cudaGraphConditionalHandle>(handle));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
#else
  TORCH_CHECK(false, "sencache::set_conditional: this build used CUDA ", CUDART_VERSION / 1000, ".",
              (CUDART_VERSION % 1000) / 10, ", which has no device-side cudaGraphSetConditional (needs 12.3 or newer)");
#endif
}

std::string version_string(int v) { return std::to_string(v / 1000) + "." + std::to_string((v % 1000) / 10); }

#if CUDART_VERSION >= 12040
const char* node_type_name(cudaGraphNodeType type) {
  switch (type) {
    case cudaGraphNodeTypeHost: return "host";
    case cudaGraphNodeTypeWaitEvent: return "event wait";
    case cudaGraphNodeTypeEventRecord: return "event record";
    case cudaGraphNodeTypeExtSemaphoreSignal: return "external semaphore signal";
    case cudaGraphNodeTypeExtSemaphoreWait: return "external semaphore wait";
    case cudaGraphNodeTypeMemAlloc: return "memory allocation";
    case cudaGraphNodeTypeMemFree: return "memory free";
    default: return "unsupported";
  }
}

// Throws unless every node of `graph` (recursively through child graphs) may sit in a conditional body.
void check_body_nodes(cudaGraph_t graph, int depth = 0) {
  size_t count = 0;
  C10_CUDA_CHECK(cudaGraphGetNodes(graph, nullptr, &count));
  std::vector<cudaGraphNode_t> nodes(count);
  if (count > 0) C10_CUDA_CHECK(cudaGraphGetNodes(graph, nodes.data(), &count));
  TORCH_CHECK(depth > 0 || count > 0, "sencache::capture_if: the body graph is empty; capture the block stack into "
              "it first");
  for (cudaGraphNode_t node : nodes) {
    cudaGraphNodeType type;
    C10_CUDA_CHECK(cudaGraphNodeGetType(node, &type));
    switch (type) {
      case cudaGraphNodeTypeKernel:
      case cudaGraphNodeTypeMemcpy:
      case cudaGraphNodeTypeMemset:
      case cudaGraphNodeTypeEmpty:
      case cudaGraphNodeTypeConditional:
        break;
      case cudaGraphNodeTypeGraph: {
        cudaGraph_t child = nullptr;
        C10_CUDA_CHECK(cudaGraphChildGraphNodeGetGraph(node, &child));
        check_body_nodes(child, depth + 1);
        break;
      }
      default:
        TORCH_CHECK(false, "sencache::capture_if: the body graph holds a ", node_type_name(type),
                    " node (type ", static_cast<int>(type), "); a conditional body may hold only kernel, memcpy, "
                    "memset, empty, child-graph and conditional nodes. Capture the block stack on one stream, with "
                    "no host callbacks, cross-stream events or cudaMallocAsync allocations.");
    }
  }
}
#endif

int64_t capture_if_cuda(const at::Tensor& flag, int64_t body_graph) {
  check_args("capture_if", {flag, body_graph});
  TORCH_CHECK_VALUE(flag.is_cuda(), "sencache::capture_if: flag must be a CUDA tensor, got one on ", flag.device());
#if CUDART_VERSION >= 12040
  int driver = 0;
  C10_CUDA_CHECK(cudaDriverGetVersion(&driver));
  TORCH_CHECK(driver >= 12040, "sencache::capture_if: the CUDA driver supports CUDA ", version_string(driver),
              "; conditional graph nodes need 12.4 or newer. Update the driver, or use mode='compiled' or 'eager'.");
  const c10::cuda::CUDAGuard guard(flag.device());
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const auto body = reinterpret_cast<cudaGraph_t>(body_graph);
  check_body_nodes(body);

  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  cudaGraph_t graph = nullptr;
  C10_CUDA_CHECK(SENCACHE_GET_CAPTURE_INFO(stream, &status, nullptr, &graph, nullptr, nullptr, nullptr));
  TORCH_CHECK(status == cudaStreamCaptureStatusActive, "sencache::capture_if: the current stream is not being "
              "captured; call it inside torch.cuda.graph(...)");
  cudaGraphConditionalHandle handle = 0;
  C10_CUDA_CHECK(cudaGraphConditionalHandleCreate(&handle, graph, 0, cudaGraphCondAssignDefault));
  set_conditional_kernel<<<1, 1, 0, stream>>>(flag.data_ptr<int32_t>(), handle);
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  // The IF node depends on what the capture's next node would (the set_conditional kernel); the arrays returned
  // by the capture query belong to the stream, so they are copied before the next call.
  const cudaGraphNode_t* deps_ptr = nullptr;
  const cudaGraphEdgeData* edges_ptr = nullptr;
  size_t num_deps = 0;
  C10_CUDA_CHECK(SENCACHE_GET_CAPTURE_INFO(stream, &status, nullptr, &graph, &deps_ptr, &edges_ptr, &num_deps));
  const std::vector<cudaGraphNode_t> deps(deps_ptr, deps_ptr + num_deps);
  std::vector<cudaGraphEdgeData> edges;
  if (edges_ptr != nullptr) edges.assign(edges_ptr, edges_ptr + num_deps);

  cudaGraphNodeParams params = {};
  params.type = cudaGraphNodeTypeConditional;
  params.conditional.handle = handle;
  params.conditional.type = cudaGraphCondTypeIf;
  params.conditional.size = 1;
  cudaGraphNode_t if_node = nullptr;
  C10_CUDA_CHECK(SENCACHE_GRAPH_ADD_NODE(&if_node, graph, deps.data(), edges.empty() ? nullptr : edges.data(),
                                         deps.size(), &params));
  cudaGraphNode_t child = nullptr;  // the body is cloned into the IF node's graph
  C10_CUDA_CHECK(cudaGraphAddChildGraphNode(&child, params.conditional.phGraph_out[0], nullptr, 0, body));
  C10_CUDA_CHECK(SENCACHE_UPDATE_CAPTURE_DEPS(stream, &if_node, nullptr, 1, cudaStreamSetCaptureDependencies));
  return static_cast<int64_t>(handle);
#else
  TORCH_CHECK(false, "sencache::capture_if: this build used CUDA ", version_string(CUDART_VERSION),
              "; conditional graph nodes need 12.4 or newer. Rebuild with a newer toolkit, or use mode='compiled' "
              "or 'eager'.");
  return 0;
#endif
}

}  // namespace
}  // namespace sencache

TORCH_LIBRARY_IMPL(sencache, CUDA, m) {
  m.impl("set_conditional", &sencache::set_conditional_cuda);
  m.impl("capture_if", &sencache::capture_if_cuda);
}
