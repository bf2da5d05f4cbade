// A C++ integrator's smoke test of libsencache: the ops are reached through the dispatcher by name (linking
// libsencache registers them), on a hand-made batch of 2 samples over 3 steps:
//   1. forced step        -> computed, the state takes this step's values (commit copies x into x_ref);
//   2. small drift        -> skipped (every score under eps * sqrt(n)), the state is kept, skips = 1;
//   3. larger drift       -> computed (sample 0 over the threshold), the state takes this step's values.
// All inputs and expectations are exact binary fractions, so the checks compare exactly.
// Prints "sencache smoke: OK" and returns 0, or prints what differed and returns 1.
//
// Per-op ATen headers instead of <ATen/ATen.h> keep this file quick to compile.
#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/equal.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <iostream>
#include <optional>
#include <string>
#include <vector>

namespace {

constexpr int32_t kCompute = 1;  // sencache::COMPUTE

at::Tensor f32(const std::vector<float>& values, std::vector<int64_t> shape) {
  at::Tensor t = at::empty(shape, at::kFloat);
  TORCH_CHECK(t.numel() == static_cast<int64_t>(values.size()), "smoke: bad literal");
  std::copy(values.begin(), values.end(), t.data_ptr<float>());
  return t;
}

int failures = 0;

void expect_tensor(const std::string& what, const at::Tensor& got, const at::Tensor& want) {
  if (!at::equal(got, want)) {
    std::cout << "sencache smoke: " << what << " differs\n  got:  " << got << "\n  want: " << want << "\n";
    ++failures;
  }
}

void expect_int(const std::string& what, int64_t got, int64_t want) {
  if (got != want) {
    std::cout << "sencache smoke: " << what << " = " << got << ", want " << want << "\n";
    ++failures;
  }
}

}  // namespace

