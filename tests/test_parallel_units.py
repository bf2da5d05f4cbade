"""sencache/parallel.py without a process group: where the block hooks go, graph mode's refusal, the split state's
threshold (the two-rank runs are in tests/test_parallel.py)."""

import math

import torch
from diffusers.hooks.hooks import ModelHook

from sencache import plumbing
from sencache.parallel import CP_HOOKS, Layout, ParallelState, graph_reason, register_inside
from sencache_kernels import DecisionState


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
