"""sencache/parallel.py without a process group: where the block hooks go, graph mode's refusal, the split state's
threshold, the split state on one rank (also on a GPU: context parallelism itself needs two; the two-rank runs are in
tests/test_parallel.py)."""

import math

import pytest
import torch
import torch.distributed as dist
from diffusers.hooks.hooks import ModelHook

from sencache import plumbing
from sencache.parallel import CP_HOOKS, Layout, ParallelState, graph_reason, register_inside
from sencache_kernels import COMPUTE, DecisionState
from tests.helpers import requires_cuda


def test_block_hooks_sit_inside_context_parallel_hooks():
    class Tag(ModelHook):
        def __init__(self, tag, seen):
            super().__init__()
            self.tag, self.seen = tag, seen

        def pre_forward(self, module, *args, **kwargs):
            self.seen.append(self.tag)
            return args, kwargs

    seen = []
    block = torch.nn.Linear(3, 3)
    registry = plumbing.registry(block)
    registry.register_hook(Tag("below", seen), "below")
    registry.register_hook(Tag("split", seen), CP_HOOKS[0] + "blocks.0")
    registry.register_hook(Tag("later", seen), "later")
    register_inside(block, Tag("ours", seen), "ours")
    assert registry._hook_order == ["below", "ours", CP_HOOKS[0] + "blocks.0", "later"]
    block(torch.randn(2, 3))
    assert seen == ["later", "split", "ours", "below"]  # outermost first


def test_graph_mode_is_unavailable_under_context_parallelism():
    x = torch.randn(2, 4, 3)
    assert "context parallelism" in graph_reason(ParallelState(x, Layout(None, False, 12)))
    assert graph_reason(DecisionState(x)) is None


def test_split_threshold_is_the_one_process_threshold_bit_for_bit():
    """The tolerance buffer of a split state times the op's sqrt(1) equals eps * sqrt(elements) as the op rounds it."""
    for eps, n in ((0.3, 1536), (0.07, 7), (1e-3, 4097)):
        state = ParallelState(torch.randn(2, 5), Layout(None, True, n))
        state.set_inputs(eps, False)
        want = torch.tensor(eps, dtype=torch.float32) * torch.tensor(float(n), dtype=torch.float32).sqrt()
        assert state.eps.item() == want.item()
        assert state.x_ref.shape == (2, 1) and state.shard_ref.shape == (2, 5)
        assert math.isclose(state.eps.item(), eps * math.sqrt(n), rel_tol=1e-6)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=requires_cuda)])
def test_parallel_state_on_one_rank_decides_as_decision_state(tmp_path, device):
    """One rank (context parallelism itself needs two devices): the split state's all-reduces (gloo on the CPU, NCCL on
    a GPU), its decide op on the drift and its compiled step (aot_eager on the CPU, inductor on a GPU) take the
    decisions of a DecisionState on the same latent."""
    dist.init_process_group("gloo" if device == "cpu" else "nccl", init_method=f"file://{tmp_path / 'init'}", rank=0,
                            world_size=1)
    try:
        gen = torch.Generator(device=device).manual_seed(0)
        x = torch.randn(2, 64, 48, device=device, generator=gen)
        layout = Layout(dist.group.WORLD, True, 64 * 48)
        one, eager, compiled = DecisionState(x), ParallelState(x, layout), ParallelState(x, layout)
        step = torch.compile(compiled.step, fullgraph=True, **({"backend": "aot_eager"} if device == "cpu" else {}))
        ones, small = torch.ones(2, device=device), torch.full((2,), 1e-3, device=device)
        flags = []
        for k in range(8):
            x = x + 0.02 * torch.randn(x.shape, device=device, generator=gen)
            t = torch.full((2,), 1000.0 - 100 * k, device=device)
            row = [one.decide(x, t, ones, small, 0.03, k == 0, 3), eager.decide(x, t, ones, small, 0.03, k == 0, 3)]
            compiled.set_inputs(0.03, k == 0)
            step(x, t, ones, small, 3)
            flags.append(row + [int(compiled.flag)])
            torch.testing.assert_close(eager.score, one.score, rtol=1e-5, atol=0)
            assert torch.equal(compiled.score, eager.score)
        assert all(a == b == c for a, b, c in flags)
        assert 0 < sum(f[0] & COMPUTE for f in flags) < len(flags)  # some steps skip
    finally:
        dist.destroy_process_group()
