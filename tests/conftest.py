import os

import torch

# Triton kernels run natively on a GPU and, without one, on the CPU through the interpreter; this must be decided
# before any kernel module is imported.
if "TRITON_INTERPRET" not in os.environ and not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
from torch.utils._pytree import tree_flatten  # noqa: E402

# One intra-op thread per pytest-xdist worker (`make test` runs two, one per core of the CI machine), else two.
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else min(2, os.cpu_count() or 1))


@pytest.fixture
def gen():
    """A fresh, seeded CPU generator per test (inputs are random, never zeros)."""
    return torch.Generator().manual_seed(1234)


@pytest.fixture(scope="session")
def session_pipes():
    """One tiny random-weight pipeline per architecture for the whole session (use ``pipes``, which cleans up)."""
    from sencache import offline_pipelines

    return {arch: offline_pipelines.build_pipeline(arch) for arch in offline_pipelines.ARCHITECTURES}


@pytest.fixture
def pipes(session_pipes):
    """The session's tiny pipelines; whatever cache a test applies to them is removed after it (also when the test
    fails or is interrupted)."""
    import sencache

    yield session_pipes
    for pipe in session_pipes.values():
        sencache.remove_sencache(pipe)
        if getattr(pipe.transformer, "_cache_config", None) is not None:
            pipe.transformer.disable_cache()


class _Replaying:
    """Stand-in for a captured CUDA graph on the CPU: ``replay`` runs the captured Python again and writes its
    outputs into the tensors the capture returned, as a graph writes to fixed addresses. A capture itself runs the
    Python once with ``capturing`` set: the decision and the IF node are then only recorded, not executed."""

    capturing = False

    def __init__(self, fn, out):
        self.fn, self.out = fn, out

    def replay(self):
        new = self.fn()
        for old, fresh in zip(tree_flatten(self.out)[0], tree_flatten(new)[0], strict=True):
            if old is not None:  # a stream the stack ends without
                old.copy_(fresh)


@pytest.fixture
def replaying(monkeypatch):
    """Graph mode on the CPU with :class:`_Replaying` in place of the three CUDA steps; returns the captures."""
    from sencache.modes import graph as graph_mode
    from sencache_kernels import COMPUTE, DecisionState

    captures = []

    def capture(fn, keep_graph=False):
        _Replaying.capturing = True
        try:
            out = fn()
        finally:
            _Replaying.capturing = False
        captures.append(_Replaying(fn, out))
        return captures[-1], out

    def capture_if(pred, body):
        if not _Replaying.capturing and int(pred) & COMPUTE:
            body.replay()

    real_step = DecisionState.step

    def step(self, *args, **kwargs):
        if not _Replaying.capturing:
            real_step(self, *args, **kwargs)

    monkeypatch.setattr(graph_mode, "_capture", capture)
    monkeypatch.setattr(graph_mode, "_warm_up", lambda device, fn: fn())
    monkeypatch.setattr(graph_mode, "_capture_if", capture_if)
    monkeypatch.setattr(graph_mode, "unavailable_reason", lambda x: None)
    monkeypatch.setattr(DecisionState, "step", step)
    return captures
