import os

import torch

# Triton kernels run natively on a GPU and, without one, on the CPU through the interpreter; this must be decided
# before any kernel module is imported.
if "TRITON_INTERPRET" not in os.environ and not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))


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