int main() {
  using DeltaNormFn = at::Tensor(const at::Tensor&, const at::Tensor&);
  using DecideFn = void(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                        const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                        const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t);
  using CommitFn = void(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&, const at::Tensor&);
  auto& dispatcher = c10::Dispatcher::singleton();
  auto delta_norm = dispatcher.findSchemaOrThrow("sencache::delta_norm", "").typed<DeltaNormFn>();
  auto decide_op = dispatcher.findSchemaOrThrow("sencache::decide", "").typed<DecideFn>();
  auto commit = dispatcher.findSchemaOrThrow("sencache::commit", "").typed<CommitFn>();

  // n = 4 elements per sample, eps = 0.5 -> threshold 0.5 * sqrt(4) = 1.0; at most 2 consecutive skips.
  const int64_t max_skips = 2;
  const at::Tensor eps = f32({0.5f}, {});
  at::Tensor force = at::zeros({}, at::kBool);
  // Decision state, zero-initialised (a zero state would skip: hence the forced first step).
  at::Tensor x_ref = at::zeros({2, 4}, at::kFloat);
  at::Tensor t_ref = at::zeros({2}, at::kFloat);
  at::Tensor jx_ref = at::zeros({2}, at::kFloat);
  at::Tensor jt_ref = at::zeros({2}, at::kFloat);
  at::Tensor skips = at::zeros({}, at::kInt);
  at::Tensor flag = at::zeros({}, at::kInt);
  at::Tensor score = at::zeros({2}, at::kFloat);
  at::Tensor ticket = at::zeros({}, at::kInt);
  // One step: the decision, then the compute branch's reference update (a no-op on a skipped step).
  auto decide = [&](const at::Tensor& x, const at::Tensor& t, const at::Tensor& jx, const at::Tensor& jt) {
    decide_op.call(x, t, jx, jt, eps, force, x_ref, t_ref, jx_ref, jt_ref, skips, flag, score, ticket, max_skips);
    commit.call(flag, x, std::nullopt, x_ref);
  };

  const at::Tensor x1 = f32({1, 1, 1, 1, 2, 2, 2, 2}, {2, 4});
  const at::Tensor x2 = f32({1.5f, 1, 1, 1, 2, 2, 2.5f, 2}, {2, 4});  // d = [0.5, 0.5] from x1
  const at::Tensor x3 = f32({3, 1, 1, 1, 2, 2, 2, 2}, {2, 4});        // d = [2, 0] from x1

  try {
    // delta_norm on its own.
    expect_tensor("delta_norm(x2, x1)", delta_norm.call(x2, x1), f32({0.5f, 0.5f}, {2}));

    // Step 1: forced. score = 0 * d + 0 * |t - 0| = 0; computed.
    force.fill_(true);
    const at::Tensor t1 = f32({1, 1}, {2}), jx1 = f32({0.5f, 0.25f}, {2}), jt1 = f32({1, 1}, {2});
    decide(x1, t1, jx1, jt1);
    expect_int("step 1 flag", flag.item<int32_t>(), kCompute);
    expect_int("step 1 skips", skips.item<int32_t>(), 0);
    expect_tensor("step 1 score", score, f32({0, 0}, {2}));
    expect_tensor("step 1 x_ref", x_ref, x1);
    expect_tensor("step 1 t_ref", t_ref, t1);
    expect_tensor("step 1 jx_ref", jx_ref, jx1);
    expect_tensor("step 1 jt_ref", jt_ref, jt1);

    // Step 2: score = [0.5*0.5 + 1*0.25, 0.25*0.5 + 1*0.25] = [0.5, 0.375] <= 1; skipped, state kept.
    force.fill_(false);
    const at::Tensor t2 = f32({0.75f, 0.75f}, {2}), jx2 = f32({4, 4}, {2}), jt2 = f32({4, 4}, {2});
    decide(x2, t2, jx2, jt2);
    expect_int("step 2 flag", flag.item<int32_t>(), 0);
    expect_int("step 2 skips", skips.item<int32_t>(), 1);
    expect_tensor("step 2 score", score, f32({0.5f, 0.375f}, {2}));
    expect_tensor("step 2 x_ref", x_ref, x1);
    expect_tensor("step 2 t_ref", t_ref, t1);
    expect_tensor("step 2 jx_ref", jx_ref, jx1);
    expect_tensor("step 2 jt_ref", jt_ref, jt1);

    // Step 3: score = [0.5*2 + 1*0.5, 0.25*0 + 1*0.5] = [1.5, 0.5]; sample 0 is over 1.0, so computed.
    const at::Tensor t3 = f32({0.5f, 0.5f}, {2}), jx3 = f32({0.75f, 0.5f}, {2}), jt3 = f32({2, 2}, {2});
    decide(x3, t3, jx3, jt3);
    expect_int("step 3 flag", flag.item<int32_t>(), kCompute);
    expect_int("step 3 skips", skips.item<int32_t>(), 0);
    expect_tensor("step 3 score", score, f32({1.5f, 0.5f}, {2}));
    expect_tensor("step 3 x_ref", x_ref, x3);
    expect_tensor("step 3 t_ref", t_ref, t3);
    expect_tensor("step 3 jx_ref", jx_ref, jx3);
    expect_tensor("step 3 jt_ref", jt_ref, jt3);

    // A wrong argument is a c10::ValueError that names it.
    bool raised = false;
    try {
      decide(x3, t3.to(at::kDouble), jx3, jt3);
    } catch (const c10::ValueError& e) {
      raised = std::string(e.what_without_backtrace()).find("t must be torch.float32") != std::string::npos;
      if (!raised) {
        std::cout << "sencache smoke: unexpected message: " << e.what_without_backtrace() << "\n";
      }
    }
    if (!raised) {
      std::cout << "sencache smoke: a float64 t did not raise the expected c10::ValueError\n";
      ++failures;
    }
  } catch (const std::exception& e) {
    std::cout << "sencache smoke: unexpected exception: " << e.what() << "\n";
    return 1;
  }

  if (failures != 0) {
    std::cout << "sencache smoke: " << failures << " check(s) failed\n";
    return 1;
  }
  std::cout << "sencache smoke: OK\n";
  return 0;
}
